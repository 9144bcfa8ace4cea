//! Per-workload values from the grouped built-in queries, and the verdict of one metric check.
//!
//! Observations carry the request count of the window when it is known (built-in templates), so
//! that too little traffic is told apart from a bad canary.

use crate::analysis::templates::Template;
use crate::resources::policy::{MetricCheck, Verdict};

/// One element of an instant vector.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

/// A sample's labels: the few the judge reads, sorted by name. A short list, not a map: a map's
/// node costs more than the handful of labels a sample keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub fn get(&self, name: &str) -> Option<&String> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn insert(&mut self, name: String, value: String) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&name)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (name, value)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut labels = Labels::default();
        for (k, v) in iter {
            labels.insert(k, v);
        }
        labels
    }
}

/// A metric's value for one workload over the window.
///
/// A workload with series but no request in the window has `value: NaN, requests: Some(0.0)`;
/// [`judge`] makes that Inconclusive, never Error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    pub value: f64,
    /// Requests in the window; None when unknown (custom queries).
    pub requests: Option<f64>,
}

impl Observation {
    pub fn counted(value: f64, requests: f64) -> Self {
        Self {
            value,
            requests: Some(requests),
        }
    }

    pub fn uncounted(value: f64) -> Self {
        Self { value, requests: None }
    }
}

pub(crate) const NAMESPACE: &str = "destination_workload_namespace";
pub(crate) const WORKLOAD: &str = "destination_workload";

fn of_workload<'a>(samples: &'a [Sample], namespace: &'a str, workload: &'a str) -> impl Iterator<Item = &'a Sample> {
    samples.iter().filter(move |s| {
        s.labels.get(NAMESPACE).map(String::as_str) == Some(namespace)
            && s.labels.get(WORKLOAD).map(String::as_str) == Some(workload)
    })
}

/// The value of a built-in template for one workload, from the samples of its grouped query.
pub fn observe(t: Template, samples: &[Sample], namespace: &str, workload: &str) -> Option<Observation> {
    match t.quantile() {
        None => success_rate(samples, namespace, workload),
        Some(q) => duration_quantile(q, samples, namespace, workload),
    }
}

/// Percent of the workload's requests that did not answer 5xx (Flagger's
/// `response_code!~"5.*"`: a missing code or `0` counts as success).
///
/// None without any sample of the workload; NaN with zero requests.
pub fn success_rate(samples: &[Sample], namespace: &str, workload: &str) -> Option<Observation> {
    let mut seen = false;
    let (mut total, mut errors) = (0.0, 0.0);
    for s in of_workload(samples, namespace, workload) {
        seen = true;
        total += s.value;
        let code = s.labels.get("response_code").map_or("", String::as_str);
        if code.starts_with('5') {
            errors += s.value;
        }
    }
    if !seen {
        return None;
    }
    let value = if total > 0.0 {
        (total - errors) / total * 100.0
    } else {
        f64::NAN
    };
    Some(Observation::counted(value, total))
}

/// The `q` quantile of the workload's `le` buckets, with the semantics of Prometheus'
/// `histogram_quantile` on classic buckets; `requests` is the `+Inf` bucket's count.
///
/// None without any bucket of the workload; NaN with zero requests or no `+Inf` bucket (then
/// `requests` is None too).
pub fn duration_quantile(q: f64, samples: &[Sample], namespace: &str, workload: &str) -> Option<Observation> {
    let mut seen = false;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for s in of_workload(samples, namespace, workload) {
        seen = true;
        // Like Prometheus: a series without a parseable `le` is skipped.
        if let Some(le) = s.labels.get("le").and_then(|le| parse_le(le)) {
            buckets.push((le, s.value));
        }
    }
    if !seen {
        return None;
    }
    Some(bucket_quantile(q, buckets))
}

/// Go's ParseFloat spellings as Prometheus writes them (`+Inf`, `0.005`).
fn parse_le(le: &str) -> Option<f64> {
    le.trim().parse::<f64>().ok().filter(|v| !v.is_nan())
}

/// Port of Prometheus' `BucketQuantile` (promql/quantile.go) on (upper bound, cumulative count).
fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> Observation {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return Observation::uncounted(out_of_range(q).unwrap_or(f64::NAN));
    }
    // Series with the same bound are one bucket.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (le, count) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += count,
            _ => merged.push((le, count)),
        }
    }
    let mut buckets = merged;
    ensure_monotonic(&mut buckets);
    let observations = buckets[buckets.len() - 1].1;
    let value = quantile_of(q, &buckets, observations);
    Observation::counted(value, observations)
}

/// Prometheus' answer for a quantile outside [0, 1], checked before anything else.
fn out_of_range(q: f64) -> Option<f64> {
    if q.is_nan() {
        Some(f64::NAN)
    } else if q < 0.0 {
        Some(f64::NEG_INFINITY)
    } else if q > 1.0 {
        Some(f64::INFINITY)
    } else {
        None
    }
}

fn quantile_of(q: f64, buckets: &[(f64, f64)], observations: f64) -> f64 {
    if let Some(v) = out_of_range(q) {
        return v;
    }
    if buckets.len() < 2 || observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    // First bucket holding the rank, among all but +Inf (Go's sort.Search over len-1).
    let b = buckets[..buckets.len() - 1]
        .iter()
        .position(|&(_, count)| count >= rank)
        .unwrap_or(buckets.len() - 1);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let bucket_end = buckets[b].0;
    let mut bucket_start = 0.0;
    let mut count = buckets[b].1;
    if b > 0 {
        bucket_start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

/// Prometheus' `ensureMonotonicAndIgnoreSmallDeltas`: `increase` over buckets scraped at slightly
/// different times can make a cumulative count dip; such counts are raised to the previous one.
fn ensure_monotonic(buckets: &mut [(f64, f64)]) {
    const TOLERANCE: f64 = 1e-12;
    let Some(&(_, mut prev)) = buckets.first() else {
        return;
    };
    for bucket in buckets.iter_mut().skip(1) {
        let curr = bucket.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, TOLERANCE) || curr < prev {
            bucket.1 = prev;
            continue;
        }
        prev = curr;
    }
}

/// Prometheus' `almost.Equal`.
fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < epsilon * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

/// A custom query aggregated to several series: which one to judge is ambiguous.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the query returned {0} or more series; aggregate it to one, e.g. with sum()")]
pub struct TooManySeries(pub usize);

/// The observation of a custom query: None when it returned nothing. Its request count is unknown.
pub fn custom_observation(samples: &[Sample]) -> Result<Option<Observation>, TooManySeries> {
    match samples {
        [] => Ok(None),
        [s] => Ok(Some(Observation::uncounted(s.value))),
        _ => Err(TooManySeries(samples.len())),
    }
}

/// The verdict of one check, with what it was judged against and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    /// The canary's value, when finite.
    pub value: Option<f64>,
    /// Stable's value, when finite and a relative bound needed it.
    pub stable_value: Option<f64>,
    /// The bounds, e.g. `>= 99, >= stable - 0.5`.
    pub threshold: String,
    pub message: String,
}

/// Judges the canary's observation against the check's bounds.
///
/// Inconclusive: no canary data, no request, fewer requests than `min_requests` (when counted), or
/// a relative bound without a stable value. Error: a NaN or infinite canary value. Fail: any bound
/// broken (even when another bound is inconclusive). `min_requests` applies to the canary only.
pub fn judge(
    check: &MetricCheck,
    canary: Option<Observation>,
    stable: Option<Observation>,
    min_requests: u64,
) -> Judgement {
    let name = &check.name;
    let bounds = Bounds::of(check);
    let threshold = bounds.threshold();
    let stable_value = if bounds.relative() {
        stable.map(|s| s.value).filter(|v| v.is_finite())
    } else {
        None
    };
    let judgement = |verdict, value, message| Judgement {
        verdict,
        value,
        stable_value,
        threshold: threshold.clone(),
        message,
    };

    if bounds.is_empty() {
        return judgement(
            Verdict::Error,
            None,
            format!("{name} has no min, max or relative bound"),
        );
    }
    let Some(canary) = canary else {
        return judgement(
            Verdict::Inconclusive,
            None,
            format!("{name}: no data for the canary in the window"),
        );
    };
    if let Some(requests) = canary.requests {
        if requests <= 0.0 {
            return judgement(
                Verdict::Inconclusive,
                None,
                format!("{name}: no requests to the canary in the window"),
            );
        }
        if requests < min_requests as f64 {
            return judgement(
                Verdict::Inconclusive,
                None,
                format!(
                    "{name}: {} requests in the window, fewer than minRequests {min_requests}",
                    format_count(requests)
                ),
            );
        }
    }
    let value = canary.value;
    if !value.is_finite() {
        return judgement(
            Verdict::Error,
            None,
            format!("{name}: the canary's value is {}", format_special(value)),
        );
    }

    let mut failures = Vec::new();
    if let Some(min) = bounds.min
        && value < min
    {
        failures.push(format!("{name} {value:.2} < min {min}"));
    }
    if let Some(max) = bounds.max
        && value > max
    {
        failures.push(format!("{name} {value:.2} > max {max}"));
    }
    let mut stable_missing = false;
    if bounds.relative() {
        match stable_value {
            None => stable_missing = true,
            Some(stable) => {
                if let Some(d) = bounds.max_drop
                    && value < stable - d
                {
                    failures.push(format!(
                        "{name} {value:.2} < stable {stable:.2} - {d} (max drop from stable)"
                    ));
                }
                if let Some(d) = bounds.max_increase
                    && value > stable + d
                {
                    failures.push(format!(
                        "{name} {value:.2} > stable {stable:.2} + {d} (max increase over stable)"
                    ));
                }
            }
        }
    }

    if !failures.is_empty() {
        return judgement(Verdict::Fail, Some(value), failures.join("; "));
    }
    if stable_missing {
        let why = match stable {
            None => "no data".to_string(),
            Some(s) if s.requests.is_some_and(|r| r <= 0.0) => "no requests".to_string(),
            Some(s) => format!("value {}", format_special(s.value)),
        };
        return judgement(
            Verdict::Inconclusive,
            Some(value),
            format!("{name} {value:.2}: stable has {why} in the window to compare with"),
        );
    }
    judgement(
        Verdict::Pass,
        Some(value),
        format!("{name} {value:.2} within {threshold}"),
    )
}

struct Bounds {
    min: Option<f64>,
    max: Option<f64>,
    max_drop: Option<f64>,
    max_increase: Option<f64>,
}

impl Bounds {
    fn of(check: &MetricCheck) -> Self {
        let relative = check.relative.as_ref();
        Self {
            min: check.min,
            max: check.max,
            max_drop: relative.and_then(|r| r.max_drop_from_stable),
            max_increase: relative.and_then(|r| r.max_increase_over_stable),
        }
    }

    fn relative(&self) -> bool {
        self.max_drop.is_some() || self.max_increase.is_some()
    }

    fn is_empty(&self) -> bool {
        self.min.is_none() && self.max.is_none() && !self.relative()
    }

    fn threshold(&self) -> String {
        let mut parts = Vec::new();
        if let Some(min) = self.min {
            parts.push(format!(">= {min}"));
        }
        if let Some(max) = self.max {
            parts.push(format!("<= {max}"));
        }
        if let Some(d) = self.max_drop {
            parts.push(format!(">= stable - {d}"));
        }
        if let Some(d) = self.max_increase {
            parts.push(format!("<= stable + {d}"));
        }
        parts.join(", ")
    }
}

/// `12` for whole counts, `11.7` for `increase`'s extrapolated ones.
fn format_count(n: f64) -> String {
    if (n - n.round()).abs() < 0.05 {
        format!("{n:.0}")
    } else {
        format!("{n:.1}")
    }
}

/// Prometheus' spelling of non-finite values.
fn format_special(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v:.2}")
    }
}

/// The verdict of several checks: Fail over Error over Inconclusive over Pass; nothing to judge is
/// Inconclusive.
pub fn aggregate(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    let rank = |v: Verdict| match v {
        Verdict::Pass => 0,
        Verdict::Inconclusive => 1,
        Verdict::Error => 2,
        Verdict::Fail => 3,
    };
    verdicts
        .into_iter()
        .max_by_key(|&v| rank(v))
        .unwrap_or(Verdict::Inconclusive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::policy::RelativeCheck;

    const NS: &str = "shop";
    const CANARY: &str = "cart-v2";

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            value,
        }
    }

    fn code(ns: &str, workload: &str, code: &str, value: f64) -> Sample {
        sample(&[(NAMESPACE, ns), (WORKLOAD, workload), ("response_code", code)], value)
    }

    fn bucket(workload: &str, le: &str, value: f64) -> Sample {
        sample(&[(NAMESPACE, NS), (WORKLOAD, workload), ("le", le)], value)
    }

    type Buckets = Vec<(&'static str, f64)>;

    /// Cumulative buckets of CANARY.
    fn buckets(bs: &[(&str, f64)]) -> Vec<Sample> {
        bs.iter().map(|&(le, v)| bucket(CANARY, le, v)).collect()
    }

    fn close(got: f64, want: f64) -> bool {
        (got.is_nan() && want.is_nan()) || got == want || (got - want).abs() < 1e-9
    }

    #[test]
    fn success_rates() {
        let all = vec![
            code(NS, CANARY, "200", 90.0),
            code(NS, CANARY, "404", 5.0),
            code(NS, CANARY, "503", 4.0),
            code(NS, CANARY, "500", 1.0),
            code(NS, "cart-v1", "200", 1000.0),
            code("other", CANARY, "500", 1000.0),
            code(NS, "idle", "200", 0.0),
            code(NS, "idle", "500", 0.0),
            code(NS, "odd", "0", 3.0),
            code(NS, "odd", "", 1.0),
            code(NS, "odd", "504", 4.0),
        ];
        let cases = [
            (NS, CANARY, Some((95.0, 100.0))),
            (NS, "cart-v1", Some((100.0, 1000.0))),
            ("other", CANARY, Some((0.0, 1000.0))),
            (NS, "idle", Some((f64::NAN, 0.0))),
            // Like Flagger: no response (0) and a missing code are not 5xx.
            (NS, "odd", Some((50.0, 8.0))),
            (NS, "absent", None),
        ];
        for (ns, workload, want) in cases {
            let got = success_rate(&all, ns, workload);
            match (got, want) {
                (None, None) => {}
                (Some(o), Some((value, requests))) => {
                    assert!(close(o.value, value), "{workload}: {o:?}");
                    assert_eq!(o.requests, Some(requests), "{workload}");
                }
                _ => panic!("{ns}/{workload}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(success_rate(&[], NS, CANARY), None);
    }

    #[test]
    fn duration_quantiles() {
        // 100 requests: 10 <= 5ms, 50 <= 10ms, 90 <= 100ms, 100 <= 250ms.
        let typical = [
            ("5", 10.0),
            ("10", 50.0),
            ("100", 90.0),
            ("250", 100.0),
            ("+Inf", 100.0),
        ];
        // (quantile, buckets, value, requests)
        let cases: Vec<(f64, Buckets, f64, Option<f64>)> = vec![
            // rank 50 is the top of the 10ms bucket.
            (0.5, typical.to_vec(), 10.0, Some(100.0)),
            // rank 95: 250ms bucket, 5 of its 10 → 100 + 150 * 0.5.
            (0.95, typical.to_vec(), 175.0, Some(100.0)),
            // rank 99: 100 + 150 * 0.9.
            (0.99, typical.to_vec(), 235.0, Some(100.0)),
            // rank 5 in the lowest bucket, lower bound 0: 5 * 5/10.
            (0.05, typical.to_vec(), 2.5, Some(100.0)),
            // rank 30: 5 + 5 * 20/40.
            (0.3, typical.to_vec(), 7.5, Some(100.0)),
            (0.0, typical.to_vec(), 0.0, Some(100.0)),
            (1.0, typical.to_vec(), 250.0, Some(100.0)),
            // Order of the series does not matter.
            (
                0.95,
                vec![
                    ("+Inf", 100.0),
                    ("10", 50.0),
                    ("250", 100.0),
                    ("5", 10.0),
                    ("100", 90.0),
                ],
                175.0,
                Some(100.0),
            ),
            // Rank in the +Inf bucket: the second-highest bound.
            (
                0.99,
                vec![("100", 50.0), ("250", 90.0), ("+Inf", 100.0)],
                250.0,
                Some(100.0),
            ),
            // Only +Inf: fewer than two buckets.
            (0.5, vec![("+Inf", 10.0)], f64::NAN, Some(10.0)),
            // No +Inf bucket: NaN, count unknown.
            (0.5, vec![("5", 1.0), ("10", 2.0)], f64::NAN, None),
            (1.5, vec![("5", 1.0), ("10", 2.0)], f64::INFINITY, None),
            // No requests.
            (0.5, vec![("5", 0.0), ("+Inf", 0.0)], f64::NAN, Some(0.0)),
            // A non-positive lowest bound holding the rank is returned as is.
            (0.1, vec![("0", 5.0), ("10", 10.0), ("+Inf", 10.0)], 0.0, Some(10.0)),
            (0.1, vec![("-1", 5.0), ("10", 10.0), ("+Inf", 10.0)], -1.0, Some(10.0)),
            // Non-monotonic counts (from increase() on differently-timed buckets) are raised.
            // 50ms: 48 → 50; rank 75 in the 100ms bucket: 50 + 50 * 25/40.
            (
                0.75,
                vec![("5", 10.0), ("10", 50.0), ("50", 48.0), ("100", 90.0), ("+Inf", 100.0)],
                50.0 + 50.0 * 25.0 / 40.0,
                Some(100.0),
            ),
            // Extrapolated, fractional counts.
            (
                0.5,
                vec![("10", 1.5), ("20", 4.5), ("+Inf", 4.5)],
                10.0 + 10.0 * 0.75 / 3.0,
                Some(4.5),
            ),
            // Same bound twice: counts add up.
            (
                0.5,
                vec![("10", 2.0), ("10", 2.0), ("+Inf", 4.0), ("20", 4.0)],
                5.0,
                Some(4.0),
            ),
            // `le` spelled otherwise, or unparseable (skipped).
            (0.5, vec![("1e1", 5.0), ("inf", 10.0), ("bogus", 7.0)], 10.0, Some(10.0)),
            // Out-of-range quantiles, like Prometheus.
            (-0.1, typical.to_vec(), f64::NEG_INFINITY, Some(100.0)),
            (1.1, typical.to_vec(), f64::INFINITY, Some(100.0)),
            (f64::NAN, typical.to_vec(), f64::NAN, Some(100.0)),
        ];
        for (q, bs, value, requests) in cases {
            let Some(got) = duration_quantile(q, &buckets(&bs), NS, CANARY) else {
                panic!("q {q} {bs:?}: no observation");
            };
            assert!(close(got.value, value), "q {q} {bs:?}: {} != {value}", got.value);
            assert_eq!(got.requests, requests, "q {q} {bs:?}");
        }
    }

    #[test]
    fn duration_quantile_picks_the_workload() {
        let mut all = buckets(&[("10", 10.0), ("+Inf", 10.0)]);
        all.push(bucket("cart-v1", "10", 0.0));
        all.push(bucket("cart-v1", "20", 100.0));
        all.push(bucket("cart-v1", "+Inf", 100.0));
        all.push(sample(&[(NAMESPACE, "other"), (WORKLOAD, CANARY), ("le", "+Inf")], 1.0));
        let cases = [
            (0.5, CANARY, Some((5.0, 10.0))),
            (0.5, "cart-v1", Some((15.0, 100.0))),
            (0.99, "cart-v1", Some((19.9, 100.0))),
            (0.5, "absent", None),
        ];
        for (q, workload, want) in cases {
            let got = duration_quantile(q, &all, NS, workload);
            match (got, want) {
                (None, None) => {}
                (Some(o), Some((value, requests))) => {
                    assert!(close(o.value, value), "{workload}: {o:?}");
                    assert_eq!(o.requests, Some(requests), "{workload}");
                }
                _ => panic!("{workload}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn observe_dispatches_on_the_template() {
        let codes = [code(NS, CANARY, "200", 3.0), code(NS, CANARY, "502", 1.0)];
        let hist = buckets(&[("10", 0.0), ("20", 100.0), ("+Inf", 100.0)]);
        let cases = [
            (Template::SuccessRate, &codes[..], 75.0),
            (Template::DurationP50, &hist[..], 15.0),
            (Template::DurationP95, &hist[..], 19.5),
            (Template::DurationP99, &hist[..], 19.9),
        ];
        for (t, samples, want) in cases {
            let Some(o) = observe(t, samples, NS, CANARY) else {
                panic!("{t}: no observation");
            };
            assert!(close(o.value, want), "{t}: {o:?}");
        }
    }

    #[test]
    fn custom_observations() {
        let one = sample(&[], 1.5);
        let cases = [
            (vec![], Ok(None)),
            (vec![one.clone()], Ok(Some(Observation::uncounted(1.5)))),
            (vec![one.clone(), one.clone()], Err(TooManySeries(2))),
        ];
        for (samples, want) in cases {
            assert_eq!(custom_observation(&samples), want);
        }
    }

    fn check(min: Option<f64>, max: Option<f64>, drop: Option<f64>, inc: Option<f64>) -> MetricCheck {
        MetricCheck {
            name: "sr".into(),
            template: Some("istio-request-success-rate".into()),
            query: None,
            min,
            max,
            relative: (drop.is_some() || inc.is_some()).then_some(RelativeCheck {
                max_drop_from_stable: drop,
                max_increase_over_stable: inc,
            }),
            window: None,
        }
    }

    const ALL: &str = ">= 90, <= 100, >= stable - 0.5, <= stable + 1";

    #[test]
    fn thresholds() {
        let cases = [
            (check(Some(99.0), None, None, None), ">= 99"),
            (check(None, Some(500.0), None, None), "<= 500"),
            (check(Some(99.9), Some(100.0), None, None), ">= 99.9, <= 100"),
            (check(None, None, Some(0.5), None), ">= stable - 0.5"),
            (check(None, None, None, Some(10.0)), "<= stable + 10"),
            (check(Some(90.0), Some(100.0), Some(0.5), Some(1.0)), ALL),
            (check(None, None, None, None), ""),
        ];
        for (check, want) in cases {
            for canary in [None, Some(Observation::counted(95.0, 1000.0))] {
                assert_eq!(judge(&check, canary, None, 100).threshold, want);
            }
        }
    }

    #[test]
    fn judgements() {
        use Verdict::*;
        let obs = |value, requests| Some(Observation::counted(value, requests));
        let custom = |value| Some(Observation::uncounted(value));
        let min99 = check(Some(99.0), None, None, None);
        let max500 = check(None, Some(500.0), None, None);
        let drop = check(None, None, Some(0.5), None);
        let inc = check(None, None, None, Some(10.0));
        let all = check(Some(90.0), Some(100.0), Some(0.5), Some(1.0));
        let none = check(None, None, None, None);
        // (check, canary, stable, minRequests, verdict, message)
        let cases = [
            (&min99, obs(99.5, 200.0), None, 100, Pass, "sr 99.50 within >= 99"),
            (&min99, obs(99.0, 200.0), None, 100, Pass, "sr 99.00 within >= 99"),
            (&min99, obs(90.0, 200.0), None, 100, Fail, "sr 90.00 < min 99"),
            (&min99, obs(90.0, 100.0), None, 100, Fail, "sr 90.00 < min 99"),
            (
                &min99,
                None,
                None,
                100,
                Inconclusive,
                "sr: no data for the canary in the window",
            ),
            (
                &min99,
                obs(90.0, 12.0),
                None,
                100,
                Inconclusive,
                "sr: 12 requests in the window, fewer than minRequests 100",
            ),
            (
                &min99,
                obs(90.0, 99.6),
                None,
                100,
                Inconclusive,
                "sr: 99.6 requests in the window, fewer than minRequests 100",
            ),
            // No request is never an Error, whatever minRequests.
            (
                &min99,
                obs(f64::NAN, 0.0),
                None,
                0,
                Inconclusive,
                "sr: no requests to the canary in the window",
            ),
            // NaN or infinite despite requests: Error.
            (
                &min99,
                obs(f64::NAN, 10.0),
                None,
                0,
                Error,
                "sr: the canary's value is NaN",
            ),
            (
                &max500,
                custom(f64::INFINITY),
                None,
                0,
                Error,
                "sr: the canary's value is +Inf",
            ),
            (
                &max500,
                custom(f64::NEG_INFINITY),
                None,
                0,
                Error,
                "sr: the canary's value is -Inf",
            ),
            // Custom queries: minRequests cannot apply to an unknown count.
            (&max500, custom(612.3), None, 100, Fail, "sr 612.30 > max 500"),
            (&max500, custom(500.0), None, 100, Pass, "sr 500.00 within <= 500"),
            // Relative bounds.
            (
                &drop,
                obs(99.6, 200.0),
                obs(100.0, 900.0),
                100,
                Pass,
                "sr 99.60 within >= stable - 0.5",
            ),
            (
                &drop,
                obs(99.0, 200.0),
                obs(99.8, 900.0),
                100,
                Fail,
                "sr 99.00 < stable 99.80 - 0.5 (max drop from stable)",
            ),
            (
                &drop,
                obs(99.0, 200.0),
                None,
                100,
                Inconclusive,
                "sr 99.00: stable has no data in the window to compare with",
            ),
            (
                &drop,
                obs(99.0, 200.0),
                obs(f64::NAN, 0.0),
                100,
                Inconclusive,
                "sr 99.00: stable has no requests in the window to compare with",
            ),
            (
                &drop,
                obs(99.0, 200.0),
                custom(f64::NAN),
                100,
                Inconclusive,
                "sr 99.00: stable has value NaN in the window to compare with",
            ),
            // Stable's own traffic is not held to minRequests.
            (
                &drop,
                obs(99.0, 200.0),
                obs(99.0, 3.0),
                100,
                Pass,
                "sr 99.00 within >= stable - 0.5",
            ),
            (
                &inc,
                obs(120.0, 200.0),
                obs(100.0, 900.0),
                100,
                Fail,
                "sr 120.00 > stable 100.00 + 10 (max increase over stable)",
            ),
            (
                &inc,
                obs(110.0, 200.0),
                obs(100.0, 900.0),
                100,
                Pass,
                "sr 110.00 within <= stable + 10",
            ),
            // All bounds must hold; every broken one is named.
            (
                &all,
                obs(95.0, 200.0),
                obs(95.2, 900.0),
                100,
                Pass,
                "sr 95.00 within >= 90, <= 100, >= stable - 0.5, <= stable + 1",
            ),
            (
                &all,
                obs(85.0, 200.0),
                obs(99.0, 900.0),
                100,
                Fail,
                "sr 85.00 < min 90; sr 85.00 < stable 99.00 - 0.5 (max drop from stable)",
            ),
            (
                &all,
                obs(97.0, 200.0),
                obs(95.0, 900.0),
                100,
                Fail,
                "sr 97.00 > stable 95.00 + 1 (max increase over stable)",
            ),
            // A broken absolute bound fails even without stable.
            (&all, obs(85.0, 200.0), None, 100, Fail, "sr 85.00 < min 90"),
            (
                &all,
                obs(95.0, 200.0),
                None,
                100,
                Inconclusive,
                "sr 95.00: stable has no data in the window to compare with",
            ),
            // No bound at all (rejected by validation).
            (
                &none,
                obs(99.5, 200.0),
                None,
                100,
                Error,
                "sr has no min, max or relative bound",
            ),
        ];
        for (check, canary, stable, min_requests, verdict, message) in cases {
            let got = judge(check, canary, stable, min_requests);
            assert_eq!((got.verdict, got.message.as_str()), (verdict, message), "{check:?}");
        }
    }

    #[test]
    fn reported_values() {
        let obs = |value, requests| Some(Observation::counted(value, requests));
        let min99 = check(Some(99.0), None, None, None);
        let drop = check(None, None, Some(0.5), None);
        // (check, canary, stable, value, stable value)
        let cases = [
            (&min99, obs(99.5, 200.0), None, Some(99.5), None),
            (&min99, obs(90.0, 200.0), None, Some(90.0), None),
            // Not judged: no value to report.
            (&min99, obs(90.0, 12.0), None, None, None),
            (&min99, obs(f64::NAN, 10.0), None, None, None),
            (&min99, None, None, None, None),
            // Stable's value only when a relative bound used it.
            (&min99, obs(99.5, 200.0), obs(98.0, 900.0), Some(99.5), None),
            (&drop, obs(99.0, 200.0), obs(99.8, 900.0), Some(99.0), Some(99.8)),
            (&drop, obs(99.0, 200.0), obs(f64::NAN, 0.0), Some(99.0), None),
            (&drop, obs(99.0, 20.0), obs(99.8, 900.0), None, Some(99.8)),
        ];
        for (check, canary, stable, value, stable_value) in cases {
            let got = judge(check, canary, stable, 100);
            assert_eq!(
                (got.value, got.stable_value),
                (value, stable_value),
                "{canary:?} {stable:?}"
            );
        }
    }

    #[test]
    fn aggregates() {
        use Verdict::*;
        let cases: [(&[Verdict], Verdict); 9] = [
            (&[], Inconclusive),
            (&[Pass], Pass),
            (&[Pass, Pass], Pass),
            (&[Pass, Inconclusive], Inconclusive),
            (&[Inconclusive, Error, Pass], Error),
            (&[Error, Fail], Fail),
            (&[Fail, Error, Inconclusive, Pass], Fail),
            (&[Inconclusive], Inconclusive),
            (&[Error], Error),
        ];
        for (verdicts, want) in cases {
            assert_eq!(aggregate(verdicts.iter().copied()), want, "{verdicts:?}");
        }
    }
}
