//! Authentication against a mocked API server (tower-test): reviews are cached, failures are
//! throttled per source before any review, and an oversized review answer is refused.

use std::net::{IpAddr, Ipv4Addr};

use axum::http::{HeaderValue, Request, Response};
use kube::client::Body;
use serde_json::json;
use tower_test::mock::{self, Handle};

use super::*;

type ApiServer = Handle<Request<Body>, Response<Body>>;

fn mocked() -> (Auth, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Auth::new(Client::new(service, "default")), handle)
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        h.insert(header::AUTHORIZATION, v);
    }
    h
}

const ALICE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const MALLORY: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66));

/// Answer the next request (which must come within a short while) with `body`; returns its path.
async fn answer_next(server: &mut ApiServer, body: Vec<u8>) -> Option<String> {
    let (request, send) = tokio::time::timeout(Duration::from_secs(2), server.next_request())
        .await
        .ok()??;
    let response = Response::builder().status(201).body(Body::from(body)).ok()?;
    send.send_response(response);
    Some(request.uri().path().to_string())
}

/// No request comes within a short while.
async fn silent(server: &mut ApiServer) -> bool {
    tokio::time::timeout(Duration::from_millis(200), server.next_request())
        .await
        .is_err()
}

fn token_review(user: Option<&str>) -> Vec<u8> {
    let status = match user {
        Some(u) => json!({"authenticated": true, "user": {"username": u, "groups": ["team"]}}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    serde_json::to_vec(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {}, "status": status}))
    .unwrap_or_default()
}

#[tokio::test]
async fn an_accepted_token_is_reviewed_once_while_cached() {
    let (auth, mut server) = mocked();
    let first = tokio::spawn(async move {
        let user = auth.authenticate(&bearer("good"), ALICE).await;
        (auth, user)
    });
    let path = answer_next(&mut server, token_review(Some("ci"))).await;
    assert_eq!(path.as_deref(), Some("/apis/authentication.k8s.io/v1/tokenreviews"));
    let Ok((auth, user)) = first.await else {
        panic!("the task failed")
    };
    assert_eq!(user.ok().and_then(|u| u.username).as_deref(), Some("ci"));
    let again = auth.authenticate(&bearer("good"), ALICE).await;
    assert_eq!(again.ok().and_then(|u| u.username).as_deref(), Some("ci"));
    assert!(silent(&mut server).await, "a cached token was reviewed again");
}

#[tokio::test]
async fn failures_are_throttled_per_source_before_any_review() {
    let (auth, mut server) = mocked();
    let auth = std::sync::Arc::new(auth);
    let caller = auth.clone();
    let first = tokio::spawn(async move { caller.authenticate(&bearer("bad-0"), MALLORY).await });
    answer_next(&mut server, token_review(None)).await;
    assert_eq!(first.await.ok(), Some(Err(Refused::BadToken)));
    // The same bad token again: refused from the cache, no review; each counts as a failure.
    for _ in 1..MAX_FAILURES {
        assert_eq!(
            auth.authenticate(&bearer("bad-0"), MALLORY).await,
            Err(Refused::BadToken)
        );
    }
    assert!(silent(&mut server).await, "a cached refusal was reviewed again");
    // Over the budget: a new token from that address is not reviewed at all.
    let throttled = auth.authenticate(&bearer("bad-1"), MALLORY).await;
    assert!(
        matches!(throttled, Err(Refused::TooManyFailures(s)) if s > 0 && s <= 60),
        "{throttled:?}"
    );
    assert!(silent(&mut server).await, "a throttled source cost a review");
    // Another address still gets its review; a missing token costs nothing and counts nothing.
    assert_eq!(auth.authenticate(&HeaderMap::new(), ALICE).await, Err(Refused::NoToken));
    let caller = auth.clone();
    let other = tokio::spawn(async move { caller.authenticate(&bearer("good"), ALICE).await });
    answer_next(&mut server, token_review(Some("ci"))).await;
    assert!(matches!(other.await, Ok(Ok(_))));
}

#[tokio::test]
async fn a_huge_token_review_is_refused_and_not_held() {
    let (auth, mut server) = mocked();
    let call = tokio::spawn(async move { auth.authenticate(&bearer("good"), ALICE).await });
    // 10 MB of a "valid" review: the answer is refused, nobody is let in.
    let mut huge = token_review(Some("ci"));
    huge.truncate(huge.len() - 1);
    huge.extend_from_slice(b",\"pad\":\"");
    huge.resize(10 * 1024 * 1024, b'x');
    huge.extend_from_slice(b"\"}");
    answer_next(&mut server, huge).await;
    let refused = call.await.ok();
    let Some(Err(Refused::Unavailable(why))) = refused else {
        panic!("a 10 MB TokenReview was accepted: {refused:?}")
    };
    assert!(
        why.contains("TokenReview failed") && why.contains("larger than 262144 bytes"),
        "{why}"
    );
}

#[tokio::test]
async fn access_reviews_are_cached_allowed_and_denied() {
    let (auth, mut server) = mocked();
    let auth = std::sync::Arc::new(auth);
    let user = UserInfo {
        username: Some("ci".into()),
        ..Default::default()
    };
    let sar = |allowed: bool| {
        serde_json::to_vec(
            &json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {}, "status": {"allowed": allowed, "reason": if allowed { "" } else { "no rule" }}}),
        )
        .unwrap_or_default()
    };
    for (ns, allowed, want) in [
        ("dev", true, Access::Allowed),
        ("prod", false, Access::Denied("no rule".into())),
    ] {
        let (caller, u) = (auth.clone(), user.clone());
        let call = tokio::spawn(async move { caller.authorize(&u, ns).await });
        let path = answer_next(&mut server, sar(allowed)).await;
        assert_eq!(
            path.as_deref(),
            Some("/apis/authorization.k8s.io/v1/subjectaccessreviews")
        );
        assert_eq!(call.await.ok(), Some(Ok(want.clone())));
        assert_eq!(auth.authorize(&user, ns).await, Ok(want));
        assert!(silent(&mut server).await, "a cached review was made again");
    }
}

#[test]
fn caches_and_failure_maps_stay_bounded() {
    let now = Instant::now();
    let mut cache = TtlCache::new();
    for i in 0..CACHE_ENTRIES + 10 {
        cache.put(i, (), DENIED_TTL, now);
    }
    assert_eq!(cache.entries.len(), CACHE_ENTRIES);
    // Expired entries make room.
    cache.put(usize::MAX, (), DENIED_TTL, now + DENIED_TTL);
    assert_eq!(cache.entries.len(), 1);
    let mut failures = Failures {
        by_source: HashMap::new(),
    };
    for i in 0..(TRACKED_SOURCES as u32 + 100) {
        failures.failed(IpAddr::from(i.to_be_bytes()), now);
    }
    assert!(failures.by_source.len() <= TRACKED_SOURCES + 1);
    // The untracked share one budget: they are throttled together.
    assert!(failures.throttled(IpAddr::from([250, 0, 0, 1]), now).is_some());
}
