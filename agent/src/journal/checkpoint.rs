//! WAL checkpoints on their own thread and connection, so the writer never stalls on one.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses `wal_autocheckpoint` pages: it copies the WAL
//! into the database file and fsyncs it, on the writer's thread, while every caller of that group and the next waits
//! (~10 ms on the reference disk, every ~0.1 s under load: the whole 16-client p99). The writer turns it off; this
//! thread runs a `PASSIVE` checkpoint every [`INTERVAL`], which copies what no reader still needs without taking
//! the write lock. The writer restarts the WAL from its beginning at its next transaction once a checkpoint has
//! caught up, so the WAL stays small. If checkpoints fall behind (a reader held open for long), the WAL grows, and
//! this thread warns once it holds more than [`ALARM_FRAMES`] frames not yet in the database.

use std::path::Path;
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(250);
/// Warn when the WAL holds more frames than this that are not in the database yet (~400 MiB of 4 KiB pages).
const ALARM_FRAMES: i64 = 100_000;

pub(super) struct Checkpointer {
    stop: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(db: &Path) -> anyhow::Result<Checkpointer> {
        let conn = Connection::open(db).with_context(|| format!("opening {} for checkpoints", db.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
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

fn checkpoint(conn: &Connection) {
    let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)));
    match r {
        Ok((log, done)) if log - done > ALARM_FRAMES => {
            tracing::warn!(wal_frames = log, checkpointed = done, "the journal's WAL is not being checkpointed");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "checkpointing the journal's WAL"),
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
