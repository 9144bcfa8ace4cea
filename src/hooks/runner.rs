//! The webhook runner: calls the hooks the planner wants, off the reconcile path, each with its own
//! timeout, and keeps the newest answer of each hook for the next reconcile (waking the policy when
//! one arrives). Fire-and-forget calls (event, post-rollout) go out in order, one policy's at a time.
//! Answers live in memory: after a restart the gates are simply asked again.
//!
//! Only the leader calls hooks, of every type: `event` and `post-rollout` have effects, and a gate
//! is a tenant URL too (it may count calls or page someone), whose answer only a leader's plan
//! reads. Leadership is checked immediately before each HTTP request; a call a non-leader skips
//! gets no answer, so the next leader asks again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedSender, unbounded};
use jiff::Timestamp;
use tracing::{debug, warn};

use crate::fence::LeaderGuard;
use crate::resources::webhook::{Bearer, Credential, HookAnswer, HookCall};

/// How often the runner looks for due calls.
const TICK: Duration = Duration::from_millis(100);

/// A policy, by namespace and name.
pub type Key = (String, String);

#[derive(Default)]
struct Policy {
    wanted: Vec<HookCall>,
    /// By hook name.
    answers: BTreeMap<String, HookAnswer>,
    in_flight: HashSet<String>,
}

pub struct Runner {
    policies: Mutex<HashMap<Key, Policy>>,
    queues: Mutex<HashMap<Key, UnboundedSender<HookCall>>>,
    http: reqwest::Client,
    /// For hooks with `disableTLS` (Flagger's meaning: the certificate is not verified).
    unverified: reqwest::Client,
    wake: UnboundedSender<Key>,
    leader: LeaderGuard,
}

impl Runner {
    /// `connect_timeout`: a request that could not be sent by then is given up, so none lands long
    /// after the leadership check made just before it.
    pub fn new(wake: UnboundedSender<Key>, leader: LeaderGuard, connect_timeout: Duration) -> crate::Result<Self> {
        let client = |verify: bool| {
            // A hook's answer is its own status code, never a redirect target's.
            crate::http::client::builder(connect_timeout)
                .tls_danger_accept_invalid_certs(!verify)
                .build()
                .map_err(|e| crate::Error::Action(format!("webhook client: {e}")))
        };
        Ok(Self {
            policies: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            http: client(true)?,
            unverified: client(false)?,
            wake,
            leader,
        })
    }

    fn policies(&self) -> MutexGuard<'_, HashMap<Key, Policy>> {
        self.policies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hooks a policy wants asked now; replaces what it wanted before (empty: none).
    pub fn want(&self, key: Key, calls: Vec<HookCall>) {
        let mut policies = self.policies();
        if calls.is_empty() {
            // Answers are kept while the rollout may come back to the gate; only a policy with no
            // hooks at all is forgotten.
            if let Some(p) = policies.get_mut(&key) {
                p.wanted.clear();
            }
            return;
        }
        policies.entry(key).or_default().wanted = calls;
    }

    /// Forget a policy (deleted).
    pub fn forget(&self, key: &Key) {
        self.policies().remove(key);
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// The newest answer of each of a policy's hooks.
    pub fn latest(&self, key: &Key) -> Vec<HookAnswer> {
        self.policies()
            .get(key)
            .map(|p| p.answers.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Send calls that nobody waits for, after those fired before for the same policy.
    pub fn fire(self: &Arc<Self>, key: &Key, calls: Vec<HookCall>) {
        if calls.is_empty() {
            return;
        }
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let queue = queues.entry(key.clone()).or_insert_with(|| {
            let (tx, mut rx) = unbounded::<HookCall>();
            let runner = self.clone();
            let key = key.clone();
            tokio::spawn(async move {
                while let Some(call) = rx.next().await {
                    let Some((ok, detail)) = runner.call(&call).await else {
                        warn!(policy = %key.1, hook = %call.hook.name, "{} webhook not sent: not the leader", call.hook.type_);
                        continue;
                    };
                    if ok {
                        debug!(policy = %key.1, hook = %call.hook.name, "{} webhook: {detail}", call.hook.type_);
                    } else {
                        warn!(policy = %key.1, hook = %call.hook.name, "{} webhook failed: {detail}", call.hook.type_);
                    }
                }
            });
            tx
        });
        for call in calls {
            // The queue's task ends only with the runtime.
            let _ = queue.unbounded_send(call);
        }
    }

    /// Run forever: every tick, start the calls that are due.
    pub async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !self.leader.may_write() {
                continue;
            }
            let now = Timestamp::now();
            let mut due = Vec::new();
            for (key, p) in self.policies().iter_mut() {
                for call in &p.wanted {
                    if p.in_flight.contains(&call.hook.name) || !is_due(call, p.answers.get(&call.hook.name), now) {
                        continue;
                    }
                    p.in_flight.insert(call.hook.name.clone());
                    due.push((key.clone(), call.clone()));
                }
            }
            for (key, call) in due {
                let runner = self.clone();
                tokio::spawn(async move { runner.ask(key, call).await });
            }
        }
    }

    async fn ask(&self, key: Key, call: HookCall) {
        let answer = self.call(&call).await;
        let mut policies = self.policies();
        let Some(p) = policies.get_mut(&key) else {
            return;
        };
        p.in_flight.remove(&call.hook.name);
        // Not sent (not the leader): no answer, so it is asked again when leading.
        let Some((ok, detail)) = answer else {
            return;
        };
        debug!(policy = %key.1, hook = %call.hook.name, ok, "{} webhook: {detail}", call.hook.type_);
        let before = p
            .answers
            .get(&call.hook.name)
            .filter(|a| a.binding == call.binding)
            .map_or(0, |a| a.failures);
        p.answers.insert(
            call.hook.name.clone(),
            HookAnswer {
                hook: call.hook.name.clone(),
                binding: call.binding.clone(),
                ok,
                detail,
                failures: if ok { 0 } else { before + 1 },
                at: Timestamp::now(),
            },
        );
        drop(policies);
        // The controller is gone only at shutdown.
        let _ = self.wake.unbounded_send(key);
    }

    /// POST the payload, retried up to `retries` times as Flagger's client does; (200-202, what it
    /// said), or None when not sent because this replica does not lead.
    async fn call(&self, call: &HookCall) -> Option<(bool, String)> {
        let token = match &call.credential {
            Credential::None => None,
            Credential::Bearer(token) => Some(token),
            Credential::Refused(why) => return Some((false, why.clone())),
        };
        let mut retried = 0;
        loop {
            // Immediately before each request: past its renew deadline, a replica sends nothing.
            if !self.leader.may_write() {
                return None;
            }
            let (ok, detail, retry_after) = self.attempt(call, token).await;
            let Some(wait) = retry_after.filter(|_| retried < call.hook.retries) else {
                let detail = match retried {
                    0 => detail,
                    n => format!("{detail} (after {n} retries)"),
                };
                return Some((ok, detail));
            };
            tokio::time::sleep(wait.unwrap_or_else(|| backoff(retried))).await;
            retried += 1;
        }
    }

    /// One request: (200-202, what it said, whether to retry and after how long if it said).
    async fn attempt(&self, call: &HookCall, token: Option<&Bearer>) -> (bool, String, Option<Option<Duration>>) {
        let http = if call.hook.disable_tls {
            &self.unverified
        } else {
            &self.http
        };
        let mut request = http.post(&call.hook.url).timeout(call.hook.timeout).json(&call.payload);
        if let Some(token) = token {
            request = request.bearer_auth(&token.0);
        }
        match request.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry = (status == 429 || (status >= 500 && status != 501)).then(|| retry_after(&resp));
                ((200..=202).contains(&status), format!("HTTP {status}"), retry)
            }
            Err(e) if e.is_timeout() => (
                false,
                format!("timed out after {}", humantime::format_duration(call.hook.timeout)),
                Some(None),
            ),
            Err(e) if e.is_connect() => (false, "connection failed".into(), Some(None)),
            Err(e) => (false, format!("request failed: {}", redact(e)), None),
        }
    }
}

/// Flagger's client (go-retryablehttp): 1 s, 2 s, 4 s … between attempts, at most 30 s.
fn backoff(retried: u32) -> Duration {
    Duration::from_secs(1u64 << retried.min(5)).min(MAX_BACKOFF)
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A `Retry-After` in seconds, at most 30 s.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    crate::http::client::retry_after(resp.headers(), MAX_BACKOFF)
}

/// Never echo a URL's query (it may carry a token) in status or logs.
fn redact(e: reqwest::Error) -> String {
    let text = e.without_url().to_string();
    text.chars().take(200).collect()
}

/// Asked when there is no answer for this binding yet, or when the last one is a no (or the hook
/// repeats) and its interval has passed.
fn is_due(call: &HookCall, answer: Option<&HookAnswer>, now: Timestamp) -> bool {
    let Some(a) = answer.filter(|a| a.binding == call.binding) else {
        return true;
    };
    if a.ok && !call.repeat {
        return false;
    }
    crate::plan::duration_between(a.at, now) >= call.hook.interval
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod flagger_tests;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::resources::webhook::Payload;

    /// A loopback receiver that answers 200 to every request and counts them.
    async fn receiver() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    seen.fetch_add(1, Ordering::SeqCst);
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        (url, count)
    }

    fn call(url: &str, type_: &str) -> HookCall {
        HookCall {
            hook: serde_json::from_value(serde_json::json!({"name": type_, "type": type_, "url": url})).unwrap(),
            binding: "b".into(),
            repeat: false,
            payload: Payload::default(),
            credential: Credential::None,
        }
    }

    async fn until(count: &AtomicUsize, n: usize) {
        for _ in 0..300 {
            if count.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} of {n} calls arrived", count.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn past_its_renew_deadline_a_replica_calls_no_hook_of_any_kind() {
        let (url, count) = receiver().await;
        let (wake, _woken) = unbounded();
        let leader = LeaderGuard::elected(Duration::from_millis(400));
        leader.renewed(Instant::now());
        let runner = Arc::new(Runner::new(wake, leader, Duration::from_secs(1)).unwrap());
        tokio::spawn(runner.clone().run());
        let key: Key = ("ns".into(), "p".into());
        runner.want(key.clone(), vec![call(&url, "confirm-rollout")]);
        runner.fire(&key, vec![call(&url, "event")]);
        until(&count, 2).await;
        for _ in 0..100 {
            if !runner.latest(&key).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(runner.latest(&key).len(), 1, "the gate's answer is kept");

        tokio::time::sleep(Duration::from_millis(500)).await; // past the renew deadline
        runner.want(key.clone(), vec![call(&url, "confirm-promotion")]);
        runner.fire(&key, vec![call(&url, "post-rollout"), call(&url, "event")]);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2, "no call after the deadline");
        assert!(
            runner.latest(&key).iter().all(|a| a.hook != "confirm-promotion"),
            "a call not made has no answer: the next leader asks again"
        );
    }
}
