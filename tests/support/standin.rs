//! A loopback HTTP server that records every request (method, path, headers) and answers each
//! with a fixed response: a Prometheus, webhook or notification receiver whose calls a test counts.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

use anyhow::Result;

/// A request's method, path and headers (names lowercased).
pub type Seen = (String, String, BTreeMap<String, String>);

#[derive(Clone)]
pub struct StandIn {
    addr: String,
    requests: Arc<Mutex<Vec<Seen>>>,
}

/// An HTTP/1.1 200 with a JSON body.
pub fn ok_json(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Prometheus' answer with no series.
pub const EMPTY_VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;

impl StandIn {
    pub fn start(response: String) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let requests: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (seen, response) = (requests.clone(), Arc::new(response));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (seen, response) = (seen.clone(), response.clone());
                std::thread::spawn(move || serve(conn, &seen, &response));
            }
        });
        Ok(Self { addr, requests })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The requests whose path starts with `prefix`.
    pub fn to(&self, prefix: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|(_, p, _)| p.starts_with(prefix))
            .collect()
    }
}

/// One keep-alive connection; a body (Content-Length) is read and dropped.
fn serve(conn: std::net::TcpStream, seen: &Mutex<Vec<Seen>>, response: &str) {
    let Ok(mut out) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(mut s) = seen.lock() {
            s.push((method, path, headers));
        }
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
