//! WAL checkpoints on their own thread and connection, so the writer never stalls on one.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses `wal_autocheckpoint` pages: it copies the WAL
//! into the database file and fsyncs it, on the writer's thread, while every caller of that group and the next waits
//! (~10 ms on the reference disk, every ~0.1 s under load: the whole 16-client p99). The writer turns it off; this
//! thread runs a `PASSIVE` checkpoint every [`INTERVAL`], which copies what no reader still needs without taking
//! the write lock.
//!
//! A `PASSIVE` checkpoint alone never lets the WAL start over while sales keep coming: SQLite restarts the WAL only
//! when a write transaction begins with every frame already copied, and under load the writer has always appended
//! more frames since the checkpoint began. The WAL then grows without end, and every commit writes into new file
//! blocks, which ext4 must allocate and zero first: that was a third of the writer thread's time under 16 clients
//! (docs/BENCHMARKS.md). So once a `PASSIVE` checkpoint has copied everything it saw and the WAL is past
//! [`RESTART_FRAMES`], this thread follows it with a `RESTART` checkpoint. That one takes the write lock, but only
//! to copy the few frames written since the `PASSIVE` one began, and it then has the next transaction write the
//! WAL from its beginning again, over pages already in the page cache. It waits at most [`RESTART_WAIT`] for the
//! writer or a reader and otherwise tries again next time, so a long reader (an export) never stalls the till.
//! If checkpoints fall behind (a reader held open for long), the WAL grows, and this thread warns once it holds
//! more than [`ALARM_FRAMES`] frames not yet in the database.

use std::path::Path;
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(250);
/// Restart the WAL once it holds this many frames (~8 MiB of 4 KiB pages) and all of them are in the database.
const RESTART_FRAMES: i64 = 2048;
/// How long a `RESTART` checkpoint may wait for the writer's lock or for readers before it gives up until next time.
const RESTART_WAIT: Duration = Duration::from_millis(20);
/// How long a `PASSIVE` checkpoint may wait (it never takes the write lock, only a checkpoint lock).
const PASSIVE_WAIT: Duration = Duration::from_secs(5);
/// Warn when the WAL holds more frames than this that are not in the database yet (~400 MiB of 4 KiB pages).
const ALARM_FRAMES: i64 = 100_000;

pub(super) struct Checkpointer {
    stop: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(db: &Path) -> anyhow::Result<Checkpointer> {
        let conn = Connection::open(db).with_context(|| format!("opening {} for checkpoints", db.display()))?;
        conn.busy_timeout(PASSIVE_WAIT)?;
        // The checkpoint's own syncs (WAL before copying, database after) follow this connection's setting.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let (stop, rx) = sync_channel::<()>(1);
        let thread = std::thread::Builder::new().name("journal-checkpoint".into()).spawn(move || {
            // Until stop is asked, or the owner is gone.
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(INTERVAL) {
                checkpoint(&conn);
            }
        })?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
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
        Ok((_, log, done)) if log >= RESTART_FRAMES && done == log => restart(conn),
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.try_send(());
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

    fn writer(path: &Path) -> Connection {
        let conn = Connection::open(path).expect("open");
        conn.pragma_update(None, "journal_mode", "WAL").expect("wal");
        conn.pragma_update(None, "wal_autocheckpoint", 0).expect("no autocheckpoint");
        conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (x BLOB)").expect("table");
        conn
    }

    /// One page-sized row per transaction, so one WAL frame (plus a few) per write.
    fn write_page(conn: &Connection) {
        conn.execute("INSERT INTO t (x) VALUES (zeroblob(3000))", []).expect("insert");
    }

    fn wal_bytes(db: &Path) -> u64 {
        std::fs::metadata(db.with_extension("db-wal")).map(|m| m.len()).unwrap_or(0)
    }

    /// The agent's situation under steady sales: the writer commits all the time, with short gaps, while the
    /// checkpoint thread runs on its interval. A `PASSIVE` checkpoint alone never catches up with such a writer, so
    /// the WAL file grew by every frame ever written; with the restart it stays near [`RESTART_FRAMES`].
    #[test]
    fn the_wal_stays_bounded_under_a_steady_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("j.db");
        let w = writer(&db);
        let checkpoints = Checkpointer::start(&db).expect("start the checkpoint thread");
        let total = 4 * RESTART_FRAMES as usize;
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
            frames < 3 * RESTART_FRAMES as u64,
            "the WAL grew to {frames} frames for {total} writes: it was never started over"
        );
    }

    /// A reader still on an old snapshot needs the WAL: the restart gives up (within [`RESTART_WAIT`]) and the
    /// frames stay, nothing is lost, and the next write still works.
    #[test]
    fn a_reader_on_an_old_snapshot_keeps_its_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("j.db");
        let w = writer(&db);
        write_page(&w);
        let reader = Connection::open(&db).expect("open reader");
        reader.execute_batch("BEGIN").expect("begin");
        let seen: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("read");
        for _ in 0..RESTART_FRAMES {
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
        assert_eq!(now, 1 + i64::from(RESTART_FRAMES as i32) + 1);
    }
}
