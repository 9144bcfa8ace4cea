//! Shared integration-test harness: a local Kubernetes control plane, Prometheus, and child
//! processes for this crate's binaries. Every test file uses it as `mod support;`.
#![allow(dead_code)] // each test binary uses a different subset

mod controlplane;
mod k8s;
mod loadtester;
mod process;
mod prometheus;
pub mod standin;

// Re-exports: every test binary uses a different subset.
#[allow(unused_imports)]
pub use controlplane::{ControlPlane, client, control_plane, control_plane_with_nodes};
#[allow(unused_imports)]
pub use k8s::{apply_yaml, client_with_token, create_namespace, token_for};
#[allow(unused_imports)]
pub use loadtester::LoadTester;
#[allow(unused_imports)]
pub use process::{ChildProc, bin_path, spawn_bin};
#[allow(unused_imports)]
pub use prometheus::{Prometheus, Sample};

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Root scratch directory of this test process; removed at exit by `cleanup_at_exit` unless
/// `CANARYD_KEEP_TEST_DIRS` is set (then its path is printed, for reading the logs).
static ROOT: OnceLock<PathBuf> = OnceLock::new();

fn root_dir() -> Result<&'static Path> {
    if let Some(root) = ROOT.get() {
        return Ok(root);
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    if std::env::var_os("CANARYD_KEEP_TEST_DIRS").is_none() {
        remove_stale_roots();
    }
    let dir = std::env::temp_dir().join(format!("canaryd-tests-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if ROOT.set(dir.clone()).is_ok() {
        // SAFETY: registers a plain extern "C" fn; statics are never dropped in Rust, so this is
        // the only place to reap children and remove the scratch dir on a normal exit.
        unsafe { libc::atexit(cleanup_at_exit) };
    } else {
        let _ = std::fs::remove_dir_all(&dir); // lost a race against another thread
    }
    ROOT.get().map(PathBuf::as_path).context("scratch root not set")
}

/// Removes scratch roots left by test processes that were killed (their pid is gone).
fn remove_stale_roots() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("canaryd-tests-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A fresh, uniquely named directory under the process scratch root.
pub fn scratch_dir(prefix: &str) -> Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = root_dir()?.join(format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Pids of children not yet reaped; killed at exit (PDEATHSIG covers crashes and aborts).
static LIVE_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

extern "C" fn cleanup_at_exit() {
    if let Ok(pids) = LIVE_PIDS.try_lock() {
        for &pid in pids.iter() {
            // SAFETY: these are our own unreaped children, so the pids cannot have been reused.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
    }
    if let Some(root) = ROOT.get() {
        if std::env::var_os("CANARYD_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept test logs in {}", root.display());
        } else {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr().context("reading local address")?.port())
}

/// Polls `probe` until it yields `Some`, failing after `timeout` with the last probe error.
pub async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition not met");
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last = format!("{err:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            format!("--- last {lines} lines of {} ---\n{tail}", path.display())
        }
        Err(err) => format!("--- {} unreadable: {err} ---", path.display()),
    }
}
