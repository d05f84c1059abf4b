//! Starting, stopping and killing the real binaries (the agent, the hub), for the benchmarks and the end-to-end
//! tests alike.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The path of a workspace binary, built next to the running test or bench executable.
///
/// # Panics
/// When the binary has not been built: run `cargo build --workspace --bins` (README's test command does).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (README's test command does)",
        path.display()
    );
    path
}

/// A running binary that printed `listening on <url>`.
pub struct Running {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl Running {
    /// Starts `cmd`, whose stderr goes to `log`, and waits for its `listening on` line.
    ///
    /// # Panics
    /// When it exits or stays silent for 60 s; the log's tail is in the message.
    pub fn start(mut cmd: Command, log: &Path) -> Running {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).expect("log dir");
        }
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(log_file)).stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                    sent = true;
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => Running { child, url, log: log.to_path_buf() },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not start; log:\n{}", tail(log));
            }
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    ///
    /// # Panics
    /// When the process does not exit successfully within 30 s.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "exited with {status}; log:\n{}", tail(&self.log));
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("did not stop within 30 s of SIGTERM; log:\n{}", tail(&self.log));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last 4 KB of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4096);
    let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
    text[start..].to_owned()
}

/// Starts an agent on `127.0.0.1:0` in `dir` as store/till (no hub).
pub fn start_agent(dir: &Path, store: &str, till: &str) -> Running {
    let mut cmd = Command::new(bin("storesync-agent"));
    cmd.args(["run", "--listen", "127.0.0.1:0", "--store-id", store, "--till-id", till]).arg("--data-dir").arg(dir);
    isolate(&mut cmd, dir);
    Running::start(cmd, &dir.join("agent.log"))
}

/// Keeps a test's agent from reading the developer's own agent.toml.
pub fn isolate(cmd: &mut Command, dir: &Path) {
    for (k, _) in std::env::vars() {
        if k.starts_with("STORESYNC_") && !k.starts_with("STORESYNC_TEST") && k != "STORESYNC_REQUIRE_ALL" {
            cmd.env_remove(k);
        }
    }
    cmd.env("XDG_CONFIG_HOME", dir.join("xdg-config")).env("HOME", dir);
}

/// Runs an agent CLI verb against `dir` and returns its output.
pub fn agent_cli(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("storesync-agent"));
    cmd.args(args).arg("--data-dir").arg(dir);
    isolate(&mut cmd, dir);
    cmd.output().expect("running storesync-agent")
}

/// Starts a hub on `listen` (`127.0.0.1:0` for any port) with its data in `dir`, plain or with TLS files.
pub fn start_hub(dir: &Path, listen: &str, tls: Option<&TlsFiles>, admin_token: &str) -> Running {
    wait_until_bindable(listen);
    Running::start(hub_command(dir, listen, tls, admin_token), &dir.join("hub.log"))
}

/// A hub restarted on its old port (where its tills expect it) can find the port held for a moment: while it was
/// down, the OS may hand that port to another test's outgoing connection as its ephemeral local port (seen on CI:
/// "binding 127.0.0.1:46397: Address already in use"). Waits, up to 30 s, until the address can be bound; a port
/// still taken then makes the hub fail to start, and the test says so.
fn wait_until_bindable(listen: &str) {
    if listen.ends_with(":0") {
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpListener::bind(listen).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The command [`start_hub`] runs, for a caller that adds to it (flags, environment) before [`Running::start`].
pub fn hub_command(dir: &Path, listen: &str, tls: Option<&TlsFiles>, admin_token: &str) -> Command {
    let mut cmd = Command::new(bin("storesync-hub"));
    cmd.args(["serve", "--listen", listen]).arg("--data-dir").arg(dir);
    if let Some(t) = tls {
        cmd.arg("--tls-cert").arg(&t.cert).arg("--tls-key").arg(&t.key);
    }
    isolate(&mut cmd, dir);
    cmd.env("STORESYNC_ADMIN_TOKEN", admin_token);
    cmd
}

/// `storesync-hub enroll-code`: the code is the last line of stdout.
///
/// # Panics
/// When the command fails.
pub fn enroll_code(hub_dir: &Path, store: &str, till: &str) -> String {
    let mut cmd = Command::new(bin("storesync-hub"));
    cmd.args(["enroll-code", "--store", store, "--till", till]).arg("--data-dir").arg(hub_dir);
    isolate(&mut cmd, hub_dir);
    let out = cmd.output().expect("running storesync-hub enroll-code");
    assert!(out.status.success(), "enroll-code failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().last().expect("a code").trim().to_owned()
}

/// PEM files for a hub's TLS, and the CA that signed them.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Starts an agent that takes its identity from its credential (or, when `ids` is given, from flags).
pub fn start_agent_with(dir: &Path, ids: Option<(&str, &str)>, config: Option<&Path>) -> Running {
    Running::start(agent_command(dir, ids, config), &dir.join("agent.log"))
}

/// The command [`start_agent_with`] runs, for a caller that adds to it (say, environment) before
/// [`Running::start`].
pub fn agent_command(dir: &Path, ids: Option<(&str, &str)>, config: Option<&Path>) -> Command {
    let mut cmd = Command::new(bin("storesync-agent"));
    cmd.args(["run", "--listen", "127.0.0.1:0"]).arg("--data-dir").arg(dir);
    if let Some((store, till)) = ids {
        cmd.args(["--store-id", store, "--till-id", till]);
    }
    isolate(&mut cmd, dir);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd
}
