//! WAL checkpoints on their own thread and connection, so the writer never stalls on one.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses `wal_autocheckpoint` pages: it copies the WAL
//! into the database file and fsyncs it, on the writer's thread, while every caller of that group and the next waits
//! (~10 ms on the reference disk, every ~0.1 s under load: the whole 16-client p99). The writer turns it off and
//! installs a WAL hook ([`Checkpointer::install`]) that wakes this thread instead, once the WAL holds
//! [`TRIGGER_FRAMES`]: the same rule as SQLite's own, moved off the sale path. This thread then runs a `PASSIVE`
//! checkpoint, which copies what no reader still needs without taking the write lock.
//!
//! Why a frame count and not a timer (it was every 250 ms): each checkpoint fsyncs the WAL and the database file, and
//! on a slow disk a sale whose COMMIT fsyncs at that moment can wait behind them. A timer made four of those a second
//! whatever the rate of sales: on the slow-disk machine of docs/BENCHMARKS.md (600 sales/s at one client) that was
//! 13 checkpoints in the 2,000-sale run, the suspected cause of its 1-client p99; counting frames makes 3, one per
//! ~[`TRIGGER_FRAMES`] pages written, as few as the WAL's bound allows. A quiet till's last sales are checkpointed
//! after [`IDLE`] (the WAL is durable either way; this only keeps it small).
//!
//! A `PASSIVE` checkpoint alone never lets the WAL start over while sales keep coming: SQLite restarts the WAL only
//! when a write transaction begins with every frame already copied, and under load the writer has always appended
//! more frames since the checkpoint began. The WAL then grows without end, and every commit writes into new file
//! blocks, which ext4 must allocate and zero first: that was a third of the writer thread's time under 16 clients
//! (docs/BENCHMARKS.md). So once a `PASSIVE` checkpoint has copied everything it saw, this thread follows it with a
//! `RESTART` checkpoint. That one takes the write lock, but only to copy the few frames written since the `PASSIVE`
//! one began, and it then has the next transaction write the WAL from its beginning again, over pages already in the
//! page cache. It waits at most [`RESTART_WAIT`] for the writer or a reader and otherwise tries again at the next
//! wake, so a long reader (an export) never stalls the till. If checkpoints fall behind (a reader held open for
//! long), the WAL grows, and this thread warns once it holds more than [`ALARM_FRAMES`] frames not yet in the
//! database.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::Connection;

/// Checkpoint once the WAL holds this many frames (~8 MiB of 4 KiB pages).
const TRIGGER_FRAMES: i64 = 2048;
/// Checkpoint whatever a quiet WAL holds after this long without a trigger.
const IDLE: Duration = Duration::from_secs(30);
/// At most one checkpoint per this long: after a `RESTART` that gave up, every commit still sees a long WAL.
const MIN_GAP: Duration = Duration::from_millis(50);
/// How long a `RESTART` checkpoint may wait for the writer's lock or for readers before it gives up until next time.
const RESTART_WAIT: Duration = Duration::from_millis(20);
/// How long a `PASSIVE` checkpoint may wait (it never takes the write lock, only a checkpoint lock).
const PASSIVE_WAIT: Duration = Duration::from_secs(5);
/// Warn when the WAL holds more frames than this that are not in the database yet (~400 MiB of 4 KiB pages).
const ALARM_FRAMES: i64 = 100_000;

/// What the writer's WAL hook and this thread share.
#[derive(Default)]
struct Shared {
    /// A commit happened since the last checkpoint.
    dirty: AtomicBool,
    /// Checkpoints run so far.
    runs: AtomicU64,
}

pub(super) struct Checkpointer {
    wake: Option<SyncSender<Wake>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

enum Wake {
    Frames,
    Stop,
}

impl Checkpointer {
    pub(super) fn start(db: &Path) -> anyhow::Result<Checkpointer> {
        let conn = Connection::open(db).with_context(|| format!("opening {} for checkpoints", db.display()))?;
        conn.busy_timeout(PASSIVE_WAIT)?;
        // The checkpoint's own syncs (WAL before copying, database after) follow this connection's setting.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let shared = Arc::new(Shared::default());
        let (wake, rx) = sync_channel::<Wake>(1);
        let seen = shared.clone();
        let thread = std::thread::Builder::new().name("journal-checkpoint".into()).spawn(move || {
            let mut last = Instant::now() - MIN_GAP;
            loop {
                match rx.recv_timeout(IDLE) {
                    Ok(Wake::Frames) => {
                        let gap = MIN_GAP.saturating_sub(last.elapsed());
                        if !gap.is_zero() {
                            std::thread::sleep(gap);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) if seen.dirty.load(Ordering::Relaxed) => {}
                    Err(RecvTimeoutError::Timeout) => continue,
                    Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                }
                seen.dirty.store(false, Ordering::Relaxed);
                checkpoint(&conn);
                seen.runs.fetch_add(1, Ordering::Relaxed);
                last = Instant::now();
            }
        })?;
        Ok(Checkpointer { wake: Some(wake), shared, thread: Some(thread) })
    }

    /// Turns off SQLite's automatic checkpoint on the writer's connection and has its commits wake this thread
    /// instead, once the WAL holds [`TRIGGER_FRAMES`].
    pub(super) fn install(&self, writer: &mut Connection) -> rusqlite::Result<()> {
        // `wal_autocheckpoint` replaces the WAL hook, so it goes first.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let shared = self.shared.clone();
        let wake = self.wake.clone();
        writer.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, frames: std::ffi::c_int| {
            shared.dirty.store(true, Ordering::Relaxed);
            if i64::from(frames) >= TRIGGER_FRAMES
                && let Some(wake) = &wake
            {
                // Full: a wake is already pending, which is all this one asks.
                let _ = wake.try_send(Wake::Frames);
            }
            Ok(())
        }))
    }
}

/// `(busy, frames in the WAL, frames copied into the database)` of one checkpoint in `mode`.
fn run(conn: &Connection, mode: &str) -> rusqlite::Result<(bool, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get::<_, i64>(0)? != 0, r.get(1)?, r.get(2)?))
    })
}

fn checkpoint(conn: &Connection) {
    match run(conn, "PASSIVE") {
        Ok((_, log, done)) if log - done > ALARM_FRAMES => {
            tracing::warn!(wal_frames = log, checkpointed = done, "the journal's WAL is not being checkpointed");
        }
        Ok((_, log, done)) if log > 0 && done == log => restart(conn),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "checkpointing the journal's WAL"),
    }
}
/// Lets the next transaction write the WAL from its beginning (see the module note). Giving up is normal: the
/// writer or a reader was busy for longer than [`RESTART_WAIT`].
fn restart(conn: &Connection) {
    let r = conn.busy_timeout(RESTART_WAIT).and_then(|()| run(conn, "RESTART"));
    if let Err(e) = conn.busy_timeout(PASSIVE_WAIT) {
        tracing::warn!(error = %e, "resetting the checkpoint connection's busy timeout");
    }
    match r {
        Ok((busy, log, done)) => tracing::trace!(busy, log, done, "WAL restart checkpoint"),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {}
        Err(e) => tracing::warn!(error = %e, "restarting the journal's WAL"),
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(wake) = self.wake.take() {
            // Blocks only while a wake is pending, until the thread takes it; the hook holds a sender too, so the
            // channel never disconnects on its own.
            let _ = wake.send(Wake::Stop);
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the journal checkpoint thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer connection; with `checkpoints`, its commits wake that thread as the journal writer's do.
    fn writer(path: &Path, checkpoints: Option<&Checkpointer>) -> Connection {
        let mut conn = Connection::open(path).expect("open");
        conn.pragma_update(None, "journal_mode", "WAL").expect("wal");
        conn.pragma_update(None, "wal_autocheckpoint", 0).expect("no autocheckpoint");
        if let Some(c) = checkpoints {
            c.install(&mut conn).expect("install the WAL hook");
        }
        conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (x BLOB)").expect("table");
        conn
    }

    /// A new database, its checkpoint thread, and a writer whose commits wake it.
    fn hooked_writer() -> (tempfile::TempDir, Checkpointer, Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("j.db");
        drop(writer(&db, None));
        let checkpoints = Checkpointer::start(&db).expect("start the checkpoint thread");
        let w = writer(&db, Some(&checkpoints));
        (dir, checkpoints, w)
    }

    /// One page-sized row per transaction, so one WAL frame (plus a few) per write.
    fn write_page(conn: &Connection) {
        conn.execute("INSERT INTO t (x) VALUES (zeroblob(3000))", []).expect("insert");
    }

    fn wal_bytes(db: &Path) -> u64 {
        std::fs::metadata(db.with_extension("db-wal")).map(|m| m.len()).unwrap_or(0)
    }

    /// The agent's situation under steady sales: the writer commits all the time, with short gaps, and its commits
    /// wake the checkpoint thread. A `PASSIVE` checkpoint alone never catches up with such a writer, so the WAL file
    /// grew by every frame ever written; with the restart it stays near [`TRIGGER_FRAMES`].
    #[test]
    fn the_wal_stays_bounded_under_a_steady_writer() {
        let (dir, checkpoints, w) = hooked_writer();
        let db = dir.path().join("j.db");
        let total = 4 * TRIGGER_FRAMES as usize;
        let mut largest = 0;
        for i in 0..total {
            write_page(&w);
            // The gap between two group commits, in which the checkpoint thread can take the write lock.
            std::thread::sleep(Duration::from_micros(300));
            if i % 64 == 0 {
                largest = largest.max(wal_bytes(&db));
            }
        }
        drop(checkpoints);
        let frames = largest / 4096;
        assert!(
            frames < 3 * TRIGGER_FRAMES as u64,
            "the WAL grew to {frames} frames for {total} writes: it was never started over"
        );
    }

    /// A reader still on an old snapshot needs the WAL: the restart gives up (within [`RESTART_WAIT`]) and the
    /// frames stay, nothing is lost, and the next write still works.
    #[test]
    fn a_reader_on_an_old_snapshot_keeps_its_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("j.db");
        let w = writer(&db, None);
        write_page(&w);
        let reader = Connection::open(&db).expect("open reader");
        reader.execute_batch("BEGIN").expect("begin");
        let seen: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("read");
        for _ in 0..TRIGGER_FRAMES {
            write_page(&w);
        }
        let cp = Connection::open(&db).expect("open checkpoint connection");
        cp.busy_timeout(PASSIVE_WAIT).expect("busy timeout");
        restart(&cp);
        write_page(&w);
        let still: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("read again");
        assert_eq!(still, seen, "the reader's snapshot changed under it");
        reader.execute_batch("COMMIT").expect("end read");
        let now: i64 = w.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count");
        assert_eq!(now, 1 + TRIGGER_FRAMES + 1);
    }

    /// Checkpoints follow the frames written, not the clock: below [`TRIGGER_FRAMES`] the thread stays asleep (so
    /// its fsyncs never meet a sale's), and the commit that crosses it wakes the thread, which copies the WAL into
    /// the database and starts it over.
    #[test]
    fn the_commit_that_crosses_the_trigger_wakes_the_checkpoint() {
        let (dir, checkpoints, w) = hooked_writer();
        let db = dir.path().join("j.db");
        // Before any checkpoint the WAL file holds every frame written: a 32-byte header, then 24 + 4096 bytes each.
        let frames = || (wal_bytes(&db).saturating_sub(32) / (24 + 4096)) as i64;
        while frames() < TRIGGER_FRAMES / 2 {
            write_page(&w);
        }
        // A timer would have fired several times over by now (it was every 250 ms).
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(checkpoints.shared.runs.load(Ordering::Relaxed), 0, "a checkpoint ran below the trigger");
        while frames() < TRIGGER_FRAMES {
            write_page(&w);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while checkpoints.shared.runs.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "no checkpoint ran after the WAL crossed the trigger");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(checkpoints);
        // The restart took: the next commit writes the WAL from its beginning.
        write_page(&w);
        let frames: i64 = w.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1)).expect("wal size");
        assert!(frames < TRIGGER_FRAMES / 2, "the WAL was not started over: {frames} frames");
    }
}
