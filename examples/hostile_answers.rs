//! Benchmark: memory while every analysed policy gets the largest Prometheus answer canaryd accepts,
//! all at once. A loopback server answers each query with just under MAX_ANSWER_BYTES: the most
//! series the asking rollout's own workloads may have (MAX_KEPT_PER_WORKLOAD each, every label the
//! judge keeps, values at their longest), then other series up to MAX_SERIES. POLICIES clients (one
//! per policy with a plain address, as the engine makes them) ask at once, ROUNDS times, through the
//! daemon's own client and parser, keeping what the engine keeps for a grouped query.
//! Prints the peak RSS this adds, against the bound (half of deploy/'s 256 MiB limit), and for
//! comparison the same answers parsed the old way (a `serde_json::Value` tree each, in parallel).
//! Run it with `scripts/bench memory`. It measures the client and parser path in this process, not a
//! whole daemon.

use std::time::Duration;

use canaryd::analysis::templates::Selection;
use canaryd::prometheus::client::{Keep, MAX_ANSWER_BYTES, MAX_KEPT_PER_WORKLOAD, MAX_SERIES, PromClient};
use futures::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICIES: usize = 50;
const NAMESPACE: &str = "tenant-namespace-with-a-name-of-the-longest-length-kubernetes-ok";
const CANARY: &str = "app-v2";
const STABLE: &str = "app-v1";
const ROUNDS: usize = 3;
/// Half of deploy/deployment.yaml's memory limit (256Mi).
const BOUND_MIB: f64 = 128.0;

/// The largest answer accepted: the asking rollout's workloads at their most series, every kept
/// label at its longest, then other series padded to just under the byte cap.
fn largest_answer() -> String {
    let series = |workload: &str, code: &str, le: &str, i: usize| {
        format!(
            r#"{{"metric":{{"destination_workload":"{workload}","destination_workload_namespace":"{NAMESPACE}","response_code":"{code}","le":"{le}"}},"value":[1717459200.123,"{i}.5"]}}"#
        )
    };
    let long = |prefix: &str, i: usize| format!("{prefix}{i:06}{}", "9".repeat(240));
    let mut parts: Vec<String> = Vec::with_capacity(MAX_SERIES);
    for i in 0..2 * MAX_KEPT_PER_WORKLOAD {
        let workload = if i < MAX_KEPT_PER_WORKLOAD { CANARY } else { STABLE };
        parts.push(series(workload, &long("", i), &long("1", i), i));
    }
    let used: usize = parts.iter().map(|p| p.len() + 1).sum();
    let others = MAX_SERIES - parts.len();
    let base = series("workload-000000-", "503", "+Inf", 0).len() + 1;
    let pad = (MAX_ANSWER_BYTES - 200 - used) / others - base - 6; // 6: the longest sample number
    for i in parts.len()..MAX_SERIES {
        parts.push(series(
            &format!("workload-{i:06}-{}", "x".repeat(pad)),
            "503",
            "+Inf",
            i,
        ));
    }
    let body = format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
        parts.join(",")
    );
    assert!(body.len() <= MAX_ANSWER_BYTES, "{} bytes", body.len());
    body
}

fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn serve(answer: &'static [u8]) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 8192];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(answer).await;
            });
        }
    });
    Ok(address)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let answer: &'static [u8] = Box::leak(largest_answer().into_bytes().into_boxed_slice());
    let address = serve(answer).await?;
    let clients = (0..POLICIES)
        .map(|_| PromClient::new(&address, None, None, Duration::from_secs(30)))
        .collect::<Result<Vec<_>, _>>()?;
    let baseline = vm_kib("VmRSS:");
    let mut selection = Selection::default();
    selection.add(NAMESPACE, &[STABLE, CANARY]);
    let mut kept = 0;
    for _ in 0..ROUNDS {
        // Held together, as a tick holds its answers until every rollout is judged.
        let answers = join_all(
            clients
                .iter()
                .map(|c| c.query_kept("sum(x)", Keep::Selected(&selection))),
        )
        .await;
        for a in &answers {
            kept += a.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?.len();
        }
    }
    let peak = vm_kib("VmHWM:");
    println!(
        "hostile Prometheus answers: {POLICIES} policies × {ROUNDS} rounds, each answer {} bytes / {MAX_SERIES} series ({kept} series kept)",
        answer.len()
    );
    println!(
        "  peak RSS {:.1} MiB (baseline {:.1} MiB, +{:.1} MiB); bound {BOUND_MIB:.0} MiB: {}",
        mib(peak),
        mib(baseline),
        mib(peak.saturating_sub(baseline)),
        if mib(peak) < BOUND_MIB { "met" } else { "NOT met" }
    );
    // The parse this replaced: a Value tree per answer, all in flight at once.
    let trees = join_all((0..POLICIES).map(|_| async move {
        tokio::task::yield_now().await;
        serde_json::from_slice::<serde_json::Value>(answer)
    }))
    .await;
    let old_peak = vm_kib("VmHWM:");
    println!(
        "  for comparison, {} answers as serde_json::Value trees at once: peak RSS {:.1} MiB",
        trees.iter().filter(|t| t.is_ok()).count(),
        mib(old_peak)
    );
    Ok(())
}
