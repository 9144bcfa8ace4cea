//! Built-in metric templates over Istio's standard telemetry, and `{{variable}}` expansion for
//! custom PromQL.
//!
//! Built-in templates are asked once per tick per (template, window) for all rollouts, grouped by
//! workload; [`crate::analysis::judge`] computes each workload's value from the raw counts, so that
//! Prometheus load does not grow with the number of rollouts.

use std::collections::BTreeSet;
use std::time::Duration;

/// A built-in metric, computed client-side from a grouped query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Template {
    /// Percent (0–100) of responses that are not 5xx, as Flagger computes it.
    SuccessRate,
    /// Request duration quantiles, in milliseconds.
    DurationP50,
    DurationP95,
    DurationP99,
}

impl Template {
    pub const ALL: [Template; 4] = [
        Template::SuccessRate,
        Template::DurationP50,
        Template::DurationP95,
        Template::DurationP99,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Template::SuccessRate => "istio-request-success-rate",
            Template::DurationP50 => "istio-request-duration-p50",
            Template::DurationP95 => "istio-request-duration-p95",
            Template::DurationP99 => "istio-request-duration-p99",
        }
    }

    pub fn parse(name: &str) -> Option<Template> {
        Template::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The quantile of a duration template; None for the success rate.
    pub fn quantile(self) -> Option<f64> {
        match self {
            Template::SuccessRate => None,
            Template::DurationP50 => Some(0.5),
            Template::DurationP95 => Some(0.95),
            Template::DurationP99 => Some(0.99),
        }
    }

    /// Identifies the grouped query this template needs over `window`: templates with the same
    /// key share one query (the duration quantiles all read the same buckets).
    pub fn query_key(self, window: &str) -> String {
        format!("{}[{window}]", self.family())
    }

    fn family(self) -> &'static str {
        match self {
            Template::SuccessRate => "istio_requests_total",
            Template::DurationP50 | Template::DurationP95 | Template::DurationP99 => {
                "istio_request_duration_milliseconds_bucket"
            }
        }
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The workloads a grouped query asks about: those of every rollout due in the tick, so that the
/// answer grows with the rollouts in progress, not with the mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub namespaces: BTreeSet<String>,
    pub workloads: BTreeSet<String>,
}

impl Selection {
    /// Adds the stable and canary workloads of a rollout in `namespace`.
    pub fn add(&mut self, namespace: &str, workloads: &[&str]) {
        self.namespaces.insert(namespace.to_string());
        self.workloads
            .extend(workloads.iter().filter(|w| !w.is_empty()).map(|w| w.to_string()));
    }
}

/// `a|b\\.c` for a PromQL regex matcher: every name matched whole and literally. Kubernetes names
/// hold only `[a-z0-9.-]`; anything else is escaped too.
fn alternatives(names: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        for c in name.chars() {
            if !(c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                // `\\` in the PromQL string is one backslash for the regex.
                out.push_str("\\\\");
            }
            out.push(c);
        }
    }
    out
}

/// The one query, for all selected workloads at once, whose raw counts yield `t` over `window`.
///
/// `increase` rather than `rate`: the same numbers give both the value and the request count that
/// `minRequests` is compared with.
pub fn grouped_query(t: Template, window: &str, selection: &Selection) -> String {
    let by = match t {
        Template::SuccessRate => "response_code",
        Template::DurationP50 | Template::DurationP95 | Template::DurationP99 => "le",
    };
    format!(
        "sum by (destination_workload_namespace, destination_workload, {by}) \
         (increase({}{{reporter=\"destination\",destination_workload_namespace=~\"{}\",destination_workload=~\"{}\"}}[{window}]))",
        t.family(),
        alternatives(&selection.namespaces),
        alternatives(&selection.workloads),
    )
}

/// Values for one version of the service in a custom query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionVars {
    pub subset: String,
    pub deployment: String,
    pub version: String,
}

/// Values of the variables a custom query may use.
///
/// Values are inserted verbatim: they are Kubernetes names, label values and PromQL durations,
/// none of which can contain a quote or a backslash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vars {
    pub namespace: String,
    pub service: String,
    /// The query window, e.g. `1m`: `{{interval}}` or `{{window}}`.
    pub window: String,
    pub stable: VersionVars,
    pub canary: VersionVars,
}

/// Every variable name a custom query may use.
pub const VARIABLES: [&str; 10] = [
    "namespace",
    "service",
    "interval",
    "window",
    "stable.subset",
    "stable.deployment",
    "stable.version",
    "canary.subset",
    "canary.deployment",
    "canary.version",
];

impl Vars {
    fn get(&self, name: &str) -> Option<&str> {
        let value = match name {
            "namespace" => &self.namespace,
            "service" => &self.service,
            "interval" | "window" => &self.window,
            "stable.subset" => &self.stable.subset,
            "stable.deployment" => &self.stable.deployment,
            "stable.version" => &self.stable.version,
            "canary.subset" => &self.canary.subset,
            "canary.deployment" => &self.canary.deployment,
            "canary.version" => &self.canary.version,
            _ => return None,
        };
        Some(value)
    }
}

/// A custom query that cannot be expanded. Offsets are byte offsets into the query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown variable {{{{{name}}}}} at offset {at}; known variables: {}", VARIABLES.join(", "))]
    UnknownVariable { name: String, at: usize },
    #[error("unclosed {{{{ at offset {at}")]
    Unclosed { at: usize },
    #[error("empty {{{{}}}} at offset {at}")]
    Empty { at: usize },
    #[error("}}}} at offset {at} without an opening {{{{")]
    StrayClose { at: usize },
}

/// Expands every `{{ variable }}` in `query`.
pub fn render(query: &str, vars: &Vars) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    // Byte offset of `rest` in `query`, for error messages.
    let mut base = 0;
    loop {
        let open = rest.find("{{");
        // A `}}` before the next `{{` closes nothing.
        if let Some(close) = rest.find("}}")
            && open.is_none_or(|open| close < open)
        {
            return Err(TemplateError::StrayClose { at: base + close });
        }
        let Some(open) = open else {
            out.push_str(rest);
            return Ok(out);
        };
        out.push_str(&rest[..open]);
        let inner_start = open + 2;
        let after_open = &rest[inner_start..];
        let Some(close) = after_open.find("}}") else {
            return Err(TemplateError::Unclosed { at: base + open });
        };
        let inner = &after_open[..close];
        // `{{ a {{ b }}`: the first `{{` is the one left open.
        if inner.contains("{{") {
            return Err(TemplateError::Unclosed { at: base + open });
        }
        let name = inner.trim();
        if name.is_empty() {
            return Err(TemplateError::Empty { at: base + open });
        }
        let value = vars.get(name).ok_or_else(|| TemplateError::UnknownVariable {
            name: name.to_string(),
            at: base + open,
        })?;
        out.push_str(value);
        let consumed = inner_start + close + 2;
        rest = &rest[consumed..];
        base += consumed;
    }
}

/// Validates a custom query without values, so that a bad query fails when applied.
pub fn check(query: &str) -> Result<(), TemplateError> {
    render(query, &Vars::default()).map(|_| ())
}

/// A PromQL duration for `d` in whole seconds, rounded up (at least `1s`): `30s`, `1m`, `90s`, `2h`.
pub fn format_window(d: Duration) -> String {
    let secs = (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1);
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            namespace: "shop".into(),
            service: "cart".into(),
            window: "2m".into(),
            stable: VersionVars {
                subset: "v1".into(),
                deployment: "cart-v1".into(),
                version: "1.0".into(),
            },
            canary: VersionVars {
                subset: "v2".into(),
                deployment: "cart-v2".into(),
                version: "2.0".into(),
            },
        }
    }

    #[test]
    fn template_names_round_trip() {
        for t in Template::ALL {
            assert_eq!(Template::parse(t.name()), Some(t));
            assert_eq!(t.to_string(), t.name());
        }
        let cases = [
            ("istio-request-success-rate", Some(Template::SuccessRate)),
            ("istio-request-duration-p50", Some(Template::DurationP50)),
            ("istio-request-duration-p95", Some(Template::DurationP95)),
            ("istio-request-duration-p99", Some(Template::DurationP99)),
            ("istio-request-duration", None),
            ("request-success-rate", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(Template::parse(name), want, "{name}");
        }
    }

    fn selection() -> Selection {
        let mut s = Selection::default();
        s.add("shop", &["cart-v1", "cart-v2"]);
        s.add("pay", &["api.v2", ""]);
        s
    }

    #[test]
    fn grouped_queries_select_only_the_analysed_workloads() {
        let cases = [
            (
                Template::SuccessRate,
                "1m",
                r#"sum by (destination_workload_namespace, destination_workload, response_code) (increase(istio_requests_total{reporter="destination",destination_workload_namespace=~"pay|shop",destination_workload=~"api\\.v2|cart-v1|cart-v2"}[1m]))"#,
            ),
            (
                Template::DurationP99,
                "90s",
                r#"sum by (destination_workload_namespace, destination_workload, le) (increase(istio_request_duration_milliseconds_bucket{reporter="destination",destination_workload_namespace=~"pay|shop",destination_workload=~"api\\.v2|cart-v1|cart-v2"}[90s]))"#,
            ),
        ];
        for (t, window, want) in cases {
            assert_eq!(grouped_query(t, window, &selection()), want);
        }
    }

    #[test]
    fn durations_share_one_query_per_window() {
        let sel = selection();
        let durations = [Template::DurationP50, Template::DurationP95, Template::DurationP99];
        for a in durations {
            for b in durations {
                assert_eq!(a.query_key("1m"), b.query_key("1m"));
                assert_eq!(grouped_query(a, "1m", &sel), grouped_query(b, "1m", &sel));
            }
            assert_ne!(a.query_key("1m"), a.query_key("2m"));
            assert_ne!(a.query_key("1m"), Template::SuccessRate.query_key("1m"));
        }
        // Same key if and only if same query.
        for a in Template::ALL {
            for b in Template::ALL {
                for (wa, wb) in [("1m", "1m"), ("1m", "5m")] {
                    assert_eq!(
                        a.query_key(wa) == b.query_key(wb),
                        grouped_query(a, wa, &sel) == grouped_query(b, wb, &sel),
                        "{a} {wa} / {b} {wb}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantiles() {
        let cases = [
            (Template::SuccessRate, None),
            (Template::DurationP50, Some(0.5)),
            (Template::DurationP95, Some(0.95)),
            (Template::DurationP99, Some(0.99)),
        ];
        for (t, want) in cases {
            assert_eq!(t.quantile(), want, "{t}");
        }
    }

    #[test]
    fn render_expands_every_variable() {
        let cases = [
            ("", ""),
            ("up", "up"),
            ("{{namespace}}", "shop"),
            ("{{ namespace }}", "shop"),
            ("{{\tservice\n}}", "cart"),
            ("[{{interval}}]", "[2m]"),
            ("[{{ window }}]", "[2m]"),
            (
                "{{stable.subset}} {{stable.deployment}} {{stable.version}}",
                "v1 cart-v1 1.0",
            ),
            (
                "{{canary.subset}} {{canary.deployment}} {{ canary.version }}",
                "v2 cart-v2 2.0",
            ),
            (
                r#"sum(rate(x{ns="{{namespace}}",w="{{canary.deployment}}"}[{{interval}}]))"#,
                r#"sum(rate(x{ns="shop",w="cart-v2"}[2m]))"#,
            ),
            // Single braces are PromQL's own.
            (r#"x{a="b"}"#, r#"x{a="b"}"#),
            ("{{namespace}}{{service}}", "shopcart"),
            ("é{{namespace}}ü", "éshopü"),
        ];
        for (query, want) in cases {
            assert_eq!(render(query, &vars()), Ok(want.to_string()), "{query:?}");
            assert_eq!(check(query), Ok(()), "{query:?}");
        }
    }

    #[test]
    fn render_errors() {
        let unknown = |name: &str, at| TemplateError::UnknownVariable { name: name.into(), at };
        let cases = [
            ("{{target}}", unknown("target", 0)),
            ("x{{ canary.name }}", unknown("canary.name", 1)),
            ("{{Namespace}}", unknown("Namespace", 0)),
            ("{{canary version}}", unknown("canary version", 0)),
            ("{{namespace}} {{", TemplateError::Unclosed { at: 14 }),
            ("{{namespace", TemplateError::Unclosed { at: 0 }),
            ("{{ a {{ b }}", TemplateError::Unclosed { at: 0 }),
            ("{{}}", TemplateError::Empty { at: 0 }),
            ("ab{{  }}", TemplateError::Empty { at: 2 }),
            ("}}", TemplateError::StrayClose { at: 0 }),
            ("{{namespace}} }}", TemplateError::StrayClose { at: 14 }),
            ("a }} {{namespace}}", TemplateError::StrayClose { at: 2 }),
        ];
        for (query, want) in cases {
            assert_eq!(render(query, &vars()), Err(want.clone()), "{query:?}");
            assert_eq!(check(query), Err(want), "{query:?}");
        }
    }

    #[test]
    fn error_messages() {
        let cases = [
            (
                TemplateError::UnknownVariable {
                    name: "target".into(),
                    at: 3,
                },
                "unknown variable {{target}} at offset 3; known variables: namespace, service, \
                 interval, window, stable.subset, stable.deployment, stable.version, \
                 canary.subset, canary.deployment, canary.version",
            ),
            (TemplateError::Unclosed { at: 1 }, "unclosed {{ at offset 1"),
            (TemplateError::Empty { at: 2 }, "empty {{}} at offset 2"),
            (
                TemplateError::StrayClose { at: 4 },
                "}} at offset 4 without an opening {{",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn windows() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let cases = [
            (Duration::ZERO, "1s"),
            (ms(1), "1s"),
            (ms(999), "1s"),
            (s(1), "1s"),
            (ms(1001), "2s"),
            (s(30), "30s"),
            (s(59), "59s"),
            (s(60), "1m"),
            (s(90), "90s"),
            (s(120), "2m"),
            (s(3600), "1h"),
            (s(5400), "90m"),
            (s(7200), "2h"),
            (s(86400), "24h"),
        ];
        for (d, want) in cases {
            assert_eq!(format_window(d), want, "{d:?}");
        }
    }
}
