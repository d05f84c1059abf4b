//! Issue #5's fault scenarios, with the real binaries behind the in-process fault proxy
//! (`storesync_tests::fault`). Every scenario prints one `RELIABILITY` line (scenario, rounds, operations, lost,
//! duplicated, other failures) for docs/RELIABILITY.md. `STORESYNC_LONG=1` runs a ten times longer campaign.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use storesync_tests::fault::Proxy;
use storesync_tests::proc::{Running, agent_cli, agent_command, require_tool, start_agent_with, start_hub};
use storesync_tests::sales::{SKUS, sale};
use uuid::Uuid;

use crate::util::{
    TOKEN, check_exactly_once, client, enroll, get_json, hub_client, hub_on_hand, libfaketime, on_hand, sell, status,
    sync_now, wait_for_events,
};

/// How much longer a `STORESYNC_LONG=1` campaign runs.
fn scale() -> usize {
    if std::env::var("STORESYNC_LONG").is_ok_and(|v| v == "1") { 10 } else { 1 }
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").trim_end_matches('/').parse().expect("hub address")
}

/// Lost acknowledgements: the proxy resets 20 % of upload connections after the hub has answered (so the hub
/// committed the batch, and the agent never heard) while two tills journal 20,000 sales between them. The hub ends
/// with every acknowledged event exactly once, in order, with its chain intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acknowledgements_lose_and_double_nothing() {
    let per_till = 10_000 * scale();
    let root = tempfile::tempdir().unwrap();
    let tills = ["T1", "T2"];
    // Small batches, so there are many uploads to lose the answers of.
    let (hub, proxy, agents) = fleet(root.path(), &tills, "upload_batch_events = 200\n").await;
    proxy.faults.set(|f| {
        f.reset_after_request = 0.2;
        f.only_requests_starting_with = Some(b"POST /v1/sync/upload".to_vec());
    });

    let c = client();
    let acked = sell_everywhere(&c, &agents, per_till).await;
    let total = per_till * tills.len();
    let events = wait_for_events(&hub_client(None), &hub.url, total, Duration::from_secs(300)).await;
    let counts = &proxy.faults.counts;
    let (uploads, resets) =
        (counts.requests_matched.load(Ordering::Relaxed), counts.resets_after_request.load(Ordering::Relaxed));
    let (lost, duplicated) = lost_and_duplicated(&events, acked.values().flatten());
    println!(
        "RELIABILITY | lost acknowledgements (20% of upload answers reset after the hub committed) | 1 | {total} \
         sales, {uploads} uploads, {resets} answers reset | {lost} | {duplicated} | 0 |"
    );
    assert!(resets >= 10, "the proxy reset only {resets} of {uploads} upload answers");
    check_exactly_once(&events, &acked);
    for (till, agent) in agents {
        // The hub has everything; the agent learns it at its next successful upload round (its last answer may
        // have been one of the resets).
        let mut st: Value = status(&c, &agent.url).await;
        for _ in 0..300 {
            if st["unsynced"] == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            st = status(&c, &agent.url).await;
        }
        assert_eq!(st["unsynced"], 0, "{st}");
        agent.stop();
        let out = agent_cli(&root.path().join(format!("S1-{till}")), &["verify-journal"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    drop(proxy);
    hub.stop();
}

/// Sells `per_till` sales on every agent at once; answers the ids each acknowledged, by (store, till).
async fn sell_everywhere(
    c: &reqwest::Client,
    agents: &[(String, Running)],
    per_till: usize,
) -> BTreeMap<(String, String), BTreeSet<Uuid>> {
    let tasks: Vec<_> = agents.iter().map(|(_, a)| tokio::spawn(sell(c.clone(), a.url.clone(), per_till))).collect();
    let mut acked = BTreeMap::new();
    for ((till, _), task) in agents.iter().zip(tasks) {
        acked.insert(("S1".to_owned(), till.clone()), task.await.unwrap());
    }
    acked
}

/// `rounds` times over, every agent syncs until its backlog is at the hub, without an error.
async fn sync_all<'a>(c: &reqwest::Client, agents: impl Iterator<Item = &'a Running> + Clone, rounds: usize) {
    for _ in 0..rounds {
        for a in agents.clone() {
            let st = sync_now(c, &a.url).await;
            assert_eq!((st["unsynced"].as_u64(), &st["last_error"]), (Some(0), &Value::Null), "{st}");
        }
    }
}

/// Of the `acked` ids, how many the hub's `events` lack, and how many events the hub holds twice.
fn lost_and_duplicated<'a>(events: &[Value], acked: impl IntoIterator<Item = &'a Uuid>) -> (usize, usize) {
    let ids: BTreeSet<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
    let lost = acked.into_iter().filter(|id| !ids.contains(id.to_string().as_str())).count();
    (lost, events.len() - ids.len())
}

/// Starts a hub and a fault proxy in front of it, and enrols `tills` of store S1 through the proxy.
async fn fleet(root: &std::path::Path, tills: &[&str], agent_toml: &str) -> (Running, Proxy, Vec<(String, Running)>) {
    let hub_dir = root.join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    let hub = start_hub(&hub_dir, "127.0.0.1:0", None, TOKEN);
    let proxy = Proxy::start(addr_of(&hub.url)).await.unwrap();
    let config = root.join("agent.toml");
    std::fs::write(&config, agent_toml).unwrap();
    let mut agents = Vec::new();
    for till in tills {
        let dir = root.join(format!("S1-{till}"));
        enroll(&dir, &hub_dir, &proxy.url(), "S1", till, None);
        agents.push((till.to_string(), start_agent_with(&dir, None, Some(&config))));
    }
    (hub, proxy, agents)
}

/// A flapping link: every 300 ms the link between the tills and the hub goes down (new connections refused, every
/// answer in flight dropped) or comes back, while 4 tills take 10,000 sales between them. Once it heals: every
/// acknowledged sale is at the hub exactly once, and stock is equal at the hub and at every till.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_link_loses_and_doubles_nothing_and_stock_converges() {
    let per_till = 2_500 * scale();
    let root = tempfile::tempdir().unwrap();
    let tills = ["T1", "T2", "T3", "T4"];
    let (hub, proxy, agents) = fleet(root.path(), &tills, "upload_batch_events = 200\n").await;
    let flapping = tokio_util::sync::CancellationToken::new();
    let toggler = {
        let (faults, stop) = (proxy.faults.clone(), flapping.clone());
        tokio::spawn(async move {
            let mut flips = 0u64;
            while !stop.is_cancelled() {
                let down = flips.is_multiple_of(2);
                faults.set(|f| {
                    f.refuse = down;
                    f.reset_after_request = if down { 1.0 } else { 0.0 };
                });
                flips += 1;
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
            faults.set(|f| *f = Default::default());
            flips
        })
    };
    let c = client();
    let acked = sell_everywhere(&c, &agents, per_till).await;
    flapping.cancel();
    let flips = toggler.await.unwrap();

    // The link has healed: every till syncs (twice, so each also gets the others' last changes).
    sync_all(&c, agents.iter().map(|(_, a)| a), 2).await;
    let total = per_till * tills.len();
    let events = wait_for_events(&hub_client(None), &hub.url, total, Duration::from_secs(120)).await;
    let (lost, duplicated) = lost_and_duplicated(&events, acked.values().flatten());
    let counts = &proxy.faults.counts;
    let (refused, resets) =
        (counts.refused.load(Ordering::Relaxed), counts.resets_after_request.load(Ordering::Relaxed));
    // Expected stock: every sale takes one of its SKU (SKUS[i % 5]) and one BAG.
    let mut want: BTreeMap<&str, i64> = BTreeMap::new();
    for i in 0..per_till {
        *want.entry(SKUS[i % SKUS.len()]).or_insert(0) -= tills.len() as i64;
    }
    want.insert("BAG", -((per_till * tills.len()) as i64));
    let mut unequal = 0;
    for (sku, want) in &want {
        let hub_has = hub_on_hand(&c, &hub.url, TOKEN, "S1", sku).await;
        unequal += usize::from(hub_has != *want);
        for (_, a) in &agents {
            unequal += usize::from(on_hand(&c, &a.url, sku).await != *want);
        }
    }
    println!(
        "RELIABILITY | flapping link (down/up every 300 ms: connections refused, answers dropped), 4 tills | 1 | \
         {total} sales, {flips} flips, {refused} connections refused, {resets} answers dropped | {lost} | \
         {duplicated} | {unequal} stock readings unequal |"
    );
    assert!(flips >= 4 && refused + resets > 0, "the link did not flap: {flips} flips, {refused} refused");
    check_exactly_once(&events, &acked);
    assert_eq!(unequal, 0, "stock differs between the hub, the tills and the journals");
    for (till, a) in agents {
        a.stop();
        let out = agent_cli(&root.path().join(format!("S1-{till}")), &["verify-journal"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    drop(proxy);
    hub.stop();
}

/// Clock jumps: the agent's wall clock runs a day ahead, then jumps two days back (to a day behind), then returns,
/// with a restart at each jump (libfaketime, which fakes the wall clock and leaves the monotonic one alone). Sales
/// keep their seq order, repeats of earlier event ids are still recognised across the jumps, and the hub gets every
/// sale exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jumps_change_neither_order_nor_dedupe() {
    let Some(lib) = libfaketime() else {
        require_tool("libfaketime (Debian package `faketime`)", false);
        return;
    };
    let per_phase = 300 * scale();
    let root = tempfile::tempdir().unwrap();
    let (hub, proxy, agents) = fleet(root.path(), &["T1"], "").await;
    let dir = root.path().join("S1-T1");
    let (_, agent) = agents.into_iter().next().unwrap();
    agent.stop();
    let c = client();
    let mut acked: BTreeSet<Uuid> = BTreeSet::new();
    let mut first_of_phase = Vec::new();
    let mut repeats = 0usize;
    for (phase, offset) in ["+1d", "-1d", "+0"].into_iter().enumerate() {
        let mut cmd = agent_command(&dir, None, None);
        cmd.env("LD_PRELOAD", &lib).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        let agent = Running::start(cmd, &dir.join("agent.log"));
        let before = acked.len();
        let ids = sell(c.clone(), agent.url.clone(), per_phase).await;
        first_of_phase.push(before as u64 + 1);
        // Repeats of sales journaled under another clock (earlier phases) are recognised: 200, same seq.
        let journal = crate::util::journal(&c, &agent.url).await;
        for e in journal.iter().filter(|e| acked.contains(&e.event_id)).take(20) {
            let sku = e.body["lines"][0]["sku"].as_str().unwrap();
            let r = c.post(format!("{}/v1/sales", agent.url)).json(&sale(e.event_id, sku, 1)).send().await.unwrap();
            assert_eq!(r.status(), 200, "phase {phase}: a repeat of {} was not recognised", e.event_id);
            let receipt: Value = r.json().await.unwrap();
            assert_eq!(receipt["seq"].as_u64(), Some(e.seq), "phase {phase}: a repeat got another seq");
            repeats += 1;
        }
        acked.extend(ids);
        let st = sync_now(&c, &agent.url).await;
        assert_eq!(st["unsynced"].as_u64(), Some(0), "phase {phase}: {st}");
        agent.stop();
    }
    let agent = start_agent_with(&dir, None, None);
    let journal = crate::util::journal(&c, &agent.url).await;
    let seqs: Vec<u64> = journal.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=acked.len() as u64).collect::<Vec<_>>(), "seqs out of order or with gaps");
    // The fake clock really moved: the second phase was recorded before the first.
    let recorded = |seq: u64| -> String {
        let conn = rusqlite::Connection::open(dir.join("journal.db")).unwrap();
        conn.query_row("SELECT recorded_at FROM journal WHERE seq = ?1", [seq], |r| r.get(0)).unwrap()
    };
    let parse = |s: String| time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).unwrap();
    let (a, b, n) =
        (parse(recorded(first_of_phase[0])), parse(recorded(first_of_phase[1])), parse(recorded(first_of_phase[2])));
    assert!(b < a && a - b > time::Duration::hours(40), "clock did not jump back: {a} then {b}");
    assert!(n > b && a > n, "clock did not return: {a}, {b}, {n}");
    let events = wait_for_events(&hub_client(None), &hub.url, acked.len(), Duration::from_secs(60)).await;
    let ids: BTreeSet<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
    let lost = acked.iter().filter(|id| !ids.contains(id.to_string().as_str())).count();
    let duplicated = events.len() - ids.len();
    println!(
        "RELIABILITY | clock jumps (agent clock +24 h, then -24 h, then true, a restart at each) | 1 | {} sales, \
         {repeats} repeats of earlier event ids | {lost} | {duplicated} | 0 |",
        acked.len()
    );
    check_exactly_once(&events, &BTreeMap::from([(("S1".to_owned(), "T1".to_owned()), acked)]));
    agent.stop();
    let out = agent_cli(&dir, &["verify-journal"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(proxy);
    hub.stop();
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (like `16m`) at `dir`; `None` when this process may not mount (not root).
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the file system is full (1 MiB writes, then 4 KiB ones).
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4096, 512] {
        let zeros = vec![0u8; chunk];
        while f.write_all(&zeros).is_ok() && f.sync_data().is_ok() {}
    }
}

/// Disk full at the agent: its data dir is on a small tmpfs that a filler file then fills. While full, every sale is
/// answered 503 `journal_unavailable` and none of those is journaled; no sale is ever answered 201 without being
/// journaled; once the filler is deleted, sales are answered 201 again, and the journal verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_503s_writes_nothing_and_recovers() {
    let root = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&root.path().join("disk"), "16m") else {
        require_tool("permission to mount a tmpfs (root)", false);
        return;
    };
    let dir = disk.0.join("agent");
    // The log is on the full disk too, as it would be on a till: a log line that cannot be written must not take
    // the agent down.
    let agent = start_agent_with(&dir, Some(("S1", "T1")), None);
    let log = dir.join("agent.log");
    let c = client();
    let mut answered: BTreeMap<Uuid, u16> = BTreeMap::new();
    let post = async |id: Uuid, i: usize| {
        let r = c.post(format!("{}/v1/sales", agent.url)).json(&sale(id, SKUS[i % SKUS.len()], 1)).send().await;
        let r = r.unwrap_or_else(|e| panic!("POST: {e}; agent log:\n{}", storesync_tests::proc::tail(&log)));
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, body)
    };
    for i in 0..200 {
        let id = Uuid::new_v4();
        let (status, body) = post(id, i).await;
        assert_eq!(status, 201, "{body}");
        answered.insert(id, status);
    }
    let filler = disk.0.join("filler");
    fill(&filler);
    let mut refused = 0;
    for i in 0..300 {
        let id = Uuid::new_v4();
        let (status, body) = post(id, i).await;
        assert!(status == 201 || status == 503, "while full: {status} {body}");
        if status == 503 {
            assert_eq!(body["error"], "journal_unavailable", "{body}");
            refused += 1;
        }
        answered.insert(id, status);
    }
    std::fs::remove_file(&filler).unwrap();
    // Space is back: each new sale is retried with its event id until it is journaled (the first may still meet the
    // writer recovering).
    let mut retries = 0;
    for i in 0..100 {
        let id = Uuid::new_v4();
        let mut status = 0;
        for _ in 0..50 {
            let (s, body) = post(id, i).await;
            assert!(s == 201 || s == 503, "after: {s} {body}");
            status = s;
            if s == 201 {
                break;
            }
            retries += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, 201, "the agent did not recover once space returned");
        answered.insert(id, status);
    }
    let journal = crate::util::journal(&c, &agent.url).await;
    agent.stop();
    let seqs: Vec<u64> = journal.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=journal.len() as u64).collect::<Vec<_>>(), "seqs out of order or with gaps");
    let journaled: BTreeMap<Uuid, usize> = journal.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.event_id).or_insert(0) += 1;
        m
    });
    let lost = answered.iter().filter(|(id, s)| **s == 201 && !journaled.contains_key(id)).count();
    let duplicated = journaled.values().filter(|n| **n > 1).count();
    let written_though_refused = answered.iter().filter(|(id, s)| **s == 503 && journaled.contains_key(id)).count();
    println!(
        "RELIABILITY | disk full at the agent (16 MiB tmpfs filled, then freed) | 1 | {} sales, {refused} answered \
         503 while full, {retries} retries after | {lost} | {duplicated} | {written_though_refused} journaled though \
         answered 503 |",
        answered.len()
    );
    assert!(refused >= 10, "the disk never filled: only {refused} refusals");
    assert_eq!((lost, duplicated, written_though_refused), (0, 0, 0));
    let out = agent_cli(&dir, &["verify-journal"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The event ids of an agent's journal.
async fn journaled(c: &reqwest::Client, url: &str) -> BTreeSet<Uuid> {
    crate::util::journal(c, url).await.into_iter().map(|e| e.event_id).collect()
}

/// Crash loops: 50 rounds of load from 4 clients on 2 tills, each round ending with a SIGKILL of one of the agents
/// (taking turns) at a random moment, and 20 of them also with a SIGKILL of the hub, while the agents upload in
/// small batches. At the end: every sale an agent acknowledged is in its journal, every journaled sale is at the hub
/// exactly once with its chain intact, and stock is equal at the hub, at both tills and in the journals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loops_of_agents_and_hub_lose_and_double_nothing() {
    use rand::Rng;
    let rounds = 50 * scale();
    let root = tempfile::tempdir().unwrap();
    let tills = ["T1", "T2"];
    let (hub, _proxy, agents) = fleet(root.path(), &tills, "upload_batch_events = 50\n").await;
    let hub_dir = root.path().join("hub");
    let port = hub.url.rsplit(':').next().unwrap().to_owned();
    let config = root.path().join("agent.toml");
    let mut hub = Some(hub);
    let mut agents: Vec<Option<Running>> = agents.into_iter().map(|(_, a)| Some(a)).collect();
    let c = client();
    let acked: std::sync::Arc<std::sync::Mutex<BTreeSet<Uuid>>> = Default::default();
    let (mut agent_kills, mut hub_kills) = (0usize, 0usize);
    for round in 0..rounds {
        for (i, a) in agents.iter_mut().enumerate() {
            if a.is_none() {
                *a = Some(start_agent_with(&root.path().join(format!("S1-{}", tills[i])), None, Some(&config)));
            }
        }
        if hub.is_none() {
            hub = Some(start_hub(&hub_dir, &format!("127.0.0.1:{port}"), None, TOKEN));
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let mut tasks = Vec::new();
        for a in agents.iter().flatten() {
            for _ in 0..2 {
                let (c, url, acked, stop) = (c.clone(), a.url.clone(), acked.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let mut n = 0usize;
                    while !stop.is_cancelled() {
                        let id = Uuid::new_v4();
                        let Ok(r) =
                            c.post(format!("{url}/v1/sales")).json(&sale(id, SKUS[n % SKUS.len()], 1)).send().await
                        else {
                            break;
                        };
                        if r.status().is_success() {
                            acked.lock().unwrap().insert(id);
                        }
                        n += 1;
                    }
                }));
            }
        }
        let wait = rand::rng().random_range(100..400);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        // Kill without warning, under load.
        if let Some(a) = agents[round % 2].take() {
            a.kill();
            agent_kills += 1;
        }
        if round % 5 < 2
            && let Some(h) = hub.take()
        {
            h.kill();
            hub_kills += 1;
        }
        stop.cancel();
        for t in tasks {
            t.await.unwrap();
        }
    }
    // Everything back up; every till syncs until its backlog is at the hub (twice, for the other till's stock).
    let hub = hub.unwrap_or_else(|| start_hub(&hub_dir, &format!("127.0.0.1:{port}"), None, TOKEN));
    let agents: Vec<Running> = agents
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            a.unwrap_or_else(|| start_agent_with(&root.path().join(format!("S1-{}", tills[i])), None, Some(&config)))
        })
        .collect();
    sync_all(&c, agents.iter(), 2).await;
    let mut journals: BTreeMap<(String, String), BTreeSet<Uuid>> = BTreeMap::new();
    let mut all_events = Vec::new();
    for (till, a) in tills.iter().zip(&agents) {
        journals.insert(("S1".to_owned(), till.to_string()), journaled(&c, &a.url).await);
        all_events.extend(crate::util::journal(&c, &a.url).await);
    }
    let in_journals: BTreeSet<Uuid> = journals.values().flatten().copied().collect();
    let acked = acked.lock().unwrap().clone();
    let lost = acked.difference(&in_journals).count();
    let total = in_journals.len();
    let events = wait_for_events(&hub_client(None), &hub.url, total, Duration::from_secs(120)).await;
    let ids: BTreeSet<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
    let duplicated = events.len() - ids.len();
    let want = crate::util::movements(&all_events);
    let mut unequal = 0;
    for (sku, want) in &want {
        unequal += usize::from(hub_on_hand(&c, &hub.url, TOKEN, "S1", sku).await != *want);
        for a in &agents {
            unequal += usize::from(on_hand(&c, &a.url, sku).await != *want);
        }
    }
    println!(
        "RELIABILITY | crash loops (SIGKILL under load: {agent_kills} agent kills, {hub_kills} hub kills) | {rounds} | \
         {} sales acknowledged, {total} journaled | {lost} | {duplicated} | {unequal} stock readings unequal |",
        acked.len()
    );
    assert!(agent_kills >= 50 * scale() && hub_kills >= 20 * scale(), "{agent_kills} agent, {hub_kills} hub kills");
    assert_eq!(lost, 0, "acknowledged sales missing from the journals");
    check_exactly_once(&events, &journals);
    assert_eq!(unequal, 0, "stock differs between the hub, the tills and the journals");
    for (till, a) in tills.iter().zip(agents) {
        a.stop();
        let out = agent_cli(&root.path().join(format!("S1-{till}")), &["verify-journal"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    hub.stop();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Backup restore: a till's data dir is rolled back to a copy taken after 40 of its 100 uploaded sales, and the
/// till sells 70 more. The hub keeps its copy (no overwrite, no duplicate) and refuses the diverging chain; the
/// agent reports the refusal; and the recovery procedure of docs/OPERATIONS.md ("Restore") brings the 70 sales to
/// the hub exactly once, under a fresh till.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_is_refused_and_the_documented_recovery_works() {
    let root = tempfile::tempdir().unwrap();
    let (hub, proxy, agents) = fleet(root.path(), &["T1"], "").await;
    let dir = root.path().join("S1-T1");
    let (_, agent) = agents.into_iter().next().unwrap();
    let c = client();
    let mut before: BTreeSet<Uuid> = sell(c.clone(), agent.url.clone(), 40).await;
    agent.stop();
    let backup = root.path().join("backup");
    copy_dir(&dir, &backup);
    let agent = start_agent_with(&dir, None, None);
    before.extend(sell(c.clone(), agent.url.clone(), 60).await);
    let st = sync_now(&c, &agent.url).await;
    assert_eq!(st["unsynced"].as_u64(), Some(0), "{st}");
    agent.stop();

    // The disk is restored from the backup; the till sells on.
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(&backup, &dir);
    let agent = start_agent_with(&dir, None, None);
    let after = sell(c.clone(), agent.url.clone(), 70).await;
    let st = sync_now(&c, &agent.url).await;
    let reported = st["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(
        ["chain_broken", "sequence_regression", "hub_ahead"].iter().any(|code| reported.contains(code)),
        "the agent does not report the regression: {st}"
    );
    // It keeps everything queued (its acknowledgement cursor is the backup's).
    assert!(st["unsynced"].as_u64().is_some_and(|n| n >= 70), "{st}");
    // No silent overwrite, no duplicate: the hub holds exactly the 100 sales it had.
    let hc = hub_client(None);
    let events = crate::util::hub_events(&hc, &hub.url).await;
    check_exactly_once(&events, &BTreeMap::from([(("S1".to_owned(), "T1".to_owned()), before.clone())]));
    agent.stop();

    // Recovery (docs/OPERATIONS.md, "Restore"): enrol a fresh till id, and post the restored journal's entries the
    // hub does not hold to it, with their own event ids.
    let export = agent_cli(&dir, &["export", "--format", "jsonl"]);
    assert!(export.status.success());
    let at_hub: BTreeSet<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
    let fresh_dir = root.path().join("S1-T1-r1");
    enroll(&fresh_dir, &root.path().join("hub"), &proxy.url(), "S1", "T1-r1", None);
    let fresh = start_agent_with(&fresh_dir, None, None);
    let mut reposted = BTreeSet::new();
    for line in String::from_utf8(export.stdout).unwrap().lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        let id = e["event_id"].as_str().unwrap();
        if at_hub.contains(id) {
            continue;
        }
        let mut body = e["body"].clone();
        body["event_id"] = Value::from(id);
        let kind = e["kind"].as_str().unwrap();
        let r = c.post(format!("{}/v1/{kind}s", fresh.url)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        reposted.insert(id.parse::<Uuid>().unwrap());
    }
    assert_eq!(reposted, after, "the entries the hub lacks are exactly the sales taken after the restore");
    let st = sync_now(&c, &fresh.url).await;
    assert_eq!((st["unsynced"].as_u64(), &st["last_error"]), (Some(0), &Value::Null), "{st}");
    let events = wait_for_events(&hc, &hub.url, 170, Duration::from_secs(60)).await;
    let ids: BTreeSet<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
    let lost = before.iter().chain(&after).filter(|id| !ids.contains(id.to_string().as_str())).count();
    let duplicated = events.len() - ids.len();
    println!(
        "RELIABILITY | backup restore (data dir rolled back 60 sales, then 70 more sold; recovered per OPERATIONS.md) \
         | 1 | 170 sales | {lost} | {duplicated} | 0 |"
    );
    check_exactly_once(
        &events,
        &BTreeMap::from([(("S1".to_owned(), "T1".to_owned()), before), (("S1".to_owned(), "T1-r1".to_owned()), after)]),
    );
    fresh.stop();
    drop(proxy);
    hub.stop();
}

/// A black-hole link: every other second the link swallows everything (connections open, nothing forwarded, nothing
/// answered), while 2 tills take 6,000 sales between them. Agents give up a hung request after their
/// `hub_request_timeout_s` (2 s here) and retry. Once the link heals: every sale at the hub exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_link_loses_and_doubles_nothing() {
    let per_till = 3_000 * scale();
    let root = tempfile::tempdir().unwrap();
    let tills = ["T1", "T2"];
    let toml = "upload_batch_events = 200\nhub_request_timeout_s = 2\n";
    let (hub, proxy, agents) = fleet(root.path(), &tills, toml).await;
    let flapping = tokio_util::sync::CancellationToken::new();
    let toggler = {
        let (faults, stop) = (proxy.faults.clone(), flapping.clone());
        tokio::spawn(async move {
            let mut holes = 0u64;
            while !stop.is_cancelled() {
                holes += 1;
                faults.set(|f| f.black_hole = holes % 2 == 1);
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            faults.set(|f| f.black_hole = false);
            holes / 2
        })
    };
    let c = client();
    let acked = sell_everywhere(&c, &agents, per_till).await;
    // Keep the link flapping a while after the sales, so uploads meet it too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    flapping.cancel();
    let holes = toggler.await.unwrap();
    sync_all(&c, agents.iter().map(|(_, a)| a), 1).await;
    let total = per_till * tills.len();
    let events = wait_for_events(&hub_client(None), &hub.url, total, Duration::from_secs(120)).await;
    let (lost, duplicated) = lost_and_duplicated(&events, acked.values().flatten());
    let swallowed = proxy.faults.counts.swallowed.load(Ordering::Relaxed);
    println!(
        "RELIABILITY | black-hole link (1 s swallowing every other second; agent request timeout 2 s), 2 tills | 1 | \
         {total} sales, {holes} black holes, {swallowed} chunks swallowed | {lost} | {duplicated} | 0 |"
    );
    assert!(holes >= 2 && swallowed > 0, "the link never swallowed anything: {holes} holes");
    check_exactly_once(&events, &acked);
    for (_, a) in agents {
        a.stop();
    }
    drop(proxy);
    hub.stop();
}

/// Poison events: a till running a newer build (a client signing its own chain, as that build would) uploads 400
/// sales in batches of 25, two of which this hub cannot process: one carries a field its schema does not know, one
/// breaks its payment rule. A real agent of the same store sells 100 sales at the same time. Every batch is
/// acknowledged whole, both poison events are stored in their chain and quarantined where head office sees them,
/// nothing behind them waits, and compaction stops that till's cut before the first of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_quarantined_and_block_nothing() {
    let n = 400 * scale();
    let poison = [n as u64 / 4, n as u64 * 3 / 4];
    let root = tempfile::tempdir().unwrap();
    let (hub, proxy, agents) = fleet(root.path(), &["T1"], "").await;
    let h = hub_client(None);
    let code = storesync_tests::proc::enroll_code(&root.path().join("hub"), "S1", "T9");
    let enroll = serde_json::json!({"code": code, "agent_version": "storesync-agent/9.0.0"});
    let enrolled: Value =
        h.post(format!("{}/v1/enroll", hub.url)).json(&enroll).send().await.unwrap().json().await.unwrap();
    let cred = enrolled["credential"].as_str().expect("a credential").to_owned();

    let c = client();
    let seller = tokio::spawn(crate::util::sell(c.clone(), agents[0].1.url.clone(), 100));
    let journal_id = Uuid::new_v4();
    let mut prev = storesync_shared::genesis_hash("S1", "T9");
    let mut t9 = BTreeSet::new();
    let mut quarantined_acks = Vec::new();
    let mut batch = Vec::new();
    for seq in 1..=n as u64 {
        let event_id = Uuid::new_v4();
        let mut body = sale(event_id, "NEW-1", 1);
        body.as_object_mut().unwrap().remove("event_id");
        if seq == poison[0] {
            body["loyalty_points"] = serde_json::json!(40); // a field of the newer schema
        } else if seq == poison[1] {
            body["payments"][0]["amount_minor"] = serde_json::json!(1); // "pay the rest on account", say
        }
        let e = signed(("S1", "T9"), seq, &prev, event_id, body);
        prev = e.hash.clone();
        t9.insert(event_id);
        batch.push(e);
        if batch.len() == 25 || seq == n as u64 {
            let req = storesync_shared::wire::UploadRequest {
                journal_id,
                agent_version: "storesync-agent/9.0.0".into(),
                backlog: 0,
                oldest_unsynced_age_s: 0,
                last_seq: seq,
                events: std::mem::take(&mut batch),
            };
            let res = h.post(format!("{}/v1/sync/upload", hub.url)).bearer_auth(&cred).json(&req).send().await.unwrap();
            assert_eq!(res.status(), 200, "batch through seq {seq} was refused");
            let ack: storesync_shared::wire::UploadAck = res.json().await.unwrap();
            assert_eq!(ack.acked_through, seq, "the batch through {seq} was not acknowledged whole");
            quarantined_acks.extend(ack.quarantined);
        }
    }
    assert_eq!(quarantined_acks, poison, "the acknowledgements name the quarantined seqs");
    let t1 = seller.await.unwrap();
    sync_all(&c, agents.iter().map(|(_, a)| a), 1).await;

    let total = n + 100;
    let events = wait_for_events(&h, &hub.url, total, Duration::from_secs(60)).await;
    let (lost, duplicated) = lost_and_duplicated(&events, t1.iter().chain(&t9));
    let acked = BTreeMap::from([(("S1".to_owned(), "T1".to_owned()), t1), (("S1".to_owned(), "T9".to_owned()), t9)]);
    check_exactly_once(&events, &acked);
    let flagged: Vec<(u64, &str)> = events
        .iter()
        .filter(|e| e["quarantined"] == true)
        .map(|e| (e["seq"].as_u64().unwrap(), e["till"].as_str().unwrap()))
        .collect();
    assert_eq!(flagged, [(poison[0], "T9"), (poison[1], "T9")], "the events feed flags exactly the poison");

    // Head office sees them, with why.
    let admin_get = |path: &str| get_json(&h, format!("{}{path}", hub.url), TOKEN);
    let held = admin_get("/v1/admin/quarantine?store=S1").await;
    let held = held["quarantined"].as_array().unwrap().clone();
    let seqs: Vec<u64> = held.iter().map(|q| q["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, poison);
    assert!(held[0]["reason"].as_str().unwrap().contains("loyalty_points"), "{}", held[0]);
    assert!(held[1]["reason"].as_str().unwrap().contains("payments"), "{}", held[1]);
    let stores = admin_get("/v1/admin/stores").await;
    let t9_view = stores["stores"][0]["tills"].as_array().unwrap().iter().find(|t| t["till"] == "T9").unwrap().clone();
    assert_eq!((t9_view["quarantined"].as_u64(), &t9_view["chain_ok"]), (Some(2), &Value::Bool(true)), "{t9_view}");

    // This hub still cannot process them: a release is refused and changes nothing.
    let res = h
        .post(format!("{}/v1/admin/quarantine/release", hub.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"store": "S1", "till": "T9", "seq": poison[0]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(admin_get("/v1/admin/quarantine").await["quarantined"].as_array().unwrap().len(), 2);

    // Compaction counts T9's sales only up to its first poison event; T1 is unaffected.
    let res = h.post(format!("{}/v1/admin/stores/S1/compact", hub.url)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let snapshot = get_json(&h, format!("{}/v1/sync/snapshot", hub.url), &cred).await;
    assert_eq!(snapshot["cuts"]["T9"].as_u64(), Some(poison[0] - 1), "{}", snapshot["cuts"]);
    assert_eq!(snapshot["cuts"]["T1"].as_u64(), Some(100), "{}", snapshot["cuts"]);
    assert_eq!(hub_on_hand(&h, &hub.url, TOKEN, "S1", "NEW-1").await, -(poison[0] as i64 - 1));
    sync_all(&c, agents.iter().map(|(_, a)| a), 2).await;
    for sku in SKUS {
        assert_eq!(on_hand(&c, &agents[0].1.url, sku).await, hub_on_hand(&h, &hub.url, TOKEN, "S1", sku).await);
    }
    println!(
        "RELIABILITY | poison events (2 of {n} sales from a newer till unprocessable by the hub; a real till sells \
         100 alongside) | 1 | {total} events, {} quarantined | {lost} | {duplicated} | 0 |",
        held.len()
    );
    for (_, a) in agents {
        a.stop();
    }
    drop(proxy);
    hub.stop();
}

/// A journal entry of `till` at `seq` after `prev`, hashed as every till hashes it.
fn signed(
    till: (&str, &str),
    seq: u64,
    prev: &str,
    event_id: Uuid,
    body: Value,
) -> storesync_shared::wire::JournalEvent {
    let kind = storesync_shared::EventKind::Sale;
    let hash = storesync_shared::canonical::event_hash(&storesync_shared::canonical::ChainInput {
        store: till.0,
        till: till.1,
        seq,
        event_id,
        kind,
        body: &storesync_shared::canonical_json(&body),
        prev_hash: prev,
    });
    storesync_shared::wire::JournalEvent {
        seq,
        event_id,
        kind,
        occurred_at: body["occurred_at"].as_str().unwrap().to_owned(),
        body,
        prev_hash: prev.to_owned(),
        hash,
    }
}
