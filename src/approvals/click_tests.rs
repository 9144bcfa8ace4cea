//! The Slack handler against a mocked API server (tower-test) and a stand-in `response_url`: a
//! verified click is answered before the API server has answered anything, a forged one costs no
//! request, and the outcome arrives at `response_url`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Request, Response};
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use sha2::Sha256;
use tower_test::mock::{self, Handle};

use super::*;
use crate::approvals::api::tests::policy_json;
use crate::approvals::keys::SlackKeys;
use crate::cache::slim::Decoded;
use crate::resources::target::NotificationTarget;

type ApiServer = Handle<Request<Body>, Response<Body>>;
const SECRET: &str = "team-signing-secret";

/// A stand-in Slack: what was posted to `/respond`.
async fn slack_stand_in() -> (String, Arc<Mutex<Vec<Value>>>) {
    let posted = Arc::new(Mutex::new(Vec::new()));
    let log = posted.clone();
    let app = axum::Router::new().route(
        "/respond",
        axum::routing::post(move |body: axum::Json<Value>| async move {
            if let Ok(mut l) = log.lock() {
                l.push(body.0);
            }
            "ok"
        }),
    );
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        panic!("no port")
    };
    let url = listener.local_addr().map(|a| format!("http://{a}")).unwrap_or_default();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, posted)
}

/// The listener with target `team` (signing secret [`SECRET`], allows U1) known from memory.
fn approvals(client: Client, slack_url: &str) -> Approvals {
    let target: Result<NotificationTarget, _> = serde_json::from_value(json!({
        "apiVersion": "canaryd.io/v1alpha1", "kind": "NotificationTarget", "metadata": {"name": "team"},
        "spec": {"slack": {"channel": "C1", "apiUrl": format!("{slack_url}/api"), "allowedUsers": ["U1"],
                           "signingSecret": {"name": "slack", "key": "signing"}}}}));
    let secret: Result<Secret, _> = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "slack", "namespace": "system"},
        "data": {"signing": hex_free_base64(SECRET)}}));
    let (Ok(target), Ok(secret)) = (target, secret) else {
        panic!("bad fixtures")
    };
    let mut targets = Writer::default();
    targets.apply_watcher_event(&Event::Init);
    targets.apply_watcher_event(&Event::InitApply(Decoded::Ok(target)));
    targets.apply_watcher_event(&Event::InitDone);
    let mut secrets = Writer::default();
    secrets.apply_watcher_event(&Event::Init);
    secrets.apply_watcher_event(&Event::InitApply(secret));
    secrets.apply_watcher_event(&Event::InitDone);
    let keys = SlackKeys::from_stores(targets.as_reader(), secrets.as_reader(), "system");
    // The writers must outlive the test: a dropped writer makes the stores unready.
    std::mem::forget((targets, secrets));
    match Approvals::new(client, "canaryd".into(), None, keys) {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    }
}

fn hex_free_base64(text: &str) -> String {
    use k8s_openapi::ByteString;
    serde_json::to_value(ByteString(text.as_bytes().to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A click by U1 on Approve of dev/app at canary abc step 3, signed with `secret`.
fn click_request(slack_url: &str, secret: &str) -> Request<axum::body::Body> {
    let value = json!({"ns": "dev", "policy": "app", "canary": "abc", "step": 3, "target": "team"});
    let payload = json!({"type": "block_actions", "user": {"id": "U1", "username": "alice"},
        "response_url": format!("{slack_url}/respond"),
        "actions": [{"action_id": "canaryd:promote", "value": value.to_string()}]});
    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap_or_default();
    let ts = Timestamp::now().as_second().to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| panic!("hmac"));
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
    let request = Request::post("/slack/interactivity")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", sig)
        .body(axum::body::Body::from(body));
    request.unwrap_or_else(|_| panic!("a bad request"))
}

async fn send(app: Approvals, request: Request<axum::body::Body>) -> u16 {
    let mut router = super::super::listener::router(app);
    let Ok(response) = tower::Service::call(&mut router, request).await;
    response.status().as_u16()
}

async fn next(server: &mut ApiServer) -> Option<(Request<Body>, mock::SendResponse<Response<Body>>)> {
    tokio::time::timeout(Duration::from_secs(2), server.next_request())
        .await
        .ok()
        .flatten()
}

fn reply(send: mock::SendResponse<Response<Body>>, code: u16, body: &Value) {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    if let Ok(r) = Response::builder().status(code).body(Body::from(bytes)) {
        send.send_response(r);
    }
}

#[tokio::test]
async fn a_verified_click_is_answered_before_the_api_server_is_asked() {
    let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let (slack_url, posted) = slack_stand_in().await;
    let app = approvals(Client::new(service, "default"), &slack_url);
    // Answered while the API server has not answered (nor even been asked) anything.
    let code = tokio::time::timeout(Duration::from_secs(1), send(app, click_request(&slack_url, SECRET))).await;
    assert_eq!(code.ok(), Some(200));
    // Then the click is carried out: the policy, the command, its outcome.
    let Some((get, send_policy)) = next(&mut server).await else {
        panic!("no policy read")
    };
    assert_eq!(
        get.uri().path(),
        "/apis/canaryd.io/v1alpha1/namespaces/dev/rolloutpolicies/app"
    );
    reply(send_policy, 200, &policy_json());
    let Some((create, send_created)) = next(&mut server).await else {
        panic!("no create")
    };
    assert_eq!(create.method(), "POST");
    let mut command = json!({"apiVersion": "canaryd.io/v1alpha1", "kind": "RolloutCommand",
        "metadata": {"name": "app-slack-promote-x", "namespace": "dev"},
        "spec": {"policy": "app", "command": "promote", "canary": "abc", "step": 3,
                 "requestedBy": "canaryd", "onBehalfOf": "slack:U1 (alice)"}});
    reply(send_created, 201, &command);
    command["status"] = json!({"outcome": "Acted", "reason": "Acted", "message": "Progressing: step 4",
                               "at": "2026-01-01T00:00:00Z"});
    let Some((_, send_outcome)) = next(&mut server).await else {
        panic!("no outcome read")
    };
    reply(send_outcome, 200, &command);
    let mut answer = None;
    for _ in 0..40 {
        answer = posted.lock().ok().and_then(|p| p.first().cloned());
        if answer.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(answer) = answer else {
        panic!("nothing posted to response_url")
    };
    assert_eq!(answer["replace_original"], false);
    let text = answer["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("Done: promote of dev/app by <@U1>"), "{text}");
}

#[tokio::test]
async fn a_forged_click_costs_no_request_and_gets_no_answer() {
    let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let (slack_url, posted) = slack_stand_in().await;
    let app = approvals(Client::new(service, "default"), &slack_url);
    assert_eq!(send(app, click_request(&slack_url, "guessed")).await, 401);
    let request = tokio::time::timeout(Duration::from_millis(300), server.next_request()).await;
    assert!(!matches!(request, Ok(Some(_))), "a forged click reached the API server");
    assert!(posted.lock().map(|p| p.is_empty()).unwrap_or(false));
}
