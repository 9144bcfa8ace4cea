//! The runner against a real loopback HTTP server: Flagger's meaning of `retries` (HTTP retries
//! within one call), its 200-202 success range, and the payload as it goes on the wire.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use futures::channel::mpsc::unbounded;
use serde_json::{Value, json};

use super::*;
use crate::fence::LeaderGuard;
use crate::resources::webhook::Payload;

type Bodies = Arc<Mutex<Vec<Value>>>;

/// Answers the n-th request with `codes[n]` (the last one repeats), `Retry-After: 0` when asked to;
/// records every body.
async fn server(codes: Vec<u16>, retry_after_zero: bool) -> (String, Bodies) {
    let bodies: Bodies = Arc::default();
    let seen = bodies.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let seen = seen.clone();
        let codes = codes.clone();
        async move {
            let n = {
                let mut all = seen.lock().unwrap_or_else(|e| e.into_inner());
                all.push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                all.len() - 1
            };
            let code = codes.get(n).or(codes.last()).copied().unwrap_or(200);
            let mut headers = HeaderMap::new();
            if retry_after_zero {
                headers.insert("retry-after", "0".parse().unwrap_or_else(|_| unreachable!()));
            }
            (StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT), headers)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "http://{}/hook",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

fn runner() -> Arc<Runner> {
    let (wake, _) = unbounded();
    let leader = LeaderGuard::elected(Duration::from_secs(60));
    leader.renewed(Instant::now());
    let runner = Arc::new(Runner::new(wake, leader, Duration::from_secs(1)).unwrap_or_else(|e| panic!("{e}")));
    tokio::spawn(runner.clone().run());
    runner
}

fn gate(url: &str, retries: u32) -> HookCall {
    let hook = json!({"name": "gate", "type": "confirm-rollout", "url": url, "retries": retries, "interval": "1h"});
    HookCall {
        hook: serde_json::from_value(hook).unwrap_or_else(|e| panic!("{e}")),
        binding: "b".into(),
        repeat: false,
        payload: Payload::default(),
        credential: Credential::None,
    }
}

/// The answer to one call of `call`.
async fn answer(runner: &Arc<Runner>, call: HookCall) -> HookAnswer {
    let key: Key = ("ns".into(), format!("p-{}", call.hook.url));
    runner.want(key.clone(), vec![call]);
    for _ in 0..1000 {
        if let Some(a) = runner.latest(&key).pop() {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no answer in 10 s");
}

#[tokio::test]
async fn retries_are_http_retries_within_one_call_as_in_flagger() {
    let runner = runner();
    // (answers, retries) → (requests made, 200-202 in the end, detail)
    let cases: [(Vec<u16>, u32, usize, bool, &str); 6] = [
        (vec![503, 502, 200], 2, 3, true, "HTTP 200 (after 2 retries)"),
        (vec![500], 1, 2, false, "HTTP 500 (after 1 retries)"),
        (vec![429, 201], 3, 2, true, "HTTP 201 (after 1 retries)"),
        (vec![503, 200], 0, 1, false, "HTTP 503"),
        (vec![403, 200], 3, 1, false, "HTTP 403"),
        (vec![501, 200], 3, 1, false, "HTTP 501"),
    ];
    for (codes, retries, requests, ok, detail) in cases {
        let (url, bodies) = server(codes.clone(), true).await;
        let a = answer(&runner, gate(&url, retries)).await;
        let made = bodies.lock().map(|b| b.len()).unwrap_or(0);
        assert_eq!(
            (made, a.ok, a.detail.as_str(), a.failures),
            (requests, ok, detail, u32::from(!ok)),
            "{codes:?} retries {retries}"
        );
    }
}

#[tokio::test]
async fn without_retry_after_retries_back_off_a_second_first() {
    let runner = runner();
    let (url, bodies) = server(vec![503, 200], false).await;
    let started = Instant::now();
    let a = answer(&runner, gate(&url, 1)).await;
    assert!(a.ok, "{a:?}");
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(bodies.lock().map(|b| b.len()).unwrap_or(0), 2);
}

#[tokio::test]
async fn only_200_to_202_count_as_success() {
    let runner = runner();
    for (code, ok) in [
        (200, true),
        (201, true),
        (202, true),
        (203, false),
        (204, false),
        (226, false),
        (302, false),
    ] {
        let (url, _) = server(vec![code], false).await;
        let a = answer(&runner, gate(&url, 0)).await;
        assert_eq!((a.ok, a.detail), (ok, format!("HTTP {code}")), "{code}");
    }
}

#[tokio::test]
async fn a_timeout_is_retried_and_then_a_failed_answer() {
    let runner = runner();
    // Nothing answers: the connection is accepted and held.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}/", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let held = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            held.lock().unwrap_or_else(|e| e.into_inner()).push(socket);
        }
    });
    let mut call = gate(&url, 1);
    call.hook.timeout = Duration::from_millis(200);
    let a = answer(&runner, call).await;
    assert_eq!(
        (a.ok, a.detail.as_str()),
        (false, "timed out after 200ms (after 1 retries)")
    );
    assert_eq!(accepted.lock().map(|a| a.len()).unwrap_or(0), 2);
}

#[tokio::test]
async fn the_payload_goes_out_with_flaggers_fields() {
    let runner = runner();
    let (url, bodies) = server(vec![200], false).await;
    let mut call = gate(&url, 0);
    call.payload = Payload {
        name: "app".into(),
        namespace: "dev".into(),
        phase: "Progressing".into(),
        checksum: "5f0c9d".into(),
        metadata: [
            ("eventType".to_string(), "Warning".to_string()),
            ("eventMessage".to_string(), "m".to_string()),
        ]
        .into(),
        ..Payload::default()
    };
    answer(&runner, call).await;
    let body = bodies.lock().map(|b| b[0].clone()).unwrap_or_default();
    assert_eq!(
        (&body["name"], &body["namespace"], &body["phase"], &body["checksum"]),
        (&json!("app"), &json!("dev"), &json!("Progressing"), &json!("5f0c9d"))
    );
    assert_eq!(body["metadata"], json!({"eventType": "Warning", "eventMessage": "m"}));
}
