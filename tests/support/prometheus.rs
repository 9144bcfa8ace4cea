//! A Prometheus server per call to [`Prometheus::start`], scraping every second whatever
//! targets the test adds at run time (file-based service discovery).
use super::controlplane::http_client;
use super::{ChildProc, free_port, scratch_dir, wait_until};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

const BINARY: &str = "/usr/bin/prometheus";
/// Job name of the targets added with [`Prometheus::add_target`].
pub const JOB: &str = "tests";

/// One element of an instant-query result: its labels and its value.
pub type Sample = (BTreeMap<String, String>, f64);

pub struct Prometheus {
    dir: PathBuf,
    base_url: String,
    port: u16,
    targets_file: PathBuf,
    targets: Mutex<Vec<Value>>,
    proc: ChildProc,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port and waits until it is ready.
    pub async fn start() -> Result<Self> {
        let dir = scratch_dir("prometheus")?;
        let port = free_port()?;
        let targets_file = dir.join("targets.json");
        write_atomically(&targets_file, "[]")?;
        let config = format!(
            "global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
- job_name: {JOB}
  file_sd_configs:
  - files: ['{}']
    refresh_interval: 1s
",
            targets_file.display()
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).context("writing prometheus.yml")?;
        let base_url = format!("http://127.0.0.1:{port}");
        let proc = launch(&dir, port, &base_url).await?;
        Ok(Self {
            dir,
            base_url,
            port,
            targets_file,
            targets: Mutex::new(Vec::new()),
            proc,
        })
    }

    /// Stops the server (SIGTERM), keeping its data and port for [`Prometheus::restart`].
    pub async fn stop(&mut self) -> Result<()> {
        self.proc.terminate(Duration::from_secs(10)).await.map(|_| ())
    }

    /// Starts it again on the same port with the same data.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc = launch(&self.dir, self.port, &self.base_url).await?;
        Ok(())
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn logs(&self, lines: usize) -> String {
        self.proc.logs(lines)
    }

    /// Adds `host:port` as a scrape target (job `tests`); picked up within about a second.
    pub async fn add_target(&self, addr: &str) -> Result<()> {
        self.add_target_with_labels(addr, &[]).await
    }

    /// Like [`Prometheus::add_target`], with extra target labels.
    pub async fn add_target_with_labels(&self, addr: &str, labels: &[(&str, &str)]) -> Result<()> {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let mut targets = self
            .targets
            .lock()
            .map_err(|_| anyhow::anyhow!("targets lock poisoned"))?;
        targets.push(json!({ "targets": [addr], "labels": labels }));
        write_atomically(&self.targets_file, &serde_json::to_string(&*targets)?)
    }

    /// Instant query; a scalar result comes back as one sample without labels.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let url = format!("{}/api/v1/query", self.base_url);
        let resp = http_client()?.get(&url).query(&[("query", promql)]).send().await;
        let body: Value = resp
            .context("querying prometheus")?
            .json()
            .await
            .context("decoding the answer")?;
        if body["status"] != "success" {
            bail!(
                "query {promql:?} failed: {}",
                body["error"].as_str().unwrap_or("unknown error")
            );
        }
        let data = &body["data"];
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .context("vector result is not an array")?
                .iter()
                .map(|s| Ok((serde_json::from_value(s["metric"].clone())?, parse_value(&s["value"])?)))
                .collect(),
            Some("scalar") => Ok(vec![(BTreeMap::new(), parse_value(&data["result"])?)]),
            other => bail!("unsupported result type {other:?} for {promql:?}"),
        }
    }

    /// Re-runs `promql` until `predicate` holds for its result; returns that result.
    pub async fn wait_for(
        &self,
        promql: &str,
        predicate: impl Fn(&[Sample]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Sample>> {
        let mut last = None;
        let result = wait_until(&format!("prometheus query {promql:?}"), timeout, async || {
            let samples = self.query(promql).await?;
            if predicate(&samples) {
                return Ok(Some(samples));
            }
            last = Some(samples);
            Ok(None)
        })
        .await;
        result.with_context(|| format!("last result: {last:?}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Parses a `[timestamp, "value"]` pair; Prometheus spells infinities `+Inf`/`-Inf`.
fn parse_value(pair: &Value) -> Result<f64> {
    let text = pair[1].as_str().with_context(|| format!("bad sample value {pair}"))?;
    text.parse().with_context(|| format!("bad sample value {text:?}"))
}

/// Prometheus must never see a half-written target file.
fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

async fn launch(dir: &Path, port: u16, base_url: &str) -> Result<ChildProc> {
    let mut cmd = Command::new(BINARY);
    cmd.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-lifecycle");
    let mut proc = ChildProc::spawn("prometheus", cmd, dir, false)?;
    let http = http_client()?;
    let ready = format!("{base_url}/-/ready");
    wait_until("prometheus /-/ready", Duration::from_secs(60), async || {
        if let Some(status) = proc.try_wait()? {
            bail!("prometheus exited early ({status})");
        }
        Ok(http
            .get(&ready)
            .send()
            .await
            .ok()
            .is_some_and(|r| r.status().is_success())
            .then_some(()))
    })
    .await
    .with_context(|| proc.logs(30))?;
    Ok(proc)
}
