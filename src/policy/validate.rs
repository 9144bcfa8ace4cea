//! Checks the schema cannot express. Pure: the same rules serve the daemon (phase `Invalid`) and
//! `canaryd validate` in GitOps CI.

use std::collections::HashSet;

use std::time::Duration;

use crate::analysis::templates::{Template, check};
pub use crate::resources::FieldError;
use crate::resources::policy::{Analysis, RolloutPolicySpec};

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// RFC 1123 label: what Kubernetes accepts as a Service or Deployment name.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub fn validate_spec(spec: &RolloutPolicySpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !is_dns_label(&spec.service) {
        errors.push(err(
            "spec.service",
            format!("{:?} is not a valid Service name", spec.service),
        ));
    }
    if !is_dns_subdomain(&spec.destination_rule) {
        errors.push(err(
            "spec.destinationRule",
            format!("{:?} is not a valid object name", spec.destination_rule),
        ));
    }
    if spec.virtual_services.is_empty() {
        errors.push(err("spec.virtualServices", "at least one VirtualService is required"));
    }
    errors.extend(validate_virtual_services(spec));
    errors.extend(validate_versions(spec));
    errors.extend(validate_steps(spec));
    if let Some(analysis) = &spec.analysis {
        errors.extend(validate_analysis(analysis));
    }
    if spec.progress_deadline.is_zero() {
        errors.push(err("spec.progressDeadline", "must be greater than zero"));
    }
    errors.extend(validate_bounds(spec));
    if let Some(schedule) = &spec.schedule {
        errors.extend(crate::cron::validate(schedule));
    }
    errors.extend(crate::policy::webhooks::validate(&spec.webhooks));
    errors
}

/// `spec.virtualServices`: names, namespaces, no duplicates, no empty route lists.
fn validate_virtual_services(spec: &RolloutPolicySpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (i, vs) in spec.virtual_services.iter().enumerate() {
        let field = format!("spec.virtualServices[{i}]");
        if !is_dns_subdomain(&vs.name) {
            errors.push(err(
                format!("{field}.name"),
                format!("{:?} is not a valid object name", vs.name),
            ));
        }
        if let Some(ns) = &vs.namespace
            && !is_dns_label(ns)
        {
            errors.push(err(
                format!("{field}.namespace"),
                format!("{ns:?} is not a valid namespace"),
            ));
        }
        if !seen.insert((vs.namespace.clone(), vs.name.clone())) {
            errors.push(err(
                field.clone(),
                format!("VirtualService {:?} is listed twice", vs.name),
            ));
        }
        if let Some(routes) = &vs.routes {
            if routes.is_empty() {
                errors.push(err(
                    format!("{field}.routes"),
                    "an empty list manages no route; omit it to manage every unmatched route",
                ));
            }
            if routes.iter().any(|r| r.is_empty()) {
                errors.push(err(format!("{field}.routes"), "route names must not be empty"));
            }
        }
    }
    errors
}

/// `spec.stable` and `spec.canary`: subsets and Deployments, and no subset shared by two Deployments.
fn validate_versions(spec: &RolloutPolicySpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (name, v) in [("stable", Some(&spec.stable)), ("canary", spec.canary.as_ref())] {
        let Some(v) = v else { continue };
        if v.subset.is_empty() {
            errors.push(err(format!("spec.{name}.subset"), "must not be empty"));
        }
        if !is_dns_subdomain(&v.deployment) {
            errors.push(err(
                format!("spec.{name}.deployment"),
                format!("{:?} is not a valid Deployment name", v.deployment),
            ));
        }
    }
    if let Some(canary) = &spec.canary
        && canary.subset == spec.stable.subset
        && canary.deployment != spec.stable.deployment
    {
        errors.push(err(
            "spec.canary.subset",
            format!(
                "canary and stable both use subset {:?} but name different Deployments",
                canary.subset
            ),
        ));
    }
    errors
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Longest values that still make sense. Beyond them a value is refused, never clamped: a delay of
/// 1000000w overflows a timestamp and would act at once.
pub const MAX_PROGRESS_DEADLINE: Duration = Duration::from_secs(7 * 86_400);
pub const MAX_PAUSE: Duration = Duration::from_secs(30 * 86_400);
pub const MAX_SCALE_DOWN_DELAY: Duration = Duration::from_secs(30 * 86_400);
pub const MAX_INTERVAL: Duration = HOUR;
pub const MAX_START_AFTER: Duration = Duration::from_secs(7 * 86_400);
pub const MAX_WINDOW: Duration = DAY;
pub const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(5 * 60);
pub const MAX_HEADROOM: f64 = 10.0;
pub const MAX_LIMIT: u32 = 1000;
pub const MAX_MIN_REQUESTS: u64 = 1_000_000_000;

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn at_most(errors: &mut Vec<FieldError>, field: impl Into<String>, value: Duration, max: Duration) {
    if value > max {
        errors.push(err(
            field,
            format!("{} is longer than the maximum of {}", human(value), human(max)),
        ));
    }
}

fn limit(errors: &mut Vec<FieldError>, field: &str, value: u32) {
    if value == 0 || value > MAX_LIMIT {
        errors.push(err(field, format!("{value} is not within 1-{MAX_LIMIT}")));
    }
}

/// Maxima for durations, counters and factors.
fn validate_bounds(spec: &RolloutPolicySpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let e = &mut errors;
    at_most(
        e,
        "spec.progressDeadline",
        spec.progress_deadline,
        MAX_PROGRESS_DEADLINE,
    );
    for (i, step) in spec.steps.iter().enumerate() {
        if let Some(d) = step.pause.as_ref().and_then(|p| p.duration) {
            at_most(e, format!("spec.steps[{i}].pause.duration"), d, MAX_PAUSE);
        }
    }
    let scaling = &spec.scaling;
    at_most(
        e,
        "spec.scaling.scaleDownDelay",
        scaling.scale_down_delay,
        MAX_SCALE_DOWN_DELAY,
    );
    if !(1.0..=MAX_HEADROOM).contains(&scaling.headroom) {
        e.push(err(
            "spec.scaling.headroom",
            format!("{} is not within 1-{MAX_HEADROOM}", scaling.headroom),
        ));
    }
    if let Some(a) = &spec.analysis {
        at_most(e, "spec.analysis.interval", a.interval, MAX_INTERVAL);
        at_most(e, "spec.analysis.startAfter", a.start_after, MAX_START_AFTER);
        limit(e, "spec.analysis.failureLimit", a.failure_limit);
        limit(e, "spec.analysis.inconclusiveLimit", a.inconclusive_limit);
        limit(e, "spec.analysis.onProviderError.after", a.on_provider_error.after);
        if a.min_requests > MAX_MIN_REQUESTS {
            e.push(err(
                "spec.analysis.minRequests",
                format!("{} is more than the maximum of {MAX_MIN_REQUESTS}", a.min_requests),
            ));
        }
        if let Some(p) = &a.prometheus {
            if p.timeout.is_zero() {
                e.push(err("spec.analysis.prometheus.timeout", "must be greater than zero"));
            }
            at_most(e, "spec.analysis.prometheus.timeout", p.timeout, MAX_QUERY_TIMEOUT);
        }
        for (i, m) in a.metrics.iter().enumerate() {
            if let Some(w) = m.window {
                at_most(e, format!("spec.analysis.metrics[{i}].window"), w, MAX_WINDOW);
            }
            let numbers = [
                ("min", m.min),
                ("max", m.max),
                (
                    "relative.maxDropFromStable",
                    m.relative.as_ref().and_then(|r| r.max_drop_from_stable),
                ),
                (
                    "relative.maxIncreaseOverStable",
                    m.relative.as_ref().and_then(|r| r.max_increase_over_stable),
                ),
            ];
            for (name, v) in numbers {
                if v.is_some_and(|v| !v.is_finite()) {
                    e.push(err(
                        format!("spec.analysis.metrics[{i}].{name}"),
                        "must be a finite number",
                    ));
                }
            }
        }
    }
    errors
}

fn validate_analysis(a: &Analysis) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if a.interval < Duration::from_secs(1) {
        errors.push(err("spec.analysis.interval", "must be at least 1s"));
    }
    match (&a.provider, &a.prometheus) {
        (Some(_), None) => {}
        (None, Some(p)) if p.address.starts_with("http://") || p.address.starts_with("https://") => {}
        (None, Some(p)) => errors.push(err(
            "spec.analysis.prometheus.address",
            format!("{:?} is not an http:// or https:// URL", p.address),
        )),
        _ => errors.push(err("spec.analysis", "exactly one of provider or prometheus")),
    }
    if a.metrics.is_empty() {
        errors.push(err("spec.analysis.metrics", "at least one metric is required"));
    }
    let mut names = HashSet::new();
    for (i, m) in a.metrics.iter().enumerate() {
        let field = format!("spec.analysis.metrics[{i}]");
        if !names.insert(m.name.as_str()) {
            errors.push(err(format!("{field}.name"), format!("{:?} is used twice", m.name)));
        }
        match (&m.template, &m.query) {
            (Some(t), None) => {
                if Template::parse(t).is_none() {
                    let known: Vec<&str> = Template::ALL.iter().map(|t| t.name()).collect();
                    errors.push(err(
                        format!("{field}.template"),
                        format!("unknown template {t:?} (known: {})", known.join(", ")),
                    ));
                }
            }
            (None, Some(q)) => {
                if let Err(e) = check(q) {
                    errors.push(err(format!("{field}.query"), e.to_string()));
                }
                if m.relative.is_some() {
                    errors.push(err(
                        format!("{field}.relative"),
                        "relative checks compare a built-in template for canary and stable; use a template",
                    ));
                }
            }
            _ => errors.push(err(field.clone(), "a metric has exactly one of template or query")),
        }
        if m.min.is_none() && m.max.is_none() && m.relative.is_none() {
            errors.push(err(field.clone(), "a metric needs min, max or relative"));
        }
        if let Some(r) = &m.relative
            && r.max_drop_from_stable.is_none()
            && r.max_increase_over_stable.is_none()
        {
            errors.push(err(
                format!("{field}.relative"),
                "needs maxDropFromStable or maxIncreaseOverStable",
            ));
        }
        if m.window.is_some_and(|w| w < Duration::from_secs(1)) {
            errors.push(err(format!("{field}.window"), "must be at least 1s"));
        }
    }
    errors
}

fn validate_steps(spec: &RolloutPolicySpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if spec.steps.is_empty() {
        errors.push(err("spec.steps", "at least one step is required"));
        return errors;
    }
    let mut last_weight: Option<(usize, u8)> = None;
    for (i, step) in spec.steps.iter().enumerate() {
        let field = format!("spec.steps[{i}]");
        match (step.weight, &step.pause) {
            (Some(_), Some(_)) | (None, None) => {
                errors.push(err(field, "a step has exactly one of weight or pause"));
            }
            (Some(w), None) => {
                if w > 100 {
                    errors.push(err(format!("{field}.weight"), format!("{w} is not within 0-100")));
                }
                if let Some((j, prev)) = last_weight
                    && w < prev
                {
                    errors.push(err(
                        format!("{field}.weight"),
                        format!("weights must not decrease: {w} comes after {prev} (spec.steps[{j}])"),
                    ));
                }
                last_weight = Some((i, w));
            }
            (None, Some(pause)) => {
                if pause.duration.is_some_and(|d| d.is_zero()) {
                    errors.push(err(format!("{field}.pause.duration"), "must be greater than zero"));
                }
            }
        }
    }
    match last_weight {
        None => errors.push(err(
            "spec.steps",
            "no step sets a weight; the last weight step must be 100",
        )),
        Some((i, w)) if w != 100 => errors.push(err(
            format!("spec.steps[{i}].weight"),
            format!("the last weight step must be 100 (full promotion), found {w}"),
        )),
        _ => {}
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::policy::{Pause, Step, VersionRef, VirtualServiceRef};
    use std::time::Duration;

    fn w(weight: u8) -> Step {
        Step {
            weight: Some(weight),
            pause: None,
        }
    }
    fn p(secs: Option<u64>) -> Step {
        Step {
            weight: None,
            pause: Some(Pause {
                duration: secs.map(Duration::from_secs),
            }),
        }
    }
    fn spec(steps: Vec<Step>) -> RolloutPolicySpec {
        RolloutPolicySpec {
            service: "app".into(),
            virtual_services: vec![VirtualServiceRef {
                name: "app".into(),
                namespace: None,
                routes: None,
            }],
            destination_rule: "app".into(),
            stable: VersionRef {
                subset: "v1".into(),
                deployment: "app-v1".into(),
            },
            canary: Some(VersionRef {
                subset: "v2".into(),
                deployment: "app-v2".into(),
            }),
            steps,
            schedule: None,
            progress_deadline: Duration::from_secs(60),
            analysis: None,
            webhooks: Vec::new(),
            scaling: Default::default(),
            notifications: Vec::new(),
        }
    }

    #[test]
    fn steps_table() {
        let cases: Vec<(Vec<Step>, Option<&str>)> = vec![
            (vec![w(10), p(Some(5)), w(50), p(None), w(100)], None),
            (vec![w(100)], None),
            (vec![w(50), w(10), w(100)], Some("spec.steps[1].weight")),
            (vec![w(10), w(50)], Some("spec.steps[1].weight")),
            (vec![w(10), w(101)], Some("spec.steps[1].weight")),
            (vec![p(None)], Some("spec.steps")),
            (vec![], Some("spec.steps")),
            (
                vec![
                    Step {
                        weight: Some(10),
                        pause: Some(Pause::default()),
                    },
                    w(100),
                ],
                Some("spec.steps[0]"),
            ),
            (
                vec![
                    Step {
                        weight: None,
                        pause: None,
                    },
                    w(100),
                ],
                Some("spec.steps[0]"),
            ),
            (vec![p(Some(0)), w(100)], Some("spec.steps[0].pause.duration")),
        ];
        for (steps, want) in cases {
            let errors = validate_spec(&spec(steps.clone()));
            match want {
                None => assert!(errors.is_empty(), "{steps:?}: {errors:?}"),
                Some(field) => assert!(
                    errors.iter().any(|e| e.field == field),
                    "{steps:?}: want error on {field}, got {errors:?}"
                ),
            }
        }
    }

    #[test]
    fn names_and_versions() {
        let mut s = spec(vec![w(100)]);
        s.service = "Bad_Name".into();
        s.canary = Some(VersionRef {
            subset: "v1".into(),
            deployment: "other".into(),
        });
        let fields: Vec<_> = validate_spec(&s).into_iter().map(|e| e.field).collect();
        assert!(fields.contains(&"spec.service".to_string()), "{fields:?}");
        assert!(fields.contains(&"spec.canary.subset".to_string()), "{fields:?}");
    }

    #[test]
    fn absurd_values_are_refused_naming_the_field() {
        use crate::resources::policy::{Analysis, MetricCheck, OnProviderError, PrometheusAddress};
        let analysis = || Analysis {
            interval: Duration::from_secs(30),
            start_after: Duration::ZERO,
            failure_limit: 1,
            min_requests: 0,
            inconclusive_limit: 10,
            on_provider_error: OnProviderError::default(),
            provider: None,
            prometheus: Some(PrometheusAddress {
                address: "http://prometheus:9090".into(),
                timeout: Duration::from_secs(5),
            }),
            metrics: vec![MetricCheck {
                name: "success".into(),
                template: Some("istio-request-success-rate".into()),
                query: None,
                min: Some(99.0),
                max: None,
                relative: None,
                window: None,
            }],
        };
        let week = 7 * 86_400;
        type Edit = Box<dyn Fn(&mut RolloutPolicySpec)>;
        let cases: Vec<(Edit, Option<&str>)> = vec![
            (Box::new(|_| {}), None),
            (Box::new(move |s| s.analysis = Some(analysis())), None),
            (
                Box::new(|s| s.scaling.scale_down_delay = Duration::from_secs(1_000_000 * 7 * 86_400)),
                Some("spec.scaling.scaleDownDelay"),
            ),
            (Box::new(|s| s.scaling.scale_down_delay = MAX_SCALE_DOWN_DELAY), None),
            (
                Box::new(move |s| s.progress_deadline = Duration::from_secs(week + 1)),
                Some("spec.progressDeadline"),
            ),
            (Box::new(|s| s.scaling.headroom = 1e300), Some("spec.scaling.headroom")),
            (
                Box::new(|s| s.scaling.headroom = f64::NAN),
                Some("spec.scaling.headroom"),
            ),
            (
                Box::new(|s| s.steps = vec![p(Some(31 * 86_400)), w(100)]),
                Some("spec.steps[0].pause.duration"),
            ),
            (
                Box::new(move |s| {
                    let mut a = analysis();
                    a.interval = Duration::from_secs(999_999_999);
                    s.analysis = Some(a);
                }),
                Some("spec.analysis.interval"),
            ),
            (
                Box::new(move |s| {
                    let mut a = analysis();
                    a.failure_limit = u32::MAX;
                    s.analysis = Some(a);
                }),
                Some("spec.analysis.failureLimit"),
            ),
            (
                Box::new(move |s| {
                    let mut a = analysis();
                    if let Some(p) = a.prometheus.as_mut() {
                        p.timeout = Duration::from_secs(3600);
                    }
                    s.analysis = Some(a);
                }),
                Some("spec.analysis.prometheus.timeout"),
            ),
            (
                Box::new(move |s| {
                    let mut a = analysis();
                    a.metrics[0].window = Some(Duration::from_secs(2 * 86_400));
                    a.metrics[0].min = Some(f64::NAN);
                    s.analysis = Some(a);
                }),
                Some("spec.analysis.metrics[0].min"),
            ),
        ];
        for (i, (edit, want)) in cases.into_iter().enumerate() {
            let mut s = spec(vec![w(10), w(100)]);
            edit(&mut s);
            let errors = validate_spec(&s);
            match want {
                None => assert!(errors.is_empty(), "case {i}: {errors:?}"),
                Some(field) => assert!(
                    errors.iter().any(|e| e.field == field),
                    "case {i}: want an error on {field}, got {errors:?}"
                ),
            }
        }
    }
}
