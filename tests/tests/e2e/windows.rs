//! The Windows agent under Wine (issue #6): the real `storesync-agent.exe`, built by `.ci/windows/build.sh` with
//! Debian's mingw toolchain, takes sales over its local API as a console program, then runs as a Windows service
//! installed with `sc create`, started and stopped with `net start` / `net stop` and with its own
//! `service start|stop|install|uninstall` verbs, and its journal survives every stop and a reinstall. The Linux agent then verifies
//! that very journal file.
//!
//! A second test updates the service itself: a real 0.2.0 Windows build is swapped into the running `.exe`'s place
//! and the service restarts through the service control manager; a 0.3.0 that fails its health check is rolled
//! back the same way.
//!
//! What Wine cannot show (docs/OPERATIONS.md): real Windows file locking and ACLs (Wine lets the running `.exe` be
//! moved aside as Windows does, but is not Windows), the
//! service running as LocalSystem at boot, and the recovery actions after a failure (Wine's service manager keeps
//! the crash actions but does not act on them, and refuses the "also on a non-zero exit" flag, which
//! `service install` then reports as a warning).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use storesync_tests::proc::{agent_cli, enroll_code, require_tool, start_hub};
use storesync_tests::sales::sale;
use uuid::Uuid;

use crate::update::{check_now, hub_cli, publish, roll_out_for, sign_for, wait_for_halt};
use crate::util::{TOKEN, client, hub_client, status};

fn wine() -> Option<PathBuf> {
    let fixed = PathBuf::from("/usr/lib/wine/wine64");
    if fixed.exists() {
        return Some(fixed);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("wine64")).find(|p| p.exists())
}

/// The Windows build and Wine's `bcryptprimitives.dll` shim beside it.
fn windows_agent() -> Option<PathBuf> {
    let exe = std::env::var_os("STORESYNC_WINDOWS_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/windows/storesync-agent.exe"));
    (exe.exists() && exe.with_file_name("bcryptprimitives.dll").exists()).then_some(exe)
}

/// A Linux path as Wine's `Z:` drive names it.
fn z(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn up(c: &reqwest::Client, url: &str) -> bool {
    c.get(format!("{url}/v1/status")).timeout(Duration::from_secs(2)).send().await.is_ok_and(|r| r.status() == 200)
}

/// Waits until the agent at `url` answers (`want = true`) or is gone (`false`).
async fn wait_until(c: &reqwest::Client, url: &str, want: bool, what: &str, log: &Path) {
    let start = Instant::now();
    while up(c, url).await != want {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{what}: waited 180 s; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until the Wine session's output has `MARK <mark>`.
async fn wait_mark(log: &Path, mark: &str) {
    let start = Instant::now();
    let want = format!("MARK {mark}");
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(&want) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "no {want} after 180 s; log:\n{text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn sell(c: &reqwest::Client, url: &str, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = Uuid::new_v4();
        let r = c.post(format!("{url}/v1/sales")).json(&sale(id, "COFFEE-1KG", 1)).send().await.unwrap();
        assert_eq!(r.status(), 201);
        ids.push(id);
    }
    ids
}

async fn journal_ids(c: &reqwest::Client, url: &str) -> Vec<Uuid> {
    crate::util::journal(c, url).await.iter().map(|e| e.event_id).collect()
}

/// Ends every process of a Wine prefix when dropped (`wineserver -k`), so a failed run leaves no service, no
/// agent and no waiting batch file behind.
struct Prefix<'a> {
    wine: &'a Path,
    path: PathBuf,
}

impl Drop for Prefix<'_> {
    fn drop(&mut self) {
        let server = self.wine.with_file_name("wineserver");
        let server = if server.exists() { server } else { PathBuf::from("wineserver") };
        let _ = Command::new(server).env("WINEPREFIX", &self.path).arg("-k").status();
    }
}

fn wine_command(wine: &Path, prefix: &Path) -> Command {
    let mut cmd = Command::new(wine);
    cmd.env("WINEPREFIX", prefix).env("WINEDEBUG", "-all").stdin(Stdio::null());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_agent_sells_and_runs_as_a_service_under_wine() {
    let (Some(wine), Some(built)) = (wine(), windows_agent()) else {
        require_tool("Wine (`wine64`) and the Windows agent (`.ci/windows/build.sh` builds it)", false);
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("storesync-agent.exe");
    std::fs::copy(&built, &exe).unwrap();
    std::fs::copy(built.with_file_name("bcryptprimitives.dll"), bin.join("bcryptprimitives.dll")).unwrap();
    let guard = Prefix { wine: &wine, path: root.path().join("prefix") };
    let prefix = guard.path.clone();
    let data = root.path().join("data");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let c = client();

    // 1. A console run: sales over the local API, then the process is killed.
    let console_log = root.path().join("console.log");
    let mut console = wine_command(&wine, &prefix)
        .arg(&exe)
        .args(["--data-dir", &z(&data), "run", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--store-id", "S1", "--till-id", "T1"])
        .stdout(std::fs::File::create(&console_log).unwrap())
        .stderr(std::fs::File::create(root.path().join("console.err")).unwrap())
        .spawn()
        .unwrap();
    wait_until(&c, &url, true, "the console agent to answer", &root.path().join("console.err")).await;
    let mut sold = sell(&c, &url, 20).await;
    assert_eq!(journal_ids(&c, &url).await, sold);
    console.kill().unwrap();
    console.wait().unwrap();
    wait_until(&c, &url, false, "the console agent to go away", &console_log).await;

    let config = root.path().join("agent.toml");
    std::fs::write(&config, format!("data_dir = '{}'\nlisten = \"127.0.0.1:{port}\"\n", z(&data))).unwrap();
    let flag = |n: u8| root.path().join(format!("go{n}"));
    let wait_for = |n: u8| {
        format!(
            ":wait{n}\r\nif exist {f} goto go{n}\r\nping -n 2 127.0.0.1 >NUL\r\ngoto wait{n}\r\n:go{n}\r\n",
            f = z(&flag(n))
        )
    };
    let agent = format!("{} --config {}", z(&exe), z(&config));
    let script = [
        "@echo off".to_owned(),
        format!("sc create storesync-agent binPath= \"{agent} service run\""),
        "net start storesync-agent".into(),
        "echo MARK started-by-net-start".into(),
        wait_for(1),
        "net stop storesync-agent".into(),
        "echo MARK stopped-by-net-stop".into(),
        wait_for(2),
        format!("{agent} service start"),
        wait_for(3),
        format!("{agent} service stop"),
        ":stopping".into(),
        "sc query storesync-agent | find \"STOPPED\" >NUL".into(),
        "if errorlevel 1 (ping -n 2 127.0.0.1 >NUL & goto stopping)".into(),
        "echo MARK stopped-by-service-stop".into(),
        wait_for(4),
        format!("{agent} service uninstall"),
        format!("{agent} service install"),
        "net start storesync-agent".into(),
        "echo MARK started-after-service-install".into(),
        wait_for(5),
        "net stop storesync-agent".into(),
        format!("{agent} service uninstall"),
        "net start storesync-agent".into(),
        "if errorlevel 1 echo MARK gone-after-uninstall".into(),
        "echo MARK done".into(),
        "exit /b 0".into(), // the failed `net start` above left errorlevel 2; the marks say how each step went
    ]
    .join("\r\n");
    let bat = root.path().join("service.bat");
    std::fs::write(&bat, script + "\r\n").unwrap();
    let session_log = root.path().join("session.log");
    let mut session = wine_command(&wine, &prefix)
        .args(["cmd", "/c", &z(&bat)])
        .stdout(std::fs::File::create(&session_log).unwrap())
        .stderr(std::fs::File::create(root.path().join("session.err")).unwrap())
        .spawn()
        .unwrap();

    // Each step is seen as the session reports it; the session waits for a flag file before the next one, so no
    // stop or start can slip by between two polls.
    wait_until(&c, &url, true, "the service (net start) to answer", &session_log).await;
    assert_eq!(journal_ids(&c, &url).await, sold, "the console run's journal survived");
    sold.extend(sell(&c, &url, 20).await);
    std::fs::write(flag(1), b"").unwrap();
    wait_mark(&session_log, "stopped-by-net-stop").await;
    assert!(!up(&c, &url).await, "net stop returned with the agent still answering");
    std::fs::write(flag(2), b"").unwrap();
    wait_until(&c, &url, true, "the service (service start) to answer", &session_log).await;
    assert_eq!(journal_ids(&c, &url).await, sold, "the journal survived net stop and a start");
    sold.extend(sell(&c, &url, 10).await);
    std::fs::write(flag(3), b"").unwrap();
    wait_mark(&session_log, "stopped-by-service-stop").await;
    assert!(!up(&c, &url).await, "the service reported stopped with the agent still answering");
    std::fs::write(flag(4), b"").unwrap();
    wait_mark(&session_log, "started-after-service-install").await;
    wait_until(&c, &url, true, "the service (service install, net start) to answer", &session_log).await;
    assert_eq!(journal_ids(&c, &url).await, sold, "the journal survived a reinstall of the service");
    sold.extend(sell(&c, &url, 5).await);
    std::fs::write(flag(5), b"").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = session.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "the Wine session did not finish");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let log = std::fs::read_to_string(&session_log).unwrap()
        + &std::fs::read_to_string(root.path().join("session.err")).unwrap();
    assert!(status.success(), "{log}");
    for mark in [
        "started-by-net-start",
        "stopped-by-net-stop",
        "stopped-by-service-stop",
        "started-after-service-install",
        "gone-after-uninstall",
        "done",
    ] {
        assert!(log.contains(&format!("MARK {mark}")), "no {mark}:\n{log}");
    }
    assert_eq!(log.matches("service storesync-agent installed").count(), 1, "{log}");
    assert_eq!(log.matches("service storesync-agent removed").count(), 2, "{log}");

    // A service has no console: it logged to daily files in its data dir, a clean stop included.
    let logs: String = std::fs::read_dir(data.join("logs"))
        .expect("the service's log dir")
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(logs.contains("POS API listening") && logs.contains("service stop requested"), "{logs}");
    assert_eq!(logs.matches("agent stopped").count(), 3, "each of the 3 service stops drained and committed:\n{logs}");

    // The Linux agent verifies the journal the Windows agent wrote: 50 sales, chain intact.
    let out = agent_cli(&data, &["verify-journal"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("journal intact: {} events", sold.len())), "{stdout}");
    println!(
        "windows under wine: {} sales over 4 runs (console, net start, service start, reinstalled service); journal verified",
        sold.len()
    );
}

/// Polls the agent at `url` until it runs `version` with no trial in progress and `done` holds for its status.
async fn wait_for_status(
    c: &reqwest::Client,
    url: &str,
    what: &str,
    log: &Path,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        if let Ok(r) = c.get(format!("{url}/v1/status")).timeout(Duration::from_secs(2)).send().await
            && let Ok(v) = r.json::<Value>().await
            && done(&v)
        {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "{what}: waited 240 s; service logs:\n{}",
            std::fs::read_dir(log)
                .map(|d| d.flatten().map(|e| std::fs::read_to_string(e.path()).unwrap_or_default()).collect::<String>())
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Self-update of the Windows service under Wine: a real 0.2.0 build is swapped into the running service's
/// `.exe` and the service restarts itself through the service control manager; a 0.3.0 built to fail its health
/// check is rolled back the same way. Sales are posted between the steps and all survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_service_updates_itself_and_rolls_back_under_wine() {
    const TARGET: &str = "x86_64-pc-windows-gnu";
    let (Some(wine), Some(built)) = (wine(), windows_agent()) else {
        require_tool("Wine (`wine64`) and the Windows agent (`.ci/windows/build.sh` builds it)", false);
        return;
    };
    let (good, bad) = (
        built.with_file_name("storesync-agent-0.2.0.exe"),
        built.with_file_name("storesync-agent-0.3.0-unhealthy.exe"),
    );
    if !require_tool(
        "the Windows agent's update builds (`.ci/windows/build.sh --update-builds` makes them)",
        good.exists() && bad.exists(),
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let hub_dir = r.join("hub");
    let hub = start_hub(&hub_dir, "127.0.0.1:0", None, TOKEN);
    let hc = hub_client(None);
    let keys = r.join("keys");
    let public = hub_cli(&["release", "keygen", "--out", keys.to_str().unwrap()], r);
    let public = public.lines().last().unwrap().trim().to_owned();

    let bin = r.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("storesync-agent.exe");
    std::fs::copy(&built, &exe).unwrap();
    std::fs::copy(built.with_file_name("bcryptprimitives.dll"), bin.join("bcryptprimitives.dll")).unwrap();
    let guard = Prefix { wine: &wine, path: r.join("prefix") };
    let prefix = guard.path.clone();
    let data = r.join("data");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let c = client();

    let code = enroll_code(&hub_dir, "S-WIN", "T1");
    let out = wine_command(&wine, &prefix)
        .arg(&exe)
        .args(["--data-dir", &z(&data), "enroll", "--hub", &hub.url, "--code", &code])
        .output()
        .unwrap();
    assert!(out.status.success(), "enrolling under Wine: {}", String::from_utf8_lossy(&out.stderr));
    // Wine lacks bcryptprimitives.dll, which every Rust program imports. Beside the installed .exe the shim does;
    // a downloaded release runs (`--version`) from elsewhere first, so it goes in the prefix's system32 too.
    let system32 = prefix.join("drive_c/windows/system32");
    std::fs::copy(built.with_file_name("bcryptprimitives.dll"), system32.join("bcryptprimitives.dll")).unwrap();
    let config = r.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = '{}'\nlisten = \"127.0.0.1:{port}\"\nupdate_keys = [\"{public}\"]\n\
             update_check_interval_s = 86400\nupdate_health_timeout_s = 60\n",
            z(&data)
        ),
    )
    .unwrap();
    let agent = format!("{} --config {}", z(&exe), z(&config));
    let flag = r.join("go");
    let script = [
        "@echo off".to_owned(),
        format!("sc create storesync-agent binPath= \"{agent} service run\""),
        "net start storesync-agent".into(),
        "echo MARK started".into(),
        format!(":wait\r\nif exist {} goto go\r\nping -n 2 127.0.0.1 >NUL\r\ngoto wait\r\n:go", z(&flag)),
        "net stop storesync-agent".into(),
        "echo MARK done".into(),
        "exit /b 0".into(),
    ]
    .join("\r\n");
    let bat = r.join("service.bat");
    std::fs::write(&bat, script + "\r\n").unwrap();
    let session_log = r.join("session.log");
    let mut session = wine_command(&wine, &prefix)
        .args(["cmd", "/c", &z(&bat)])
        .stdout(std::fs::File::create(&session_log).unwrap())
        .stderr(std::fs::File::create(r.join("session.err")).unwrap())
        .spawn()
        .unwrap();
    let logs = data.join("logs");
    wait_until(&c, &url, true, "the service to answer", &session_log).await;
    let s = status(&c, &url).await;
    assert_eq!(
        (s["version"].as_str(), s["target"].as_str(), s["update"]["enabled"].as_bool()),
        (Some("0.1.0"), Some(TARGET), Some(true)),
        "{s}"
    );
    let mut sold = sell(&c, &url, 10).await;

    // 0.2.0: verified, swapped into the service's .exe, and started again by the service control manager.
    publish(&hc, &hub.url, &sign_for(r, &keys.join("release.key"), &good, "0.2.0", TARGET)).await;
    roll_out_for(&hc, &hub.url, "0.2.0", TARGET).await;
    let got = check_now(&c, &url).await;
    assert_eq!(got["outcome"], "installing", "{got}");
    wait_for_status(&c, &url, "0.2.0 to run healthy", &logs, |v| {
        v["version"] == "0.2.0" && v["update"]["trial"].is_null()
    })
    .await;
    assert_eq!(journal_ids(&c, &url).await, sold, "the journal survived the update");
    sold.extend(sell(&c, &url, 10).await);

    // 0.3.0 fails its health check: the 0.2.0 kept aside is swapped back and the service restarted again.
    publish(&hc, &hub.url, &sign_for(r, &keys.join("release.key"), &bad, "0.3.0", TARGET)).await;
    roll_out_for(&hc, &hub.url, "0.3.0", TARGET).await;
    let got = check_now(&c, &url).await;
    assert_eq!(got["outcome"], "installing", "{got}");
    wait_for_status(&c, &url, "0.3.0 to be rolled back", &logs, |v| {
        v["version"] == "0.2.0" && v["update"]["rolled_back"].as_array().is_some_and(|r| r.iter().any(|x| x == "0.3.0"))
    })
    .await;
    wait_for_halt(&hc, &hub.url, "0.3.0").await;
    assert_eq!(journal_ids(&c, &url).await, sold, "the journal survived the rollback");
    sold.extend(sell(&c, &url, 10).await);

    std::fs::write(&flag, b"").unwrap();
    let start = Instant::now();
    while session.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(180), "the Wine session did not finish");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let text: String =
        std::fs::read_dir(&logs).unwrap().flatten().map(|e| std::fs::read_to_string(e.path()).unwrap()).collect();
    assert_eq!(text.matches("the service restarts into it").count(), 3, "install, install, rollback:\n{text}");
    assert!(text.contains("failed its health check"), "{text}");
    let out = agent_cli(&data, &["verify-journal"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("journal intact: {} events", sold.len())), "{stdout}");
    println!(
        "windows self-update under wine: 0.1.0 → 0.2.0 → 0.3.0 rolled back to 0.2.0; {} sales, journal verified",
        sold.len()
    );
}
