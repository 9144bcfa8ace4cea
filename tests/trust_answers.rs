//! Hostile answers from the receivers a tenant or the platform points canaryd at, on the bed (the
//! daemon a real process): hooks answering 200 with a body that never ends are not read (the gate
//! passes at once, no memory, every connection closed), and a Slack Web API answer is read up to
//! 64 KiB: one byte more and it is refused.

mod fixture;
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::{Seed, ensure, seed, start_daemon};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(30);
const POLICY: &str = "istio-test";
const VS: &str = "istio-test-vs";
/// What each hook announces and would send.
const HOOK_BODY: u64 = 100 * 1024 * 1024;
/// The Slack answers canaryd reads (notify ANSWER_LIMIT).
const SLACK_LIMIT: usize = 64 * 1024;

/// One answered request: its path, when it came, how many body bytes left this side before the
/// daemon hung up, and when it hung up (None: still open).
#[derive(Clone, Debug)]
struct Answered {
    path: String,
    at: Instant,
    sent: Arc<AtomicU64>,
    closed: Arc<Mutex<Option<Instant>>>,
}

type Log = Arc<Mutex<Vec<Answered>>>;

fn log(l: &Log) -> std::sync::MutexGuard<'_, Vec<Answered>> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// The request line's path; headers and body are read and dropped.
async fn request(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    reader.read_line(&mut line).await.ok()?;
    let path = line.split(' ').nth(1)?.to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body).await.ok()?;
    Some(path)
}

/// `/hook/…`: 200 announcing HOOK_BODY bytes, then bytes until the daemon hangs up.
/// `/slack-at/…` and `/slack-over/…`: a Slack `ok` answer of exactly 64 KiB, or one byte more.
async fn answer(conn: TcpStream, l: Log) -> Option<()> {
    let mut reader = BufReader::new(conn);
    let path = request(&mut reader).await?;
    let mut out = reader.into_inner();
    let entry = Answered {
        path: path.clone(),
        at: Instant::now(),
        sent: Arc::default(),
        closed: Arc::default(),
    };
    log(&l).push(entry.clone());
    let head = |len: u64| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
        )
    };
    if path.starts_with("/hook/") {
        out.write_all(head(HOOK_BODY).as_bytes()).await.ok()?;
        let chunk = vec![b'x'; 64 * 1024];
        while entry.sent.load(Ordering::Relaxed) < HOOK_BODY {
            if out.write_all(&chunk).await.is_err() {
                break;
            }
            entry.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        *entry.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        return Some(());
    }
    let size = if path.starts_with("/slack-over/") {
        SLACK_LIMIT + 1
    } else {
        SLACK_LIMIT
    };
    let mut body = br#"{"ok":true,"channel":"C42","ts":"1700000000.000001","pad":""#.to_vec();
    body.resize(size - 2, b'x');
    body.extend_from_slice(br#""}"#);
    out.write_all(head(body.len() as u64).as_bytes()).await.ok()?;
    out.write_all(&body).await.ok()?;
    out.shutdown().await.ok()
}

async fn stand_in() -> Result<(String, Log)> {
    let l = Log::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let logged = l.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(answer(conn, logged.clone()));
        }
    });
    Ok((base, l))
}

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// The daemon's peak resident memory so far (VmHWM), in MiB.
fn peak_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmHWM")?;
    Ok(kib / 1024.0)
}

/// Every gate, the repeating rollout hook and the event hook answer 200 and then 100 MB that never
/// come to an end within the hooks' 30 s timeout. The daemon takes the 200 and hangs up: the gates
/// pass at once (the rollout is at 50 % within seconds, not timeouts), the rollout hook is asked
/// every second, every connection is closed within a second of its answer, and the daemon's peak
/// memory grows by less than 16 MiB over twenty-odd such answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_answering_endless_bodies_are_not_read_and_cost_no_memory() -> Result<()> {
    let seed = seed("ans-hook").await?;
    let (base, l) = stand_in().await?;
    let mut daemon = start_daemon(&seed.ns).await?;
    let run = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = peak_mib(daemon.pid())?;
        let mut hooks = String::from("  webhooks:\n");
        for type_ in [
            "confirm-rollout",
            "pre-rollout",
            "confirm-traffic-increase",
            "rollout",
            "event",
        ] {
            hooks.push_str(&format!(
                "    - {{name: {type_}, type: {type_}, url: '{base}/hook/{type_}', interval: 1s, timeout: 30s}}\n"
            ));
        }
        let applied = Instant::now();
        seed.apply(&(seed.policy_yaml().replace("    - pause: {duration: 2s}\n", "") + &hooks))
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], Duration::from_secs(15))
            .await
            .context("the gates did not pass before their hooks' timeout")?;
        let to_half = applied.elapsed();
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        let rollout_calls = || log(&l).iter().filter(|a| a.path == "/hook/rollout").count();
        support::wait_until("twenty rollout hook calls", Duration::from_secs(60), async || {
            Ok((rollout_calls() >= 20).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = peak_mib(daemon.pid())?;
        let answered = log(&l).clone();
        let now = Instant::now();
        let mut open = Vec::new();
        let mut slow = Vec::new();
        let mut most = 0;
        for a in &answered {
            most = most.max(a.sent.load(Ordering::Relaxed));
            match *a.closed.lock().unwrap_or_else(|e| e.into_inner()) {
                None if now - a.at > Duration::from_secs(1) => open.push(a.path.clone()),
                Some(at) if at - a.at > Duration::from_secs(1) => slow.push((a.path.clone(), at - a.at)),
                _ => {}
            }
        }
        eprintln!(
            "{} hook answers of {} MiB announced; 50 % after {to_half:?}; the most that left here before a hang-up: {:.1} MiB; daemon peak {before:.1} → {after:.1} MiB",
            answered.len(),
            HOOK_BODY >> 20,
            most as f64 / 1048576.0
        );
        ensure(open.is_empty(), format!("connections the daemon left open: {open:?}"))?;
        ensure(slow.is_empty(), format!("connections closed late: {slow:?}"))?;
        ensure(
            after - before < 16.0,
            format!("the daemon's peak memory grew from {before:.1} to {after:.1} MiB"),
        )?;
        Ok::<_, anyhow::Error>(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))?;
    daemon.kill()
}

/// Two Slack bot targets whose Web API answers `ok` with a body of exactly 64 KiB, and one byte
/// more. The first is taken (the rollout's message is recorded in status); the second is refused
/// at the cap: asked, nothing recorded, the failure logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_answer_one_byte_over_64_kib_is_refused() -> Result<()> {
    let seed = seed("ans-slack").await?;
    let (base, l) = stand_in().await?;
    targets(&seed, &base).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let policy = seed.policy_yaml() + "  notifications:\n    - target: ans-at\n    - target: ans-over\n";
        seed.apply(&policy).await?;
        let recorded = |p: &RolloutPolicy, target: &str| {
            p.status
                .as_ref()
                .and_then(|s| s.notifications.iter().find(|n| n.target == target))
                .and_then(|n| n.slack.clone())
        };
        seed.wait_policy(POLICY, "the 64 KiB answer's message recorded", T, |p| {
            recorded(p, "ans-at").is_some()
        })
        .await?;
        support::wait_until("the over-cap target asked twice", T, async || {
            Ok((log(&l).iter().filter(|a| a.path.starts_with("/slack-over/")).count() >= 2).then_some(()))
        })
        .await?;
        let p = seed.policy(POLICY).await?;
        ensure(
            recorded(&p, "ans-over").is_none(),
            format!(
                "an answer over 64 KiB was taken: {:?}",
                p.status.map(|s| s.notifications)
            ),
        )?;
        let text = std::fs::read_to_string(daemon.stderr_log())?;
        ensure(
            text.lines()
                .any(|l| l.contains("notification failed") && l.contains("ans-over")),
            "the refusal is not logged",
        )?;
        Ok::<_, anyhow::Error>(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

/// A bot token and two Slack targets, at the stand-in's `/slack-at/api` and `/slack-over/api`.
async fn targets(seed: &Seed, base: &str) -> Result<()> {
    fixture::daemon_kubeconfig().await?; // creates canaryd-system
    let target = |name: &str, prefix: &str| {
        format!(
            "---\napiVersion: canaryd.io/v1alpha1\nkind: NotificationTarget\nmetadata: {{name: {name}}}\n\
             spec: {{namespaceSelector: {{}}, slack: {{botToken: {{name: ans-slack, key: token}}, channel: C42, apiUrl: '{base}/{prefix}/api'}}}}\n"
        )
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: ans-slack, namespace: canaryd-system}}\n\
         stringData: {{token: xoxb-answers}}\n{}{}",
        target("ans-at", "slack-at"),
        target("ans-over", "slack-over")
    );
    seed.apply(&yaml).await
}
