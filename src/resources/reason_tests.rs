use super::*;

#[test]
fn every_reason_keeps_its_name_on_the_wire() {
    for r in Reason::ALL {
        let json = serde_json::to_string(r).unwrap_or_default();
        assert_eq!(json, format!("\"{}\"", r.as_str()));
        assert_eq!(serde_json::from_str::<Reason>(&json).ok(), Some(*r));
        assert_eq!(Reason::from_name(r.as_str()), Some(*r));
    }
    assert_eq!(Reason::from_name("frozen"), None, "names are exact");
}

/// The reasons table of docs/policy.md (its first column) lists exactly the enum.
#[test]
fn the_docs_reasons_table_is_the_enum() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/policy.md");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let section = text
        .split("\n### Reasons\n")
        .nth(1)
        .unwrap_or_default()
        .split("\n#")
        .next()
        .unwrap_or_default();
    let mut documented: Vec<String> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(String::from).collect::<Vec<_>>())
        .collect();
    documented.sort();
    let mut names: Vec<String> = Reason::ALL.iter().map(|r| r.as_str().to_string()).collect();
    names.sort();
    assert_eq!(
        documented, names,
        "docs/policy.md `### Reasons` differs from resources::reason::Reason"
    );
}
