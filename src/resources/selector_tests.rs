use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn expr(key: &str, operator: &str, values: &[&str]) -> Requirement {
    Requirement {
        key: key.into(),
        operator: operator.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

fn selector(match_labels: &[(&str, &str)], exprs: Vec<Requirement>) -> NamespaceSelector {
    NamespaceSelector {
        match_labels: labels(match_labels),
        match_expressions: exprs,
    }
}

#[test]
fn operators_match_as_in_kubernetes() {
    let team_a = labels(&[("team", "a"), ("env", "prod")]);
    let bare = labels(&[]);
    let cases: Vec<(NamespaceSelector, &BTreeMap<String, String>, bool)> = vec![
        (selector(&[], vec![]), &team_a, true),
        (selector(&[], vec![]), &bare, true),
        (selector(&[("team", "a")], vec![]), &team_a, true),
        (selector(&[("team", "b")], vec![]), &team_a, false),
        (selector(&[("team", "a"), ("env", "dev")], vec![]), &team_a, false),
        (selector(&[], vec![expr("team", "In", &["a", "b"])]), &team_a, true),
        (selector(&[], vec![expr("team", "In", &["b"])]), &team_a, false),
        (selector(&[], vec![expr("team", "In", &["a"])]), &bare, false),
        (selector(&[], vec![expr("team", "NotIn", &["b"])]), &team_a, true),
        (selector(&[], vec![expr("team", "NotIn", &["a"])]), &team_a, false),
        // NotIn matches a namespace without the label, as in Kubernetes.
        (selector(&[], vec![expr("team", "NotIn", &["a"])]), &bare, true),
        (selector(&[], vec![expr("team", "Exists", &[])]), &team_a, true),
        (selector(&[], vec![expr("team", "Exists", &[])]), &bare, false),
        (selector(&[], vec![expr("team", "DoesNotExist", &[])]), &bare, true),
        (selector(&[], vec![expr("team", "DoesNotExist", &[])]), &team_a, false),
        (
            selector(&[("env", "prod")], vec![expr("team", "In", &["a"])]),
            &team_a,
            true,
        ),
    ];
    for (i, (s, l, want)) in cases.into_iter().enumerate() {
        assert_eq!(s.matches(l), Ok(want), "case {i}: {s:?} on {l:?}");
    }
}

#[test]
fn absent_selects_none_empty_selects_all_unknown_namespace_is_refused() {
    let l = labels(&[("team", "a")]);
    assert_eq!(access(None, Some(&l)), Access::NoSelector);
    assert_eq!(access(Some(&NamespaceSelector::default()), Some(&l)), Access::Allowed);
    assert_eq!(
        access(Some(&NamespaceSelector::default()), None),
        Access::UnknownNamespace
    );
    let other = selector(&[("team", "b")], vec![]);
    assert_eq!(access(Some(&other), Some(&l)), Access::NotSelected);
    let message = access(Some(&other), Some(&l)).refusal("MetricProvider \"prom\"", "team-a");
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("MetricProvider \"prom\"") && m.contains("\"team-a\"")),
        "{message:?}"
    );
    assert_eq!(Access::Allowed.refusal("x", "y"), None);
}

#[test]
fn hostile_selectors_select_nothing() {
    let l = labels(&[("team", "a")]);
    // An operator the schema does not know (stored past it) refuses, even beside a match.
    let unknown = selector(&[("team", "a")], vec![expr("team", "Matches", &["a.*"])]);
    assert!(matches!(
        access(Some(&unknown), Some(&l)),
        Access::Malformed(SelectorError::UnknownOperator(_))
    ));
    // A mismatch first does not hide a malformed requirement after it.
    let hidden = selector(&[], vec![expr("team", "In", &["b"]), expr("x", "Like", &[])]);
    assert!(hidden.matches(&l).is_err());
    // Kubernetes' structural rules: In/NotIn need values, Exists/DoesNotExist take none.
    for r in [
        expr("team", "In", &[]),
        expr("team", "NotIn", &[]),
        expr("team", "Exists", &["a"]),
        expr("team", "DoesNotExist", &["a"]),
    ] {
        assert!(selector(&[], vec![r.clone()]).matches(&l).is_err(), "{r:?}");
    }
    // Past every bound of the schema: refused, not walked.
    let many_labels: Vec<(String, String)> = (0..=MAX_LABELS).map(|i| (format!("k{i}"), "v".into())).collect();
    let huge = NamespaceSelector {
        match_labels: many_labels.into_iter().collect(),
        match_expressions: Vec::new(),
    };
    assert_eq!(huge.matches(&l), Err(SelectorError::TooMany(MAX_LABELS, "matchLabels")));
    let many_exprs = selector(&[], vec![expr("team", "Exists", &[]); MAX_EXPRESSIONS + 1]);
    assert!(many_exprs.matches(&l).is_err());
    let values: Vec<String> = (0..=MAX_VALUES).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    assert!(selector(&[], vec![expr("team", "In", &refs)]).matches(&l).is_err());
    // At the bounds: accepted.
    let at = selector(&[], vec![expr("team", "NotIn", &refs[..MAX_VALUES]); MAX_EXPRESSIONS]);
    assert_eq!(at.matches(&l), Ok(true));
}

#[test]
fn the_annotation_is_kubectl_selector_syntax() {
    let l = labels(&[("team", "a"), ("env", "prod"), ("kubernetes.io/metadata.name", "shop")]);
    let cases = [
        ("", true),
        ("   ", true),
        ("team=a", true),
        ("team==a", true),
        ("team!=a", false),
        ("team=b", false),
        ("team", true),
        ("!team", false),
        ("!legacy", true),
        ("team=a, env in (prod, staging)", true),
        ("team=a,env notin (prod)", false),
        ("kubernetes.io/metadata.name in (shop,payments)", true),
        ("kubernetes.io/metadata.name in (payments)", false),
    ];
    for (text, want) in cases {
        let s = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(s.matches(&l), Ok(want), "{text:?} -> {s:?}");
    }
}

#[test]
fn malformed_annotations_are_refused() {
    let long = "a".repeat(MAX_ANNOTATION_LENGTH + 1);
    let many = vec!["team"; MAX_EXPRESSIONS + 1].join(",");
    let many_values = format!(
        "team in ({})",
        (0..=MAX_VALUES).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    for text in [
        "team=a,",
        ",team",
        "team in (a",
        "team in a)",
        "team in ((a))",
        "team like (a)",
        "team in ()",
        "team in (a,,b)",
        "team=",
        "=a",
        "team=a=b",
        "te am=a",
        "!",
        long.as_str(),
        many.as_str(),
        many_values.as_str(),
    ] {
        assert!(parse(text).is_err(), "{text:?} was accepted: {:?}", parse(text));
    }
}

#[test]
fn the_schema_bounds_every_list_and_string() {
    let mut generator = SchemaGenerator::default();
    let schema = serde_json::to_value(NamespaceSelector::json_schema(&mut generator)).unwrap_or_default();
    let at = |p: &str| schema.pointer(p).cloned().unwrap_or_default();
    assert_eq!(at("/properties/matchLabels/maxProperties"), MAX_LABELS);
    assert_eq!(
        at("/properties/matchLabels/additionalProperties/maxLength"),
        MAX_VALUE_LENGTH
    );
    let item = "/properties/matchExpressions/items/properties";
    assert_eq!(at("/properties/matchExpressions/maxItems"), MAX_EXPRESSIONS);
    assert_eq!(at(&format!("{item}/key/maxLength")), MAX_KEY_LENGTH);
    assert_eq!(at(&format!("{item}/values/maxItems")), MAX_VALUES);
    assert_eq!(at(&format!("{item}/values/items/maxLength")), MAX_VALUE_LENGTH);
    assert_eq!(
        at(&format!("{item}/operator/enum")),
        serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist"])
    );
}
