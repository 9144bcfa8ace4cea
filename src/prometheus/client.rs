//! A small Prometheus HTTP API client: instant queries only.

use std::time::Duration;

use std::borrow::Cow;
use std::cell::Cell;

use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::analysis::judge::{Labels, Sample};
use crate::analysis::templates::Selection;

/// How a request to Prometheus authenticates. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Bearer(String),
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &format_args!("<redacted>"))
                .finish(),
        }
    }
}

impl Credentials {
    /// A hash that tells two credentials apart without revealing them (cache keys, change detection).
    pub fn fingerprint(&self) -> String {
        let text = match self {
            Credentials::Bearer(t) => format!("bearer\0{t}"),
            Credentials::Basic { username, password } => format!("basic\0{username}\0{password}"),
        };
        let hash = crate::hash::fnv1a64(text.bytes());
        format!("{hash:016x}")
    }
}

/// Why a query got no result. Clone: one grouped query's outcome is shared by many rollouts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromError {
    #[error("Prometheus unreachable: {0}")]
    Unreachable(String),
    #[error("Prometheus did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Prometheus answered {code}: {body}")]
    Status { code: u16, body: String },
    #[error("unexpected answer from Prometheus: {0}")]
    BadResponse(String),
    #[error("invalid Prometheus address: {0}")]
    InvalidAddress(String),
    /// The CA bundle is unusable, or the TLS client cannot be set up.
    #[error("TLS setup for Prometheus: {0}")]
    Tls(String),
    /// The answer was longer than [`MAX_ANSWER_BYTES`]; reading stopped there.
    #[error("Prometheus' answer is larger than {0} bytes; the query must select fewer series")]
    TooLarge(usize),
    /// The answer held more than [`MAX_SERIES`] series; reading stopped there.
    #[error("Prometheus' answer has more than {0} series; the query must select fewer series")]
    TooManySeries(usize),
    #[error(
        "Prometheus answered {code} redirecting to {location:?}; redirects are not followed: use the final address"
    )]
    Redirect { code: u16, location: String },
}

impl PromError {
    /// A small fixed set of values, safe as a metric label.
    pub fn category(&self) -> &'static str {
        match self {
            PromError::Unreachable(_) => "unreachable",
            PromError::Timeout(_) => "timeout",
            PromError::Status { .. } => "status",
            PromError::BadResponse(_) => "bad_response",
            PromError::InvalidAddress(_) => "invalid_address",
            PromError::Tls(_) => "tls",
            PromError::TooLarge(_) => "too_large",
            PromError::TooManySeries(_) => "too_many_series",
            PromError::Redirect { .. } => "redirect",
        }
    }
}

/// Longest error body kept, in characters: enough for Prometheus' message, bounded for status.
const BODY_LIMIT: usize = 200;

/// Longest answer read: a canary's checks select a few series; one huge answer must not exhaust
/// the daemon's memory. A slow answer is bounded by the query timeout (body included).
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct PromClient {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    auth: Option<Credentials>,
    timeout: Duration,
}

impl PromClient {
    /// A client for the Prometheus at `address` (`http(s)://host:port[/prefix]`), trusting `ca_pem`
    /// (a PEM bundle) besides the system roots; every query is bounded by `timeout`.
    pub fn new(
        address: &str,
        auth: Option<Credentials>,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, PromError> {
        let endpoint = endpoint(address)?;
        let mut builder = crate::http::client::builder(timeout);
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| PromError::Tls(format!("CA bundle: {}", chain(&e))))?;
            if certs.is_empty() {
                return Err(PromError::Tls("CA bundle holds no PEM certificate".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| PromError::Tls(chain(&e)))?;
        Ok(Self {
            http,
            endpoint,
            auth,
            timeout,
        })
    }

    /// The query endpoint, for logs (an address never holds credentials).
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// Evaluates `promql` at the current time.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, PromError> {
        self.query_kept(promql, Keep::All).await
    }

    /// [`PromClient::query`], keeping only the samples `keep` wants.
    pub async fn query_kept(&self, promql: &str, keep: Keep<'_>) -> Result<Vec<Sample>, PromError> {
        // Prometheus' own `timeout` lets it stop evaluating once nobody waits for the answer.
        let server_timeout = format!("{}ms", self.timeout.as_millis().max(1));
        let mut request = self
            .http
            .get(self.endpoint.clone())
            .query(&[("query", promql), ("timeout", server_timeout.as_str())])
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout);
        request = match &self.auth {
            None => request,
            Some(Credentials::Bearer(token)) => request.bearer_auth(token),
            Some(Credentials::Basic { username, password }) => request.basic_auth(username, Some(password)),
        };
        // Bounds the answers in memory at once (each up to MAX_ANSWER_BYTES and MAX_SERIES). The
        // semaphore is never closed; if it were, the query would go on unbounded rather than fail.
        let _permit = QUERY_PERMITS.acquire().await.ok();
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or_default();
            return Err(PromError::Redirect {
                code: status.as_u16(),
                location: truncate(location.to_string(), BODY_LIMIT),
            });
        }
        let body = self.read_capped(response, MAX_ANSWER_BYTES).await?;
        if !status.is_success() {
            return Err(PromError::Status {
                code: status.as_u16(),
                body: error_body(&body),
            });
        }
        parse_kept(&body, keep)
    }

    /// The body, or TooLarge as soon as it passes `max` bytes (announced or read).
    async fn read_capped(&self, response: reqwest::Response, max: usize) -> Result<Vec<u8>, PromError> {
        crate::http::body::read_capped(response, max, |e| self.transport(e))
            .await
            .map_err(|e| match e {
                Ok(_) => PromError::TooLarge(max),
                Err(e) => e,
            })
    }

    fn transport(&self, e: reqwest::Error) -> PromError {
        if e.is_timeout() {
            PromError::Timeout(self.timeout)
        } else {
            // The URL holds the whole query; the address is logged elsewhere.
            PromError::Unreachable(chain(&e.without_url()))
        }
    }
}

/// `{address}/api/v1/query`, for an http(s) address without credentials, query or fragment.
fn endpoint(address: &str) -> Result<reqwest::Url, PromError> {
    let invalid = |why: &str| PromError::InvalidAddress(format!("{address:?}: {why}"));
    let base = reqwest::Url::parse(address.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if base.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    // Credentials in the address would reach logs; they belong in `auth`.
    if !base.username().is_empty() || base.password().is_some() {
        return Err(PromError::InvalidAddress(
            "credentials in the address are not allowed; use auth".into(),
        ));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(invalid("a query or fragment is not allowed"));
    }
    let path = format!("{}/api/v1/query", base.path().trim_end_matches('/'));
    let mut url = base;
    url.set_path(&path);
    Ok(url)
}

/// An error and its causes, e.g. `error sending request: client error (Connect): tcp connect
/// error: Connection refused (os error 111)`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their cause in their own text.
        if !out.ends_with(&cause_text) {
            out.push_str(": ");
            out.push_str(&cause_text);
        }
        source = cause.source();
    }
    out
}

/// Prometheus' `errorType: error` when the body is its JSON error, else the raw body; truncated.
fn error_body(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope {
            error: Some(error),
            error_type,
            ..
        }) => match error_type {
            Some(t) => format!("{t}: {error}"),
            None => error,
        },
        _ => String::from_utf8_lossy(body).trim().to_string(),
    };
    truncate(text, BODY_LIMIT)
}

fn truncate(mut text: String, max_chars: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(max_chars) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    status: String,
    #[serde(default, borrow)]
    data: Option<Data<'a>>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    /// Skipped without keeping them: only their presence is logged.
    #[serde(default)]
    warnings: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data<'a> {
    result_type: String,
    /// Kept as the text it is in the body (no copy) until `result_type` says how to read it.
    #[serde(borrow)]
    result: &'a RawValue,
}

/// The label names the judge reads ([`crate::analysis::judge`]); every other label is skipped while
/// parsing, so an answer's memory does not grow with the labels a query happens to carry.
const KEPT_LABELS: [&str; 4] = [
    crate::analysis::judge::NAMESPACE,
    crate::analysis::judge::WORKLOAD,
    "response_code",
    "le",
];

/// Most series read from one answer: the grouped built-in queries select one set of series per
/// rollout in progress, far fewer. With the byte cap and [`MAX_CONCURRENT_QUERIES`] this bounds the
/// memory all answers in flight can take, whatever a Prometheus (or anything at its address) sends.
pub const MAX_SERIES: usize = 10_000;

/// Most Prometheus queries in flight for the whole daemon (every provider, every policy).
pub const MAX_CONCURRENT_QUERIES: usize = 4;

static QUERY_PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_QUERIES);

/// Longest label value kept: Kubernetes names are at most 253 bytes; a longer value names nothing
/// canaryd asked about and is skipped.
const MAX_LABEL_VALUE: usize = 253;

/// Most series kept per workload a grouped query asked about: a workload has one series per
/// response code or histogram bucket, a few dozen. More is refused, so that an answer naming the
/// asking rollout's own workloads thousands of times is not kept whole.
pub const MAX_KEPT_PER_WORKLOAD: usize = 256;

/// The labels of a series that the judge reads; the others are skipped without being copied.
struct KeptLabels(Labels);

impl<'de> Deserialize<'de> for KeptLabels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeptLabels;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of labels")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeptLabels, A::Error> {
                let mut kept = Labels::default();
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                    match KEPT_LABELS.iter().find(|k| **k == name) {
                        Some(k) => {
                            let value: Cow<'de, str> = map.next_value()?;
                            if value.len() <= MAX_LABEL_VALUE {
                                kept.insert((*k).to_string(), value.into_owned());
                            }
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(KeptLabels(kept))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct VectorElement<'a> {
    #[serde(default)]
    metric: Option<KeptLabels>,
    /// Absent for native histograms, which carry `histogram` instead.
    #[serde(default, borrow)]
    value: Option<(IgnoredAny, Cow<'a, str>)>,
}

/// Which samples of an answer are kept. Every series is read and counted against [`MAX_SERIES`];
/// only these stay in memory, so what a tick holds follows the rollouts asking, not the answer.
#[derive(Clone, Copy, Debug)]
pub enum Keep<'a> {
    All,
    /// A custom query's answer: two samples are enough to judge it (one) or refuse it (several).
    FirstTwo,
    /// A grouped built-in query's answer: only the series of the workloads it asked about.
    Selected(&'a Selection),
}

impl Keep<'_> {
    /// Most samples kept before the answer is refused as too many.
    fn max_kept(&self) -> usize {
        match self {
            Keep::All | Keep::FirstTwo => MAX_SERIES,
            Keep::Selected(sel) => MAX_KEPT_PER_WORKLOAD.saturating_mul(sel.workloads.len().max(1)),
        }
    }

    fn keeps(&self, kept: usize, s: &Sample) -> bool {
        let label = |name: &str| s.labels.get(name).map(String::as_str).unwrap_or_default();
        match self {
            Keep::All => true,
            Keep::FirstTwo => kept < 2,
            Keep::Selected(sel) => {
                sel.namespaces.contains(label(crate::analysis::judge::NAMESPACE))
                    && sel.workloads.contains(label(crate::analysis::judge::WORKLOAD))
            }
        }
    }
}

/// Reads a vector's elements one at a time into samples, refusing more than [`MAX_SERIES`].
struct Vector<'c> {
    too_many: &'c Cell<bool>,
    keep: Keep<'c>,
}

impl<'de> DeserializeSeed<'de> for Vector<'_> {
    type Value = Vec<Sample>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<Sample>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Vector<'_> {
    type Value = Vec<Sample>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an instant vector")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Sample>, A::Error> {
        let mut samples = Vec::new();
        let mut series = 0;
        while let Some(element) = seq.next_element::<VectorElement<'de>>()? {
            if series == MAX_SERIES {
                self.too_many.set(true);
                return Err(serde::de::Error::custom("too many series"));
            }
            let (_, value) = element.value.ok_or_else(|| {
                serde::de::Error::custom("a sample has no value (native histograms are not supported)")
            })?;
            series += 1;
            let sample = Sample {
                labels: element.metric.map(|m| m.0).unwrap_or_default(),
                value: parse_value(&value).map_err(serde::de::Error::custom)?,
            };
            if self.keep.keeps(samples.len(), &sample) {
                if samples.len() == self.keep.max_kept() {
                    self.too_many.set(true);
                    return Err(serde::de::Error::custom("too many series kept"));
                }
                samples.push(sample);
            }
        }
        Ok(samples)
    }
}

/// The samples of an instant query's JSON answer (a vector, or a scalar as one unlabelled sample).
/// Typed and streaming: no tree of the answer is built, and at most [`MAX_SERIES`] series are kept.
#[cfg(test)]
fn parse_response(body: &[u8]) -> Result<Vec<Sample>, PromError> {
    parse_kept(body, Keep::All)
}

/// [`parse_response`], keeping only the samples `keep` wants.
fn parse_kept(body: &[u8], keep: Keep) -> Result<Vec<Sample>, PromError> {
    let bad = |why: String| PromError::BadResponse(truncate(why, BODY_LIMIT));
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| bad(format!("not the API's JSON: {e}")))?;
    if envelope.status != "success" {
        let error = envelope.error.unwrap_or_default();
        let error_type = envelope.error_type.unwrap_or_default();
        return Err(bad(format!("status {:?}: {error_type}: {error}", envelope.status)));
    }
    if envelope.warnings.is_some() {
        tracing::debug!("Prometheus answered with warnings");
    }
    let data = envelope.data.ok_or_else(|| bad("no data".into()))?;
    match data.result_type.as_str() {
        "vector" => {
            let too_many = Cell::new(false);
            let mut de = serde_json::Deserializer::from_str(data.result.get());
            Vector {
                too_many: &too_many,
                keep,
            }
            .deserialize(&mut de)
            .map_err(|e| match too_many.get() {
                true => PromError::TooManySeries(MAX_SERIES),
                false => bad(format!("vector: {e}")),
            })
        }
        "scalar" => {
            let (_, value): (IgnoredAny, Cow<str>) =
                serde_json::from_str(data.result.get()).map_err(|e| bad(format!("scalar: {e}")))?;
            Ok(vec![Sample {
                labels: Labels::default(),
                value: parse_value(&value)?,
            }])
        }
        other => Err(bad(format!(
            "result type {other:?}; the query must give an instant vector or a scalar"
        ))),
    }
}

/// Prometheus writes values as Go formats floats: `1.5`, `1e+06`, `NaN`, `+Inf`, `-Inf`.
fn parse_value(text: &str) -> Result<f64, PromError> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text
            .parse::<f64>()
            .map_err(|_| PromError::BadResponse(format!("value {:?} is not a number", truncate(text.to_string(), 40)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Equal, NaN included.
    fn same(a: &[Sample], b: &[Sample]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.labels == y.labels && (x.value == y.value || (x.value.is_nan() && y.value.is_nan())))
    }

    #[test]
    fn parses_answers() {
        let s = |pairs: &[(&str, &str)], value| Sample {
            labels: labels(pairs),
            value,
        };
        let cases: Vec<(&str, Vec<Sample>)> = vec![
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                vec![],
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[
                    {"metric":{"destination_workload":"cart-v2","response_code":"200"},"value":[1717459200.123,"1.5"]},
                    {"metric":{"destination_workload":"cart-v2","response_code":"503"},"value":[1717459200.123,"2"]}
                ]}}"#,
                vec![
                    s(&[("destination_workload", "cart-v2"), ("response_code", "200")], 1.5),
                    s(&[("destination_workload", "cart-v2"), ("response_code", "503")], 2.0),
                ],
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[
                    {"metric":{"le":"+Inf"},"value":[1,"NaN"]},
                    {"metric":{"le":"5"},"value":[1,"+Inf"]},
                    {"metric":{},"value":[1,"-Inf"]},
                    {"value":[1,"1e+06"]},
                    {"metric":{"le":"0.5","a":"b"},"value":[1,"-0.25"]}
                ]}}"#,
                vec![
                    s(&[("le", "+Inf")], f64::NAN),
                    s(&[("le", "5")], f64::INFINITY),
                    s(&[], f64::NEG_INFINITY),
                    s(&[], 1e6),
                    s(&[("le", "0.5")], -0.25),
                ],
            ),
            (
                r#"{"status":"success","data":{"resultType":"scalar","result":[1717459200,"42"]}}"#,
                vec![s(&[], 42.0)],
            ),
            // Extra fields from newer servers, warnings and stats are ignored.
            (
                r#"{"status":"success","warnings":["PromQL info: metric might not be a counter"],"infos":["x"],
                   "data":{"resultType":"vector","stats":{"timings":{}},"result":[{"metric":{"response_code":"200"},"value":[1,"3"]}]}}"#,
                vec![s(&[("response_code", "200")], 3.0)],
            ),
        ];
        for (body, want) in cases {
            match parse_response(body.as_bytes()) {
                Ok(got) => assert!(same(&got, &want), "{body}: {got:?}"),
                Err(e) => panic!("{body}: {e}"),
            }
        }
    }

    #[test]
    fn rejects_bad_answers() {
        let cases = [
            ("", "not the API's JSON"),
            ("<html>", "not the API's JSON"),
            (r#"{"status":"success"}"#, "no data"),
            (
                r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
                r#"status "error": bad_data: parse error"#,
            ),
            (
                r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
                r#"result type "matrix""#,
            ),
            (
                r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#,
                r#"result type "string""#,
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"abc"]}]}}"#,
                r#"value "abc" is not a number"#,
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,2]}]}}"#,
                "vector:",
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{}]}]}}"#,
                "native histograms are not supported",
            ),
            (
                r#"{"status":"success","data":{"resultType":"scalar","result":"1"}}"#,
                "scalar:",
            ),
        ];
        for (body, want) in cases {
            match parse_response(body.as_bytes()) {
                Err(PromError::BadResponse(why)) => {
                    assert!(why.contains(want), "{body}: {why:?} lacks {want:?}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    /// A vector answer of `n` series, each with the labels a grouped built-in query carries and more.
    fn answer_with_series(n: usize) -> String {
        let mut body = String::from(r#"{"status":"success","data":{"resultType":"vector","result":["#);
        for i in 0..n {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"metric":{{"destination_workload":"w{i}","destination_workload_namespace":"ns","pod":"p{i}","instance":"10.0.0.1:15090"}},"value":[1717459200.1,"{i}"]}}"#
            ));
        }
        body.push_str("]}}");
        body
    }

    #[test]
    fn at_most_max_series_are_read_and_only_the_judged_labels_kept() {
        let at_cap = parse_response(answer_with_series(MAX_SERIES).as_bytes()).expect("at the cap");
        assert_eq!(at_cap.len(), MAX_SERIES);
        assert_eq!(
            at_cap[7].labels,
            labels(&[("destination_workload", "w7"), ("destination_workload_namespace", "ns")]),
            "pod and instance are not kept"
        );
        assert_eq!(at_cap[7].value, 7.0);
        // The reproduced attack: 63,000 small series, under the byte cap.
        for n in [MAX_SERIES + 1, 63_000] {
            match parse_response(answer_with_series(n).as_bytes()) {
                Err(PromError::TooManySeries(max)) => assert_eq!(max, MAX_SERIES),
                other => panic!("{n} series: {other:?}"),
            }
        }
        assert_eq!(PromError::TooManySeries(1).category(), "too_many_series");
    }

    #[test]
    fn only_the_samples_asked_for_stay_in_memory() {
        let body = answer_with_series(MAX_SERIES);
        let mut sel = Selection::default();
        sel.add("ns", &["w3", "w9999", "absent"]);
        let kept = parse_kept(body.as_bytes(), Keep::Selected(&sel)).expect("parsed");
        let names: Vec<Option<&String>> = kept.iter().map(|s| s.labels.get("destination_workload")).collect();
        assert_eq!(names, [Some(&"w3".to_string()), Some(&"w9999".to_string())]);
        let kept = parse_kept(body.as_bytes(), Keep::FirstTwo).expect("parsed");
        assert_eq!(kept.len(), 2, "enough to refuse an unaggregated custom query");
        // An answer naming the asking workload more often than any real one would is refused.
        let mut flood = String::from(r#"{"status":"success","data":{"resultType":"vector","result":["#);
        for i in 0..=MAX_KEPT_PER_WORKLOAD {
            let sep = if i > 0 { "," } else { "" };
            flood.push_str(&format!(
                r#"{sep}{{"metric":{{"destination_workload":"w3","destination_workload_namespace":"ns","response_code":"{i}"}},"value":[1,"1"]}}"#
            ));
        }
        flood.push_str("]}}");
        let mut one = Selection::default();
        one.add("ns", &["w3"]);
        assert_eq!(
            parse_kept(flood.as_bytes(), Keep::Selected(&one)),
            Err(PromError::TooManySeries(MAX_SERIES))
        );
        // A label value no Kubernetes name could have is not kept.
        let long = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{"le":"{}"}},"value":[1,"1"]}}]}}}}"#,
            "9".repeat(MAX_LABEL_VALUE + 1)
        );
        assert!(parse_response(long.as_bytes()).expect("parsed")[0].labels.is_empty());
        // Counting still covers every series read, kept or not.
        assert_eq!(
            parse_kept(answer_with_series(MAX_SERIES + 1).as_bytes(), Keep::Selected(&sel)),
            Err(PromError::TooManySeries(MAX_SERIES))
        );
    }

    #[test]
    fn hostile_shapes_are_bad_responses() {
        let deep = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{"x":{}1{}}},"value":[1,"1"]}}]}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let cases = [
            // Labels as a list, a value as a number, a kept label that is not a string.
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":["a"],"value":[1,"1"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,1]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"le":5},"value":[1,"1"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":{"not":"a list"}}}"#,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1]}}"#,
        ];
        for body in cases {
            match parse_response(body.as_bytes()) {
                Err(PromError::BadResponse(_)) => {}
                other => panic!("{}: {other:?}", &body[..body.len().min(120)]),
            }
        }
        // A deeply nested label nobody reads is skipped without recursion and kept nowhere.
        let got = parse_response(deep.as_bytes()).expect("skipped");
        assert!(
            got.len() == 1 && got[0].labels.is_empty() && got[0].value == 1.0,
            "{got:?}"
        );
    }

    #[test]
    fn error_bodies() {
        let long = "x".repeat(500);
        let cases = [
            (
                r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected"}"#.to_string(),
                "bad_data: 1:5: parse error: unexpected".to_string(),
            ),
            (
                "  upstream connect error \n".to_string(),
                "upstream connect error".to_string(),
            ),
            (long.clone(), format!("{}…", &long[..200])),
            ("é".repeat(300), format!("{}…", "é".repeat(200))),
        ];
        for (body, want) in cases {
            assert_eq!(error_body(body.as_bytes()), want);
        }
    }

    #[test]
    fn addresses() {
        let ok = [
            (
                "http://prometheus.istio-system:9090",
                "http://prometheus.istio-system:9090/api/v1/query",
            ),
            ("http://prometheus:9090/", "http://prometheus:9090/api/v1/query"),
            (
                "https://mon.example.com/prometheus/",
                "https://mon.example.com/prometheus/api/v1/query",
            ),
            (" http://127.0.0.1:9090 ", "http://127.0.0.1:9090/api/v1/query"),
        ];
        for (address, want) in ok {
            assert_eq!(endpoint(address).map(|u| u.to_string()), Ok(want.to_string()));
        }
        let bad = [
            "",
            "prometheus:9090",
            "ftp://prometheus",
            "http://",
            "http://user:secret@prometheus:9090",
            "http://prometheus:9090/?x=1",
            "http://prometheus:9090/#x",
        ];
        for address in bad {
            match endpoint(address) {
                Err(e @ PromError::InvalidAddress(_)) => {
                    assert!(!e.to_string().contains("secret"), "{e}")
                }
                other => panic!("{address}: {other:?}"),
            }
        }
    }

    #[test]
    fn credentials_are_redacted() {
        let cases = [
            (Credentials::Bearer("tok3n".into()), "Bearer(<redacted>)"),
            (
                Credentials::Basic {
                    username: "canaryd".into(),
                    password: "hunter2".into(),
                },
                r#"Basic { username: "canaryd", password: <redacted> }"#,
            ),
        ];
        for (creds, want) in cases {
            assert_eq!(format!("{creds:?}"), want);
            let client = PromClient::new("http://127.0.0.1:9", Some(creds), None, Duration::from_secs(1));
            let debug = format!("{client:?}");
            assert!(!debug.contains("tok3n") && !debug.contains("hunter2"), "{debug}");
        }
    }

    #[test]
    fn categories() {
        let cases = [
            (PromError::Unreachable("x".into()), "unreachable"),
            (PromError::Timeout(Duration::from_secs(5)), "timeout"),
            (
                PromError::Status {
                    code: 503,
                    body: String::new(),
                },
                "status",
            ),
            (PromError::BadResponse("x".into()), "bad_response"),
            (PromError::InvalidAddress("x".into()), "invalid_address"),
            (PromError::Tls("x".into()), "tls"),
        ];
        for (e, want) in cases {
            assert_eq!(e.category(), want);
        }
    }

    #[test]
    fn bad_ca_bundles() {
        let cases: [&[u8]; 2] = [
            b"",
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        ];
        for pem in cases {
            match PromClient::new("https://prometheus:9090", None, Some(pem), Duration::from_secs(1)) {
                Err(PromError::Tls(_)) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(pem)),
            }
        }
    }

    /// A one-connection-at-a-time HTTP server on loopback: reads a request, then runs `answer` on
    /// the socket. Counts the requests it got.
    async fn serve<F, Fut>(answer: F) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(answer(socket));
            }
        });
        (address, hits)
    }

    const OK_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_max_concurrent_queries_are_in_flight() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncWriteExt;
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, m) = (now.clone(), most.clone());
        let (address, hits) = serve(move |mut socket| {
            let (now, most) = (n.clone(), m.clone());
            async move {
                let current = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(current, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let _ = socket.write_all(OK_HEAD).await;
                let _ = socket.write_all(EMPTY.as_bytes()).await;
            }
        })
        .await;
        let client = PromClient::new(&address, None, None, Duration::from_secs(10)).unwrap();
        let answers = futures::future::join_all((0..10).map(|_| client.query("up"))).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 10);
        let most = most.load(Ordering::SeqCst);
        assert!(
            (1..=MAX_CONCURRENT_QUERIES).contains(&most),
            "{most} queries in flight at once"
        );
    }

    const EMPTY: &str = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;

    #[tokio::test]
    async fn huge_redirecting_and_slow_answers_are_provider_errors() {
        use tokio::io::AsyncWriteExt;
        let timeout = Duration::from_secs(2);
        let client = |address: &str| PromClient::new(address, None, None, timeout).unwrap();

        // Huge, without a length: reading stops at the cap.
        let (huge, _) = serve(|mut socket| async move {
            let _ = socket.write_all(OK_HEAD).await;
            let _ = socket
                .write_all(br#"{"status":"success","data":{"resultType":"vector","result":["#)
                .await;
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..(2 * MAX_ANSWER_BYTES / chunk.len()) {
                if socket.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert_eq!(
            client(&huge).query("up").await,
            Err(PromError::TooLarge(MAX_ANSWER_BYTES))
        );

        // Huge, announced: refused before reading.
        let (announced, _) = serve(|mut socket| async move {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        assert_eq!(
            client(&announced).query("up").await,
            Err(PromError::TooLarge(MAX_ANSWER_BYTES))
        );

        // A redirect is not followed: the target never gets a request.
        let (target, target_hits) = serve(|mut socket| async move {
            let _ = socket.write_all(OK_HEAD).await;
            let _ = socket
                .write_all(br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#)
                .await;
        })
        .await;
        let location = format!("{target}/api/v1/query?query=up");
        let (redirecting, _) = serve(move |mut socket| {
            let location = location.clone();
            async move {
                let head = format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n");
                let _ = socket.write_all(head.as_bytes()).await;
            }
        })
        .await;
        match client(&redirecting).query("up").await {
            Err(e @ PromError::Redirect { code: 302, .. }) => assert!(e.to_string().contains("not followed"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            target_hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the redirect was followed"
        );

        // Slow: a body that trickles in is cut at the query timeout.
        let (slow, _) = serve(|mut socket| async move {
            let _ = socket.write_all(OK_HEAD).await;
            for _ in 0..1000 {
                if socket.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let started = std::time::Instant::now();
        assert_eq!(client(&slow).query("up").await, Err(PromError::Timeout(timeout)));
        assert!(
            started.elapsed() < timeout + Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}
