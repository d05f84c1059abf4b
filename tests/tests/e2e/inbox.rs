//! The drop folder through the real binary: files written into `<data-dir>/inbox` (JSON Lines, CSV, ARTS POSLog
//! from tests/fixtures/poslog) end up journaled exactly once, whatever happens: a 100,000-line file (with the
//! agent's memory measured), malformed files, the same file twice, a file written slowly in place, and SIGKILL in
//! the middle of a large file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use storesync_shared::wire::JournalEvent;
use storesync_tests::proc::{Running, agent_cli, agent_command};
use storesync_tests::sales::SKUS;
use uuid::Uuid;

use crate::util::{client, journal, movements, on_hand, status};

/// Settings that keep the tests quick: a short stability window and rescan, and a short wait for files that
/// look cut short.
const CONFIG: &str =
    "inbox_settle_ms = 500\ninbox_rescan_s = 1\ninbox_incomplete_after_s = 4\ninbox_currency = \"EUR\"\n";
/// How long a test waits for the agent to get through its inbox before it gives up.
const PATIENCE: Duration = Duration::from_secs(600);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/poslog")
}

/// A till with its agent running on a data dir in a temp dir.
struct Till {
    dir: tempfile::TempDir,
    config: PathBuf,
    agent: Option<Running>,
    c: reqwest::Client,
}

impl Till {
    fn new(config: &str) -> Till {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let mut till = Till { dir, config: path, agent: None, c: client() };
        till.start();
        till
    }

    fn start(&mut self) {
        let cmd = agent_command(self.dir.path(), Some(("S001", "T1")), Some(&self.config));
        self.agent = Some(Running::start(cmd, &self.dir.path().join("agent.log")));
    }

    fn agent(&self) -> &Running {
        self.agent.as_ref().expect("the agent runs")
    }

    fn url(&self) -> &str {
        &self.agent().url
    }

    fn inbox(&self) -> PathBuf {
        self.dir.path().join("inbox")
    }

    /// Writes a file the way a careful POS does: under a dot-name, then renamed into place.
    fn drop_file(&self, name: &str, bytes: &[u8]) {
        let inbox = self.inbox();
        std::fs::create_dir_all(&inbox).unwrap();
        let tmp = inbox.join(format!(".{name}.part"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, inbox.join(name)).unwrap();
    }

    fn files(&self, sub: &str) -> BTreeSet<String> {
        let dir = if sub.is_empty() { self.inbox() } else { self.inbox().join(sub) };
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls until the named files are all in `processed/` or `rejected/` and nothing waits in the inbox.
    async fn wait_done(&self, processed: &[&str], rejected: &[&str]) -> Value {
        let start = std::time::Instant::now();
        loop {
            let (p, r, waiting) = (self.files("processed"), self.files("rejected"), self.files(""));
            let st = status(&self.c, self.url()).await;
            if processed.iter().all(|f| p.contains(*f))
                && rejected.iter().all(|f| r.contains(*f))
                && waiting.is_empty()
                && st["inbox"]["processing"].is_null()
            {
                return st;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the inbox did not finish: waiting {waiting:?}, processed {p:?}, rejected {r:?}; status {}; log:\n{}",
                st["inbox"],
                storesync_tests::proc::tail(&self.agent().log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn report(&self, name: &str) -> Value {
        let path = self.inbox().join("rejected").join(format!("{name}.error.json"));
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
    }

    fn verify(&self) {
        let out = agent_cli(self.dir.path(), &["verify-journal"]);
        assert!(out.status.success(), "verify-journal: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Every journaled event's stock effect equals what the stock endpoint says.
    async fn check_stock(&self, events: &[JournalEvent]) {
        for (sku, moved) in movements(events) {
            assert_eq!(on_hand(&self.c, self.url(), &sku).await, moved, "stock of {sku}");
        }
    }
}

/// Sale number `i` of the generated files: SKU and quantity vary, `customer_id` names the line.
fn sale_line(i: usize) -> String {
    padded_sale_line(i, 0)
}

/// [`sale_line`] with `pad` more characters in its payment method (at most 190).
fn padded_sale_line(i: usize, pad: usize) -> String {
    let (sku, qty) = (SKUS[i % SKUS.len()], 1 + (i % 3));
    let own_id = if i % 1000 == 7 {
        format!(r#""event_id":"{}","#, Uuid::from_u128(0xabc0_0000 + i as u128))
    } else {
        String::new()
    };
    format!(
        r#"{{"kind":"sale",{own_id}"occurred_at":"2026-11-26T14:05:00+01:00","currency":"EUR","lines":[{{"sku":"{sku}","qty":{qty},"unit_price_minor":249}}],"payments":[{{"method":"card{}","amount_minor":{}}}],"customer_id":"C{i}"}}"#,
        "-".repeat(pad),
        qty * 249
    )
}

/// `n` sales, one per line.
fn sales_file(n: usize) -> Vec<u8> {
    padded_sales_file(n, 0)
}

/// `n` sales of [`padded_sale_line`].
fn padded_sales_file(n: usize, pad: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * (260 + pad));
    for i in 0..n {
        out.extend_from_slice(padded_sale_line(i, pad).as_bytes());
        out.push(b'\n');
    }
    out
}

/// The line number each journaled sale came from (its `customer_id`), in journal order.
fn lines_of(events: &[JournalEvent]) -> Vec<usize> {
    events
        .iter()
        .filter_map(|e| e.body["customer_id"].as_str())
        .filter_map(|c| c.strip_prefix('C')?.parse().ok())
        .collect()
}

/// The stock a file of `n` sales takes.
fn sold(n: usize) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        *out.entry(SKUS[i % SKUS.len()].to_owned()).or_insert(0) -= 1 + (i % 3) as i64;
    }
    out
}

/// `VmHWM` (peak resident memory) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/<pid>/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_line_file_is_journaled_once_in_flat_memory() {
    const N: usize = 100_000;
    let till = Till::new(CONFIG);
    let pid = till.agent().child.id();
    // Up and idle: the inbox watched, the status page served once.
    let st = status(&till.c, till.url()).await;
    assert_eq!(st["inbox"]["enabled"], true);
    let before = peak_rss_kib(pid);
    // About 40 MB: long payment methods make the file large next to what the agent needs anyway (page caches,
    // the automerge document, thread arenas: about 5 to 8 MB measured, whether the file has 20,000 lines or
    // 300,000).
    let file = padded_sales_file(N, 190);
    let size_kib = file.len() as u64 / 1024;
    till.drop_file("big.jsonl", &file);
    drop(file);
    let st = till.wait_done(&["big.jsonl"], &[]).await;
    let after = peak_rss_kib(pid);
    let growth = after.saturating_sub(before);
    eprintln!("inbox: {N} lines ({size_kib} KiB): peak RSS {before} KiB before, {after} KiB after (+{growth} KiB)");
    // A reader that held the file, or its records, would grow by at least the file's size.
    assert!(growth < size_kib / 3, "peak memory grew by {growth} KiB for a {size_kib} KiB file");
    let inbox = &st["inbox"];
    assert_eq!(
        (inbox["records_journaled"].as_u64(), inbox["files_processed"].as_u64(), inbox["parse_errors"].as_u64()),
        (Some(N as u64), Some(1), Some(0)),
        "{inbox}"
    );
    assert_eq!(inbox["backlog_files"], 0);
    let events = journal(&till.c, till.url()).await;
    assert_eq!(events.len(), N);
    // Every line exactly once, in the file's order.
    assert_eq!(lines_of(&events), (0..N).collect::<Vec<_>>());
    let ids: BTreeSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), N);
    // A line's own event_id is kept.
    assert_eq!(events[7].event_id, Uuid::from_u128(0xabc0_0007));
    for (sku, want) in sold(N) {
        assert_eq!(on_hand(&till.c, till.url(), &sku).await, want, "stock of {sku}");
    }
    till.verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poslog_samples_are_journaled_as_sales_and_returns_once() {
    let till = Till::new(CONFIG);
    let names = ["tlog-S001-ws3-20261126-14.xml", "tlog-S001-ws5-20261126-eod.xml", "txn-S001-ws3-4716.xml"];
    for name in names {
        till.drop_file(name, &std::fs::read(fixtures().join(name)).unwrap());
    }
    let st = till.wait_done(&names, &[]).await;
    assert_eq!(st["inbox"]["records_skipped"], 3, "control, cancelled and training transactions: {}", st["inbox"]);
    let events = journal(&till.c, till.url()).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "sale").count(), 5, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "return").count(), 1, "{kinds:?}");
    let expected = [
        ("4006381333931", -2),
        ("COFFEE-1KG", 0),
        ("MILK-1L", -3),
        ("0001", -1),
        ("SHIRT-M-BLUE", -2),
        ("5012345678900", -4),
    ];
    for (sku, want) in expected {
        assert_eq!(on_hand(&till.c, till.url(), sku).await, want, "stock of {sku}");
    }
    till.check_stock(&events).await;
    // The return points at the sale it returns (both ids come from the ARTS transaction keys).
    let ret = events.iter().find(|e| e.kind.as_str() == "return").unwrap();
    let sale = events.iter().find(|e| e.body["customer_id"] == "LOY-000123").unwrap();
    assert_eq!(ret.body["original_event_id"], serde_json::json!(sale.event_id));
    assert_eq!(ret.body["refunds"][0]["amount_minor"], 1161);
    // The multi-tender sale kept its three tenders.
    let shirts = events.iter().find(|e| e.body["lines"][0]["sku"] == "SHIRT-M-BLUE").unwrap();
    assert_eq!(shirts.body["payments"].as_array().map(Vec::len), Some(3));

    // The hourly file again, as exported a second time: nothing new.
    let hourly = std::fs::read(fixtures().join(names[0])).unwrap();
    till.drop_file(names[0], &hourly);
    let st = till.wait_done(&["tlog-S001-ws3-20261126-14.1.xml"], &[]).await;
    assert_eq!(st["inbox"]["records_duplicate"], 3, "{}", st["inbox"]);
    assert_eq!(journal(&till.c, till.url()).await.len(), events.len());
    till.verify();
}

/// A JSON Lines void of the event `target_id`.
fn void_line(target_id: Uuid) -> String {
    format!(
        r#"{{"kind":"void","occurred_at":"2026-11-26T14:06:00+01:00","voided_event_id":"{target_id}","reason":"wrong item"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_files_are_rejected_with_a_report_and_journal_nothing() {
    let till = Till::new(CONFIG);
    // JSON Lines: good lines around two bad ones.
    let jsonl = format!(
        "{}\n{}\n{}\nnot json at all\n{}\n",
        sale_line(0),
        sale_line(1).replace(r#""qty":2"#, r#""qty":0"#),
        sale_line(2),
        sale_line(3)
    );
    till.drop_file("bad.jsonl", jsonl.as_bytes());
    // CSV with a misspelt column: nothing can be trusted.
    till.drop_file(
        "bad.csv",
        b"transaction_id,kind,occurred_at,sku,quantity,unit_price\nT1,sale,2026-11-26T14:05:00Z,A,1,1.00\n",
    );
    // POSLog: tax on top of the prices, and a fraction of a cent.
    let bad_xml = std::fs::read(fixtures().join("bad/tax-exclusive-and-fractional.xml")).unwrap();
    till.drop_file("bad.xml", &bad_xml);
    // POSLog cut short: it never looks complete, so it is taken after inbox_incomplete_after_s.
    till.drop_file("cut.xml", &std::fs::read(fixtures().join("bad/cut-short.xml")).unwrap());
    let st = till.wait_done(&[], &["bad.jsonl", "bad.csv", "bad.xml", "cut.xml"]).await;
    assert!(journal(&till.c, till.url()).await.is_empty(), "a file with a refused record journals nothing");

    let r = till.report("bad.jsonl");
    assert_eq!(
        (r["outcome"].as_str(), r["failed"].as_u64(), r["journaled"].as_u64()),
        (Some("nothing_journaled"), Some(2), Some(0))
    );
    let errors: Vec<(u64, &str)> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(errors, [(2, "invalid_qty"), (4, "malformed_json")]);
    assert_eq!(r["format"], "jsonl");
    assert_eq!(r["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(till.report("bad.csv")["errors"][0]["code"], "unknown_column");
    let xml = till.report("bad.xml");
    let xml_errors: Vec<(&str, &str)> = xml["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["record"].as_str().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(xml_errors, [("7/2026-11-27/88", "total_mismatch"), ("7/2026-11-27/89", "invalid_amount")]);
    assert_eq!(till.report("cut.xml")["errors"][0]["code"], "malformed_xml");

    let inbox = &st["inbox"];
    assert_eq!((inbox["files_rejected"].as_u64(), inbox["rejected_files"].as_u64()), (Some(4), Some(4)), "{inbox}");
    assert_eq!(inbox["parse_errors"], 2 + 1 + 2 + 1, "{inbox}");
    assert!(inbox["last_error"]["code"].is_string(), "{inbox}");

    // The JSON Lines file, fixed and dropped again: every line journaled once.
    let fixed: String = (0..4).map(|i| sale_line(i) + "\n").collect();
    till.drop_file("bad.jsonl", fixed.as_bytes());
    till.wait_done(&["bad.jsonl"], &[]).await;
    let events = journal(&till.c, till.url()).await;
    assert_eq!(lines_of(&events), [0, 1, 2, 3]);

    // A file the parser accepts but the journal partly refuses (a void of an event this till never saw): the
    // rest is journaled, the refused record reported.
    let sale4 = Uuid::from_u128(0xfeed_0004);
    let partly = format!(
        "{}\n{}\n{}\n",
        sale_line(4).replace(r#""kind":"sale","#, &format!(r#""kind":"sale","event_id":"{sale4}","#)),
        void_line(Uuid::from_u128(0xdead)),
        void_line(sale4)
    );
    till.drop_file("partly.jsonl", partly.as_bytes());
    let st = till.wait_done(&[], &["partly.jsonl"]).await;
    let r = till.report("partly.jsonl");
    assert_eq!(
        (r["outcome"].as_str(), r["journaled"].as_u64(), r["failed"].as_u64()),
        (Some("partly_journaled"), Some(2), Some(1))
    );
    assert_eq!(
        (r["errors"][0]["line"].as_u64(), r["errors"][0]["code"].as_str()),
        (Some(2), Some("voided_event_not_found"))
    );
    assert_eq!(st["inbox"]["last_error"]["code"], "voided_event_not_found");
    let events = journal(&till.c, till.url()).await;
    assert_eq!(events.len(), 6);
    till.check_stock(&events).await;

    // `storesync-agent status` reads the same from the folder.
    let out = agent_cli(till.dir.path(), &["status", "--json", "--config", till.config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((cli["inbox"]["rejected_files"].as_u64(), cli["inbox"]["backlog_files"].as_u64()), (Some(5), Some(0)));
    assert_eq!(cli["inbox"]["last_error"]["code"], "voided_event_not_found");
    let out = agent_cli(till.dir.path(), &["status", "--config", till.config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 files waiting") && text.contains("5 rejected files"), "{text}");
    assert!(text.contains("voided_event_not_found"), "{text}");
    till.verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_file_dropped_twice_is_journaled_once() {
    let till = Till::new(CONFIG);
    // Every kind, a void of a sale earlier in the same file, and a CSV file.
    let first_sale = Uuid::from_u128(0x5a1e);
    let mut lines: Vec<String> = (0..40).map(sale_line).collect();
    lines[0] = lines[0].replace(r#""kind":"sale","#, &format!(r#""kind":"sale","event_id":"{first_sale}","#));
    lines.push(r#"{"kind":"return","occurred_at":"2026-11-26T15:00:00Z","currency":"EUR","reason":"faulty","lines":[{"sku":"MILK-1L","qty":1,"unit_price_minor":249}],"refunds":[{"method":"cash","amount_minor":249}]}"#.into());
    lines.push(r#"{"kind":"transfer_out","occurred_at":"2026-11-26T15:00:00Z","other_store":"S002","transfer_id":"TR-9","lines":[{"sku":"COFFEE-1KG","qty":4}]}"#.into());
    lines.push(r#"{"kind":"transfer_in","occurred_at":"2026-11-26T15:00:00Z","other_store":"S003","transfer_id":"TR-10","lines":[{"sku":"COFFEE-1KG","qty":10}]}"#.into());
    lines.push(
        r#"{"kind":"adjustment","occurred_at":"2026-11-26T15:00:00Z","sku":"0001","delta":-2,"reason":"damage"}"#
            .into(),
    );
    lines.push(void_line(first_sale));
    let jsonl = lines.join("\n") + "\n";
    // One row per line item or payment; R-2 is paid part by card, part cash.
    let csv = "transaction_id,kind,occurred_at,currency,sku,qty,unit_price,discount,payment_method,payment_amount,reason\n\
               R-1,sale,2026-11-26T16:00:00+01:00,EUR,MILK-1L,2,1.19,,card,2.38,\n\
               R-2,sale,2026-11-26T16:01:00+01:00,EUR,COFFEE-1KG,1,12.90,1.29,card,10.00,\n\
               R-2,,,,,,,,cash,1.61,\n\
               R-3,return,2026-11-26T16:05:00+01:00,EUR,MILK-1L,1,1.19,,cash,1.19,expired\n";
    till.drop_file("day.jsonl", jsonl.as_bytes());
    till.drop_file("day.csv", csv.as_bytes());
    till.wait_done(&["day.jsonl", "day.csv"], &[]).await;
    let events = journal(&till.c, till.url()).await;
    assert_eq!(events.len(), 45 + 3, "{:?}", events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>());
    assert_eq!(events.iter().filter(|e| e.kind.as_str() == "void").count(), 1);
    till.check_stock(&events).await;

    // Dropped again, under the same names and under other names.
    till.drop_file("day.jsonl", jsonl.as_bytes());
    till.drop_file("day.csv", csv.as_bytes());
    till.drop_file("copy of day.jsonl", jsonl.as_bytes());
    let st = till.wait_done(&["day.1.jsonl", "day.1.csv", "copy of day.jsonl"], &[]).await;
    let again = journal(&till.c, till.url()).await;
    assert_eq!(again.len(), events.len(), "a file dropped again journaled something");
    assert_eq!(st["inbox"]["records_duplicate"], 2 * 45 + 3, "{}", st["inbox"]);
    assert_eq!(st["inbox"]["files_processed"], 5);
    till.check_stock(&again).await;
    till.verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_slowly_in_place_is_read_once_when_complete() {
    const N: usize = 2000;
    // A long wait for cut-short files: here only the stability window and the final newline decide.
    let till = Till::new(&CONFIG.replace("inbox_incomplete_after_s = 4", "inbox_incomplete_after_s = 600"));
    let file = sales_file(N);
    let path = till.inbox().join("slow.jsonl");
    std::fs::create_dir_all(till.inbox()).unwrap();
    let mut out = std::fs::File::create(&path).unwrap();
    // Twenty-odd chunks, each ending in the middle of a line, with pauses between them longer than the agent's
    // rescan interval lets it look several times.
    let mut at = 0;
    let mut chunks = 0;
    while at < file.len() {
        let mut end = (at + file.len() / 20).min(file.len());
        while end < file.len() && file[end - 1] == b'\n' {
            end += 1;
        }
        use std::io::Write;
        out.write_all(&file[at..end]).unwrap();
        out.flush().unwrap();
        at = end;
        chunks += 1;
        if at < file.len() {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            assert!(till.files("processed").is_empty() && till.files("rejected").is_empty(), "taken while written");
        }
    }
    drop(out);
    assert!(chunks >= 20);
    let st = till.wait_done(&["slow.jsonl"], &[]).await;
    assert_eq!(till.files("processed"), BTreeSet::from(["slow.jsonl".to_owned()]));
    assert_eq!(st["inbox"]["records_journaled"], N as u64);
    let events = journal(&till.c, till.url()).await;
    assert_eq!(lines_of(&events), (0..N).collect::<Vec<_>>());
    till.verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_stop_in_the_middle_of_a_large_file_lose_and_double_nothing() {
    const N: usize = 60_000;
    let mut till = Till::new(CONFIG);
    till.drop_file("large.jsonl", &sales_file(N));
    // Interrupt it twice while it works through the file, at different depths: SIGKILL, then an ordinary stop
    // (SIGTERM, which must end cleanly and promptly in the middle of a file); then let it finish.
    for (threshold, kill) in [(3_000u64, true), (25_000, false)] {
        let start = std::time::Instant::now();
        loop {
            let st = status(&till.c, till.url()).await;
            if st["journal_len"].as_u64().unwrap_or(0) >= threshold {
                break;
            }
            assert!(start.elapsed() < PATIENCE, "the agent never got to {threshold} records: {}", st["inbox"]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let agent = till.agent.take().unwrap();
        if kill {
            agent.kill();
        } else {
            tokio::task::spawn_blocking(move || agent.stop()).await.unwrap(); // panics unless it exits 0
        }
        assert!(
            till.files("").contains("large.jsonl"),
            "the agent finished the file before it was stopped; the stop must land mid-file"
        );
        let (conn, _) =
            storesync_agent::journal::open_read_only(&till.dir.path().join(storesync_agent::journal::DB_FILE)).unwrap();
        let at_stop = storesync_agent::journal::journal_status(&conn).unwrap().journal_len;
        drop(conn);
        assert!(at_stop < N as u64, "stopped after the whole file was journaled");
        eprintln!("inbox: {} with {at_stop} of {N} records journaled", if kill { "SIGKILL" } else { "SIGTERM" });
        till.start();
    }
    let st = till.wait_done(&["large.jsonl"], &[]).await;
    assert!(st["inbox"]["records_duplicate"].as_u64().unwrap() > 0, "the restart read the file from the start");
    let events = journal(&till.c, till.url()).await;
    assert_eq!(events.len(), N);
    assert_eq!(lines_of(&events), (0..N).collect::<Vec<_>>(), "a line lost, doubled or out of order");
    for (sku, want) in sold(N) {
        assert_eq!(on_hand(&till.c, till.url(), &sku).await, want, "stock of {sku}");
    }
    assert_eq!(till.files("processed"), BTreeSet::from(["large.jsonl".to_owned()]));
    till.verify();
}
