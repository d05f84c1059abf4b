//! The SQLite backend of the storage traits ([`crate::storage::Storage`] and
//! [`crate::storage::reservations::ReservationStore`]).
//!
//! Design note:
//! - On disk: one file `<data-dir>/hub.db` in WAL mode with `synchronous=FULL`, so a COMMIT that returned is on
//!   disk and an upload is acknowledged only after it. `busy_timeout` lets the `enroll-code`/`revoke` CLI verbs
//!   write to the database while `serve` runs.
//! - Connections: one writer connection behind a `std::sync::Mutex` (SQLite has one writer anyway) and a small
//!   pool of reader connections. The mutexes are only taken inside blocking calls (`spawn_blocking`), never
//!   across an `.await`.
//! - Every write runs in `BEGIN IMMEDIATE`, so the till row read at the start of an ingest is still current at its
//!   COMMIT; the conditional `UPDATE tills ... WHERE hub_seq = ?` and the unique indexes on `events` are the
//!   real guards, so the same logic stays correct for a multi-instance PostgreSQL backend.
//! - Tables: `tills` (chain head and health per till), `credentials` and `enrollments` (SHA-256 digests only),
//!   `events` (`hub_pos INTEGER PRIMARY KEY AUTOINCREMENT` is the global hub order, never reused), and
//!   `enroll_failures` (failed enrolment attempts per client, pruned as they age out).
//! - Store documents: `store_docs` (per store: epoch, version, snapshot and the version it was taken at, change
//!   and byte counters), `doc_chunks` (`(store, version)` → the chunk that version added; deleted by a fold or a
//!   compaction), `sync_states` (`(store, till, epoch)` → `sync::State::encode()`), `hub_movements` (every
//!   head-office stock movement, kept forever: every epoch base sums them) and `epochs` (the current epoch's record
//!   per store: cuts, base, the journal part of the base, and the snapshot tills load).
//! - `quarantine` (`(store, till, seq)` → why, when, released when): events stored in the chain whose body this
//!   hub cannot process. The events table itself is never changed; quarantine is a side table.
//! - Self-update: `releases` (`(version, target)` → exact manifest bytes, signature, archive BLOB and the manifest
//!   fields listed to head office; never updated), `rollouts` (one row per target: the active rollout and its
//!   counters), `rollout_history` (rollouts replaced by a newer one, as `superseded`) and `update_reports` (every
//!   report a till sent, kept). Archives live in the database so a backup of `hub.db` is a backup of everything;
//!   an archive is read whole into memory to be served, which bounds releases to `max_release_bytes`.
//! - `till_progress` (`(store, till, at)` → the till's reported seq and the hub's seq then): one sample per till
//!   per `SAMPLE_SPACING_S` of uploads, written in the upload's transaction and pruned past `SAMPLE_KEEP_S`; the
//!   fleet view's trend and drain forecast. Not part of the journal: rows are deleted as they age out.
//! - Recovery: nothing to do beyond SQLite's own WAL recovery; all state is in the database.
//!
//! Layout of this folder: `conn.rs` (the [`SqliteStorage`] type, its writer and reader connections, error
//! mapping), `schema.rs` (tables and migration at open), `rows.rs` (event and outbox rows read by several files),
//! then one file per trait: `ingest.rs`, `docs.rs`, `enrolment.rs`, `releases.rs`, `outbox.rs` and
//! `reservations.rs`. The per-trait files import `conn.rs`, `rows.rs` and each other's helpers, never this file.
//! - Durable when: a method returns only after its COMMIT (`synchronous=FULL`), so whatever a call answered is on
//!   disk; a process killed mid-call leaves the transaction rolled back by the WAL on the next open.

mod conn;
mod docs;
mod enrolment;
mod ingest;
mod outbox;
mod releases;
mod reservations;
mod rows;
mod schema;

pub use conn::SqliteStorage;

#[cfg(test)]
mod tests;
