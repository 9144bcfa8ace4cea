//! Child processes tied to the lifetime of the test process.
use super::{LIVE_PIDS, log_tail, scratch_dir};
use anyhow::{Context, Result, anyhow, bail};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from one thread that lives as long as the process: PR_SET_PDEATHSIG fires when
/// the spawning *thread* exits, so a short-lived test thread must never be the parent.
fn spawn_tied(cmd: Command) -> Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    if SPAWNER.get().is_none() {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        if SPAWNER.set(tx).is_ok() {
            std::thread::Builder::new()
                .name("child-spawner".into())
                .spawn(move || spawner_loop(rx))
                .context("starting the child-spawner thread")?;
        }
    }
    let spawner = SPAWNER.get().context("child-spawner not initialised")?;
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .map_err(|_| anyhow!("child-spawner thread is gone"))?;
    Ok(reply_rx.recv().context("child-spawner dropped the request")??)
}

fn spawner_loop(requests: mpsc::Receiver<SpawnRequest>) {
    let parent = std::process::id() as libc::pid_t;
    // The sender sits in a static, so this loop (and thread) only ends with the process.
    for (mut cmd, reply) in requests {
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1); // the test process died before prctl took effect
                }
                Ok(())
            });
        }
        let _ = reply.send(cmd.spawn());
    }
}

enum FirstLine {
    NotPiped,
    Pending(oneshot::Receiver<String>),
    Got(String),
}

/// A child process killed (SIGKILL) on drop, with stdout/stderr logged to files.
pub struct ChildProc {
    name: String,
    child: Child,
    reaped: bool,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
    first_line: FirstLine,
}

impl ChildProc {
    /// Spawns `cmd` with logs in `log_dir`; with `pipe_first_line`, the first stdout line is also
    /// made available through [`ChildProc::first_line`].
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path, pipe_first_line: bool) -> Result<Self> {
        // Never let a child find a real cluster or a proxy through the inherited environment;
        // variables set explicitly on `cmd` are kept.
        const SCRUB: [&str; 9] = [
            "KUBECONFIG",
            "KUBERNETES_SERVICE_HOST",
            "KUBERNETES_SERVICE_PORT",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ];
        for var in SCRUB {
            if !cmd.get_envs().any(|(key, _)| key == var) {
                cmd.env_remove(var);
            }
        }
        let stdout_log = log_dir.join(format!("{name}.stdout.log"));
        let stderr_log = log_dir.join(format!("{name}.stderr.log"));
        let open = |p: &Path| File::create(p).with_context(|| format!("creating {}", p.display()));
        let stdout_file = open(&stdout_log)?;
        cmd.stdin(Stdio::null()).stderr(open(&stderr_log)?);
        if pipe_first_line {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(stdout_file.try_clone().context("cloning the stdout log handle")?);
        }
        let mut child = spawn_tied(cmd).with_context(|| format!("spawning {name}"))?;
        if let Ok(mut pids) = LIVE_PIDS.lock() {
            pids.push(child.id());
        }
        let first_line = match child.stdout.take() {
            Some(stdout) => {
                let (tx, rx) = oneshot::channel();
                std::thread::spawn(move || copy_stdout(stdout, stdout_file, tx));
                FirstLine::Pending(rx)
            }
            None => FirstLine::NotPiped,
        };
        Ok(Self {
            name: name.to_string(),
            child,
            reaped: false,
            stdout_log,
            stderr_log,
            first_line,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout_log(&self) -> &Path {
        &self.stdout_log
    }

    pub fn stderr_log(&self) -> &Path {
        &self.stderr_log
    }

    /// The tails of both log files, for assertion and error messages.
    pub fn logs(&self, lines: usize) -> String {
        format!(
            "{}\n{}",
            log_tail(&self.stdout_log, lines),
            log_tail(&self.stderr_log, lines)
        )
    }

    /// The first stdout line (without the newline), waiting up to `timeout` for it.
    pub async fn first_line(&mut self, timeout: Duration) -> Result<String> {
        let line = match &mut self.first_line {
            FirstLine::Got(line) => return Ok(line.clone()),
            FirstLine::NotPiped => bail!("{}: stdout is not piped", self.name),
            FirstLine::Pending(rx) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(line)) => line,
                Ok(Err(_)) => bail!("{} closed stdout without a line\n{}", self.name, self.logs(30)),
                Err(_) => bail!("{} printed no line within {timeout:?}\n{}", self.name, self.logs(30)),
            },
        };
        self.first_line = FirstLine::Got(line.clone());
        Ok(line)
    }

    /// The address from a first stdout line of the form `listening on ADDR`.
    pub async fn listening_addr(&mut self, timeout: Duration) -> Result<String> {
        let line = self.first_line(timeout).await?;
        line.strip_prefix("listening on ")
            .map(|addr| addr.trim().to_string())
            .with_context(|| format!("{}: first line is not `listening on ADDR`: {line:?}", self.name))
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.name))?;
        if status.is_some() {
            self.mark_reaped();
        }
        Ok(status)
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> Result<()> {
        if self.reaped {
            return Ok(());
        }
        self.child.kill().with_context(|| format!("killing {}", self.name))?;
        self.child.wait().with_context(|| format!("reaping {}", self.name))?;
        self.mark_reaped();
        Ok(())
    }

    /// SIGTERM, then SIGKILL if still running after `grace`; returns the exit status.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // SAFETY: the child is not reaped yet, so its pid is still ours.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("SIGTERM to {}", self.name));
        }
        match self.wait(grace).await {
            Ok(status) => Ok(status),
            Err(_) => {
                self.child.kill().with_context(|| format!("killing {}", self.name))?;
                let status = self.child.wait().with_context(|| format!("reaping {}", self.name))?;
                self.mark_reaped();
                Ok(status)
            }
        }
    }

    fn mark_reaped(&mut self) {
        self.reaped = true;
        let pid = self.child.id();
        if let Ok(mut pids) = LIVE_PIDS.lock() {
            pids.retain(|&p| p != pid);
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Copies the child's stdout to its log, handing the first line to `first`.
fn copy_stdout(stdout: std::process::ChildStdout, mut log: File, first: oneshot::Sender<String>) {
    let mut reader = BufReader::new(stdout);
    let mut first = Some(first);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let _ = log.write_all(&line);
                if let Some(tx) = first.take() {
                    let _ = tx.send(String::from_utf8_lossy(&line).trim_end().to_string());
                }
            }
        }
    }
}

/// Path of one of this crate's binaries: Cargo tells integration tests; an example (the demo) finds
/// them next to its own directory, target/<profile>/.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let known = match name {
        "canaryd" => option_env!("CARGO_BIN_EXE_canaryd"),
        "meshsim" => option_env!("CARGO_BIN_EXE_meshsim"),
        other => bail!("unknown binary {other:?} (expected canaryd or meshsim)"),
    };
    if let Some(path) = known {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("executable has no target/<profile> directory")?;
    let path = profile_dir.join(name);
    if !path.is_file() {
        bail!("{} not built: run `cargo build --bins` first", path.display());
    }
    Ok(path)
}

/// Starts one of this crate's binaries (`canaryd` or `meshsim`) with its stdout piped so the
/// first line can be read; logs go to a fresh scratch directory.
pub fn spawn_bin(name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<ChildProc> {
    let mut cmd = Command::new(bin_path(name)?);
    cmd.args(args).envs(env.iter().copied());
    ChildProc::spawn(name, cmd, &scratch_dir(name)?, true)
}
