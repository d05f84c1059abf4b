//! The drop folder ("inbox"): POS systems that cannot call the API write transaction files into a folder, and the
//! agent journals every record in them exactly once.
//!
//! # Formats
//! JSON Lines of canonical events ([`jsonl`]), CSV with one row per line item or payment ([`csv_file`]) and ARTS
//! POSLog XML ([`poslog`]), chosen by the file name's extension (`.jsonl`, `.csv`, `.xml`). Every record is held
//! to the POS API's own rules: the readers build a POST body and pass it to
//! [`storesync_shared::event::parse_request_value`], the function the API's handlers call.
//!
//! # On-disk layout (`<inbox>`, by default `<data-dir>/inbox`)
//! - `<inbox>/*.jsonl|*.csv|*.xml`: files waiting. Names starting with `.` and any other extension (`.tmp`,
//!   `.part`, ...) are never read, so a writer may write under a temporary name and rename when done.
//! - `<inbox>/processed/<name>`: files whose every record is journaled.
//! - `<inbox>/rejected/<name>` and `<name>.error.json`: files with a refused record, and the report naming each
//!   refused record (line or byte offset, record id) with its error code and detail.
//!   A name already taken there gets a counter: `sales.1.jsonl`.
//!
//! # When a file is taken
//! A file is read once its size and modification time have not changed for `settle` (default 2 s) of the
//! agent's own clock, *and* it looks complete: a JSON Lines or CSV file ends with a newline, a POSLog file ends
//! with its root's end tag. A file that stays incomplete-looking is taken anyway after `incomplete_after`
//! (default 60 s) and then most likely rejected, with a report that says why. So both conventions work: write
//! under a temporary name and rename, or write in place (the stability window covers pauses shorter than
//! `settle`; the completeness check covers a pause that ends mid-line).
//!
//! # Failure policy: the whole file is checked before any of it is journaled
//! Pass 1 reads the whole file (streaming) and validates every record. If any record is refused, or the file
//! cannot be read to its end, nothing of it is journaled: the file moves to `rejected/` with its report, so the
//! file can be fixed in any way and dropped again. Only a file that passed is journaled (pass 2). A record that
//! the journal itself refuses in pass 2 (an `event_id` journaled before with another body; a void of an event
//! this till never journaled) is reported the same way, and the rest of that file stays journaled.
//!
//! # Idempotency and recovery
//! Every record is journaled under a deterministic event id: its own `event_id` where the format carries one (a
//! JSON Lines field, a CSV column, the ARTS transaction key), otherwise UUIDv5 of its place in the file (line,
//! transaction id) and the SHA-256 of its canonical body. The journal answers an event id it holds with the same
//! body as "already journaled" and writes nothing. So a file dropped again changes nothing, a restart in the
//! middle of a file (even a SIGKILL) reads it again from the start and journals only what is missing, and a file
//! that was taken too early and then grew keeps the ids of the records it had. The journal is the progress
//! record: no separate cursor can disagree with it. A file leaves the inbox only after its last record's COMMIT.
//!
//! # Memory
//! Files are streamed: the readers hold one line, one CSV transaction or one POSLog transaction at a time, and
//! at most [`process::WINDOW`] records wait for the journal writer. Memory does not grow with the file.

mod config;
mod csv_file;
mod files;
mod format;
mod jsonl;
mod money;
mod poslog;
mod process;
mod record;
mod status;
mod watch;

pub use config::{
    DEFAULT_INCOMPLETE_AFTER, DEFAULT_KEEP_PROCESSED_DAYS, DEFAULT_RESCAN, DEFAULT_SETTLE, InboxConfig, Keys,
};
pub use files::{PROCESSED, REJECTED, REPORT_SUFFIX};
pub use format::Format;
pub use record::{Place, Refusal};
pub use status::{InboxStats, InboxView, LastError, Processing, from_disk};
pub use watch::run;
