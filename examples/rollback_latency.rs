//! Benchmark: breach → rollback latency over 20 runs, against the real control plane, the real
//! Prometheus and the mesh simulator (interval 1 s, failureLimit 1, window 5 s). Each run measures
//! from the moment Prometheus first shows the canary's success rate below the threshold to the
//! moment the VirtualService is back at 100/0. Run it with `scripts/bench`.

#[path = "../tests/fixture/mod.rs"]
mod fixture;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

const RUNS: usize = 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(RUNS);
    let mut latencies: Vec<Duration> = Vec::with_capacity(runs);
    for i in 0..runs {
        let latency = fixture::analysis::breach_to_rollback(&format!("bench-{i}")).await?;
        println!("run {:>2}: {:>6.0} ms", i + 1, latency.as_secs_f64() * 1000.0);
        latencies.push(latency);
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let mean = latencies.iter().map(|d| ms(*d)).sum::<f64>() / latencies.len() as f64;
    println!(
        "breach → rollback over {} runs (interval 1s): min {:.0} ms, p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms, mean {:.0} ms",
        latencies.len(),
        ms(latencies[0]),
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(latencies[latencies.len() - 1]),
        mean
    );
    Ok(())
}
