//! The guarded read-modify-write against a mocked API server (tower-test): a replica that does not
//! lead sends no request at all, and a conflict's retry checks leadership again before re-reading.

use std::time::{Duration, Instant};

use http::{Request, Response};
use kube::client::Body;
use serde_json::json;
use tower_test::mock::{self, Handle};

use super::*;

type ApiServer = Handle<Request<Body>, Response<Body>>;

fn mocked() -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

fn hpa_json(rv: &str, min: i32) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "dev", "resourceVersion": rv},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": min, "maxReplicas": 10},
    }))
    .unwrap_or_default()
}

fn conflict() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "the object has been modified", "reason": "Conflict", "code": 409,
    }))
    .unwrap_or_default()
}

/// The next request, or None if none comes within a short while.
async fn next(server: &mut ApiServer) -> Option<(Request<Body>, mock::SendResponse<Response<Body>>)> {
    tokio::time::timeout(Duration::from_millis(200), server.next_request())
        .await
        .ok()
        .flatten()
}

fn answer(send: mock::SendResponse<Response<Body>>, code: u16, body: Vec<u8>) {
    let response = Response::builder().status(code).body(Body::from(body));
    send.send_response(response.expect("a valid response"));
}

fn bounds() -> Bounds {
    Bounds {
        min_replicas: Some(4),
        max_replicas: 10,
    }
}

#[tokio::test]
async fn a_replica_that_does_not_lead_sends_no_request() {
    let (client, mut server) = mocked();
    let standby = LeaderGuard::elected(Duration::from_secs(10)); // never acquired
    let written = set_bounds(&client, &standby, "dev", "web", bounds()).await;
    assert!(matches!(written, Err(ScaleError::NotLeader)), "{written:?}");
    let replicas = set_replicas(&client, &standby, "dev", "web", 3).await;
    assert!(matches!(replicas, Err(ScaleError::NotLeader)), "{replicas:?}");
    assert!(next(&mut server).await.is_none(), "a request was sent");
}

#[tokio::test]
async fn a_conflict_is_retried_while_leading_and_never_after() {
    let (client, mut server) = mocked();
    let guard = LeaderGuard::elected(Duration::from_secs(10));
    guard.renewed(Instant::now());
    let writer = {
        let (client, guard) = (client.clone(), guard.clone());
        tokio::spawn(async move { set_bounds(&client, &guard, "dev", "web", bounds()).await })
    };
    // Leading: read, write (409), read again, write (409) …
    let (get, send) = next(&mut server).await.expect("first read");
    assert_eq!(get.method(), "GET");
    answer(send, 200, hpa_json("1", 1));
    let (patch, send) = next(&mut server).await.expect("first write");
    assert_eq!(patch.method(), "PATCH");
    answer(send, 409, conflict());
    let (get, send) = next(&mut server).await.expect("re-read after the conflict");
    assert_eq!(get.method(), "GET");
    answer(send, 200, hpa_json("2", 1));
    let (patch, send) = next(&mut server).await.expect("second write");
    assert_eq!(patch.method(), "PATCH");
    // … and the renew deadline passes while the second write is answered with a conflict.
    guard.revoke();
    answer(send, 409, conflict());
    let written = writer.await.expect("the writer task");
    assert!(matches!(written, Err(ScaleError::NotLeader)), "{written:?}");
    assert!(
        next(&mut server).await.is_none(),
        "a request was sent after leadership ended"
    );
}
