//! Flagger's own load tester (github.com/fluxcd/flagger/cmd/loadtester, v1.44.0) as a webhook
//! receiver: its gate and rollback switches and its `bash`/`cmd` tasks, exactly as Flagger users run it.
use super::{ChildProc, free_port, scratch_dir, wait_until};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct LoadTester {
    base: String,
    http: reqwest::Client,
    proc: ChildProc,
}

impl LoadTester {
    /// Starts one on a free loopback port and waits for its `/healthz`.
    pub async fn start() -> Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new(binary()?);
        cmd.args(["-port", &port.to_string(), "-log-level", "info", "-timeout", "60s"]);
        let proc = ChildProc::spawn("loadtester", cmd, &scratch_dir("loadtester")?, false)?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building an HTTP client")?;
        let health = format!("{base}/healthz");
        wait_until("the loadtester's /healthz", Duration::from_secs(30), async || {
            let ok = http.get(&health).send().await.is_ok_and(|r| r.status().is_success());
            Ok(ok.then_some(()))
        })
        .await
        .with_context(|| proc.logs(20))?;
        Ok(Self { base, http, proc })
    }

    /// `http://127.0.0.1:PORT` + `path`, for a webhook's `url`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What an operator does by hand: POST `{name, namespace}` to a switch such as `/gate/open`.
    pub async fn switch(&self, path: &str, name: &str, namespace: &str) -> Result<()> {
        let body = serde_json::json!({"name": name, "namespace": namespace});
        let resp = self.http.post(self.url(path)).json(&body).send().await?;
        if resp.status().as_u16() != 202 {
            bail!("{path} answered {}", resp.status());
        }
        Ok(())
    }

    /// The status code the load tester gives a canary at `path` (what Flagger would see).
    pub async fn check(&self, path: &str, name: &str, namespace: &str) -> Result<u16> {
        let body = serde_json::json!({"name": name, "namespace": namespace});
        Ok(self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await?
            .status()
            .as_u16())
    }

    /// The load tester's log (its JSON lines), e.g. to see which commands ran.
    pub fn log(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(self.proc.stdout_log()), read(self.proc.stderr_log()))
    }
}

/// `$CANARYD_LOADTESTER_BIN` if set, else what tests/loadtester/build.sh prints (instant when cached).
fn binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("CANARYD_LOADTESTER_BIN") {
        return Ok(bin.into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/loadtester/build.sh");
    let out = Command::new(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bin = stdout
        .lines()
        .last()
        .map(str::trim)
        .context("build.sh printed nothing")?;
    Ok(PathBuf::from(bin))
}
