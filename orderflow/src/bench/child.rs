//! The pipeline under test as a child process: the `orderflow` binary (this one, or the one
//! given with `--orderflow-bin`) pointed at the bench's own topic, consumer groups and
//! database through `ORDERFLOW_*` variables, for its setup commands (`migrate`, `topics`,
//! `stock set`) and for `orderflow run`. The running child is never left behind: it is stopped
//! on every return path, killed when its handle is dropped, and asked by the kernel to stop
//! if the bench itself dies.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;

/// Lines of a child's output shown when it fails.
const TAIL_LINES: usize = 30;

/// How to start the binary under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub bin: PathBuf,
    /// The settings file the bench was given, passed on so both read the same settings.
    pub config: Option<PathBuf>,
    /// `ORDERFLOW_*` overrides: the bench's topic, groups and database.
    pub env: Vec<(String, String)>,
}

impl Target {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.bin);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        // The child's admin listener takes a free port unless told otherwise: a pipeline
        // already running on this host holds the default one.
        if std::env::var_os("ORDERFLOW_ADMIN__LISTEN").is_none() {
            command.env("ORDERFLOW_ADMIN__LISTEN", "127.0.0.1:0");
        }
        command
    }

    /// Check that the binary exists and answers `--version`; returns that answer.
    pub async fn version(&self) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.bin.is_file(),
            "the orderflow binary {} does not exist; build it (cargo build --release -p \
             orderflow) or give another with --orderflow-bin",
            self.bin.display()
        );
        let output = self
            .command(&["--version"])
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "{} --version failed ({}): {}",
            self.bin.display(),
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr), TAIL_LINES)
        );
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Run a setup command to its end; on failure the error names the command, its exit
    /// status and the end of its output.
    pub async fn run_to_end(&self, args: &[&str]) -> anyhow::Result<()> {
        let shown = format!("{} {}", self.bin.display(), args.join(" "));
        // `stock set` lists every sku: keep the message readable.
        let shown = if shown.chars().count() > 200 {
            format!("{}...", shown.chars().take(200).collect::<String>())
        } else {
            shown
        };
        let output = self
            .command(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("cannot run `{shown}`"))?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stdout).to_string();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        anyhow::bail!(
            "`{shown}` failed ({}); its last output:\n{}",
            output.status,
            tail(&text, TAIL_LINES)
        )
    }

    /// Start `orderflow run` with stdout and stderr going to `log`.
    pub fn spawn_run(&self, log: &Path) -> anyhow::Result<Running> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("creating the child's log {}", log.display()))?;
        let err = file
            .try_clone()
            .with_context(|| format!("opening {} twice", log.display()))?;
        let mut command = self.command(&["run"]);
        command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and only makes one
        // async-signal-safe system call. It asks the kernel to send SIGTERM to the child when
        // the thread that forked it (a runtime worker, alive as long as the bench) ends, so
        // not even a SIGKILLed bench leaves the pipeline running.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start `{} run`", self.bin.display()))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .context("the child has no process id")?;
        Ok(Running {
            child,
            pid,
            log: log.to_path_buf(),
        })
    }
}

/// A running `orderflow run`.
pub struct Running {
    child: tokio::process::Child,
    pub pid: i32,
    pub log: PathBuf,
}

impl Running {
    /// An error if the child has exited, with its status and the end of its log.
    pub fn check_alive(&mut self, during: &str) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.died(status, during)),
            Err(error) => Err(anyhow::anyhow!(
                "cannot check the pipeline process (pid {}): {error}",
                self.pid
            )),
        }
    }

    fn died(&self, status: ExitStatus, during: &str) -> anyhow::Error {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let text = if text.trim().is_empty() {
            "(nothing: it logged no warning or error)".to_string()
        } else {
            text
        };
        anyhow::anyhow!(
            "the pipeline process (orderflow run, pid {}) exited with {status} during {during}; \
             the last lines of its log {}:\n{}",
            self.pid,
            self.log.display(),
            tail(&text, TAIL_LINES)
        )
    }

    /// Ask the child to stop (SIGTERM: finish batches, commit, leave the groups), wait up to
    /// `grace`, then kill it. Returns its exit status.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status);
        }
        // SAFETY: kill(2) with a pid this process spawned and has not reaped yet (try_wait
        // above saw it running), so the pid cannot belong to another process.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.context("waiting for the pipeline process"),
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    "the pipeline did not stop in time; killing it"
                );
                self.child
                    .kill()
                    .await
                    .context("killing the pipeline process")?;
                self.child
                    .wait()
                    .await
                    .context("waiting for the pipeline process")
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // On an early return or a panic: SIGKILL, whatever it was doing.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
        }
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_last_lines() {
        let cases = [
            ("", 3, ""),
            ("a", 3, "a"),
            ("a\nb\nc\nd\n", 2, "c\nd"),
            ("a\nb", 5, "a\nb"),
        ];
        for (text, lines, want) in cases {
            assert_eq!(tail(text, lines), want, "{text:?}");
        }
    }
}
