//! The approval API's pins, and the handler against a mocked API server (tower-test): a pin that
//! no longer matches is refused with the current values before any command is created.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use serde_json::{Value, json};
use tower_test::mock;

use super::*;
use crate::approvals::keys::SlackKeys;

#[test]
fn pins_parse_strictly() {
    assert_eq!(parse_pin(b""), Ok(Pin::default()));
    assert_eq!(parse_pin(b" \n"), Ok(Pin::default()));
    assert_eq!(
        parse_pin(br#"{"canary":"abc","step":3}"#),
        Ok(Pin {
            canary: Some("abc".into()),
            step: Some(3)
        })
    );
    assert_eq!(parse_pin(br#"{"step":1}"#).map(|p| p.step), Ok(Some(1)));
    let long = format!(r#"{{"canary":"{}"}}"#, "a".repeat(MAX_HASH + 1));
    for bad in [
        br#"{"step":"3"}"#.as_slice(),
        br#"{"step":-1}"#,
        br#"{"step":4294967296}"#,
        br#"{"canary":""}"#,
        br#"{"canary":"abc","gate":1}"#,
        br#"[1]"#,
        b"step=3",
        long.as_bytes(),
    ] {
        assert!(parse_pin(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn pin_table() {
    let at = |c: Option<&str>, s: Option<u32>| Current {
        canary: c.map(str::to_string),
        step: s,
    };
    let pin = |c: Option<&str>, s: Option<u32>| Pin {
        canary: c.map(str::to_string),
        step: s,
    };
    let cases = [
        ("nothing pinned", pin(None, None), at(Some("a"), Some(3)), None),
        ("both match", pin(Some("a"), Some(3)), at(Some("a"), Some(3)), None),
        ("step only", pin(None, Some(3)), at(Some("a"), Some(3)), None),
        (
            "passed gate",
            pin(Some("a"), Some(1)),
            at(Some("a"), Some(3)),
            Some("WrongStep"),
        ),
        (
            "older rollout",
            pin(Some("old"), Some(3)),
            at(Some("a"), Some(3)),
            Some("WrongCanary"),
        ),
        (
            "step, no step now",
            pin(None, Some(1)),
            at(Some("a"), None),
            Some("WrongStep"),
        ),
        ("rollout over", pin(Some("a"), None), at(None, None), Some("NoRollout")),
        ("nothing pinned, none running", pin(None, None), at(None, None), None),
    ];
    for (name, p, now, want) in cases {
        assert_eq!(pin_mismatch(&p, &now), want, "{name}");
    }
}

fn status_json(allowed: bool) -> Value {
    json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {},
           "status": {"allowed": allowed}})
}

/// Policy dev/app waiting at step 3 of canary `abc`, sending to NotificationTarget `team`.
pub(crate) fn policy_json() -> Value {
    json!({"apiVersion": "canaryd.io/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": "app", "namespace": "dev", "uid": "u1"},
        "spec": {"service": "app", "virtualServices": [{"name": "app"}], "destinationRule": "app",
                 "stable": {"subset": "v1", "deployment": "app-v1"},
                 "canary": {"subset": "v2", "deployment": "app-v2"},
                 "steps": [{"weight": 10}, {"pause": {}}, {"weight": 50}, {"pause": {}}],
                 "notifications": [{"target": "team"}]},
        "status": {"phase": "WaitingForApproval", "step": 3,
                   "canary": {"subset": "v2", "deployment": "app-v2", "templateHash": "abc"}}})
}

/// A mocked API server: a valid token, allowed, and policy dev/app at canary `abc` step 3.
/// Returns the client and the method and path of every request it got.
fn api_server() -> (Client, Arc<Mutex<Vec<String>>>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let path = request.uri().path().to_string();
            if let Ok(mut l) = log.lock() {
                l.push(format!("{} {path}", request.method()));
            }
            let body = match path.as_str() {
                p if p.ends_with("/tokenreviews") => json!({"apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview", "spec": {},
                    "status": {"authenticated": true, "user": {"username": "ci"}}}),
                p if p.ends_with("/subjectaccessreviews") => status_json(true),
                p if p.ends_with("/rolloutpolicies/app") => policy_json(),
                _ => json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500}),
            };
            let code = if body["code"] == 500 { 500 } else { 200 };
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            if let Ok(r) = Response::builder().status(code).body(Body::from(bytes)) {
                send.send_response(r);
            }
        }
    });
    (Client::new(service, "default"), seen)
}

async fn call(client: Client, body: &str) -> (u16, Value) {
    let keys = SlackKeys::from_stores(Writer::default().as_reader(), Writer::default().as_reader(), "system");
    let Ok(approvals) = Approvals::new(client, "canaryd".into(), None, keys) else {
        panic!("no HTTP client")
    };
    let mut app = super::super::listener::router(approvals);
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
    let request = Request::post("/api/v1/namespaces/dev/rolloutpolicies/app/promote")
        .header("authorization", "Bearer t")
        .extension(ConnectInfo(peer))
        .body(axum::body::Body::from(body.to_string()));
    let Ok(request) = request else { panic!("a bad request") };
    let Ok(response) = tower::Service::call(&mut app, request).await;
    let code = response.status().as_u16();
    let bytes = crate::http::body::read_capped_body(response.into_body(), 1 << 20).await;
    let value = bytes.ok().and_then(|b| serde_json::from_slice(&b).ok());
    (code, value.unwrap_or_default())
}

#[tokio::test]
async fn a_stale_pin_is_refused_with_the_current_values_and_creates_nothing() {
    let (client, seen) = api_server();
    let (code, a) = call(client, r#"{"canary":"abc","step":1}"#).await;
    assert_eq!(code, 409, "{a}");
    assert_eq!(a["result"], "nothing-to-approve");
    assert_eq!(a["reason"], "WrongStep");
    assert_eq!(a["current"], json!({"canary": "abc", "step": 3}));
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(!seen.iter().any(|r| r.contains("rolloutcommands")), "{seen:?}");

    let (client, _) = api_server();
    let (code, a) = call(client, r#"{"canary":"old"}"#).await;
    assert_eq!((code, &a["reason"]), (409, &json!("WrongCanary")), "{a}");
    let (client, _) = api_server();
    let (code, a) = call(client, r#"{"step":"3"}"#).await;
    assert_eq!((code, &a["result"]), (400, &json!("bad-request")), "{a}");
}

#[tokio::test]
async fn a_current_pin_creates_the_command_bound_to_it() {
    let (client, seen) = api_server();
    // The create gets a 500 from the mock: what matters is that it was asked for.
    let (code, a) = call(client, r#"{"canary":"abc","step":3}"#).await;
    assert_eq!((code, &a["result"]), (502, &json!("error")), "{a}");
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        seen.iter()
            .any(|r| r == "POST /apis/canaryd.io/v1alpha1/namespaces/dev/rolloutcommands"),
        "{seen:?}"
    );
}
