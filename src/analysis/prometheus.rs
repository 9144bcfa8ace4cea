//! A small Prometheus HTTP API client: instant queries only.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::analysis::judge::Sample;

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
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("canaryd/", env!("CARGO_PKG_VERSION")))
            // A redirect could carry the credentials to an address the provider does not name.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout);
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
        parse_response(&body)
    }

    /// The body, or TooLarge as soon as it passes `max` bytes (announced or read).
    async fn read_capped(&self, mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, PromError> {
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(PromError::TooLarge(max));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(e))? {
            if body.len() + chunk.len() > max {
                return Err(PromError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
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
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorElement {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    /// Absent for native histograms, which carry `histogram` instead.
    #[serde(default)]
    value: Option<(serde_json::Value, String)>,
}

/// The samples of an instant query's JSON answer (a vector, or a scalar as one unlabelled sample).
pub(crate) fn parse_response(body: &[u8]) -> Result<Vec<Sample>, PromError> {
    let bad = |why: String| PromError::BadResponse(why);
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| bad(format!("not the API's JSON: {e}")))?;
    if envelope.status != "success" {
        let error = envelope.error.unwrap_or_default();
        let error_type = envelope.error_type.unwrap_or_default();
        return Err(bad(truncate(
            format!("status {:?}: {error_type}: {error}", envelope.status),
            BODY_LIMIT,
        )));
    }
    if !envelope.warnings.is_empty() {
        tracing::debug!(warnings = ?envelope.warnings, "Prometheus warnings");
    }
    let data = envelope.data.ok_or_else(|| bad("no data".into()))?;
    match data.result_type.as_str() {
        "vector" => {
            let elements: Vec<VectorElement> =
                serde_json::from_value(data.result).map_err(|e| bad(format!("vector: {e}")))?;
            elements
                .into_iter()
                .map(|element| {
                    let (_, value) = element
                        .value
                        .ok_or_else(|| bad("a sample has no value (native histograms are not supported)".into()))?;
                    Ok(Sample {
                        labels: element.metric,
                        value: parse_value(&value)?,
                    })
                })
                .collect()
        }
        "scalar" => {
            let (_, value): (serde_json::Value, String) =
                serde_json::from_value(data.result).map_err(|e| bad(format!("scalar: {e}")))?;
            Ok(vec![Sample {
                labels: BTreeMap::new(),
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

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
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
                    {"metric":{"a":"b"},"value":[1,"-0.25"]}
                ]}}"#,
                vec![
                    s(&[("le", "+Inf")], f64::NAN),
                    s(&[("le", "5")], f64::INFINITY),
                    s(&[], f64::NEG_INFINITY),
                    s(&[], 1e6),
                    s(&[("a", "b")], -0.25),
                ],
            ),
            (
                r#"{"status":"success","data":{"resultType":"scalar","result":[1717459200,"42"]}}"#,
                vec![s(&[], 42.0)],
            ),
            // Extra fields from newer servers, warnings and stats are ignored.
            (
                r#"{"status":"success","warnings":["PromQL info: metric might not be a counter"],"infos":["x"],
                   "data":{"resultType":"vector","stats":{"timings":{}},"result":[{"metric":{"x":"y"},"value":[1,"3"]}]}}"#,
                vec![s(&[("x", "y")], 3.0)],
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
