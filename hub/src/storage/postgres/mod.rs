//! The PostgreSQL backend of the storage traits ([`crate::storage::Storage`] and
//! [`crate::storage::reservations::ReservationStore`]): several hub instances serve one fleet from one database.
//!
//! Design note:
//! - Client: the blocking `postgres` crate (tokio-postgres underneath; each connection drives itself on a small
//!   runtime of its own, so it is only called off the async runtime: from `spawn_blocking`, as every storage
//!   call is, or from plain threads in tests and CLI verbs). Plain TCP (`NoTls`); no OpenSSL. Connections live in a
//!   bounded r2d2 pool (`pool_size`, default [`DEFAULT_POOL_SIZE`]); a caller waits at most
//!   [`POOL_WAIT`] for one and is then answered [`StorageError::Busy`] (HTTP 503 with `Retry-After`), so an
//!   overloaded database sheds load instead of queueing without bound. Each connection keeps its prepared
//!   statements, so a statement is parsed once per connection.
//! - Every storage method is one transaction. READ COMMITTED plus row locks everywhere except: store-document
//!   and epoch reads (REPEATABLE READ, READ ONLY: the meta and the chunks of one snapshot) and `start_rollout`
//!   (SERIALIZABLE: it reads, deletes and inserts the target's rollout row, which may not exist yet to be locked).
//!   A serialization failure (40001) or a deadlock (40P01) runs the whole transaction again, at most
//!   [`TX_ATTEMPTS`] times within 2 s, then answers [`StorageError::Busy`]; so does a lock wait past
//!   `lock_timeout` (5 s). Sessions also get `idle_in_transaction_session_timeout` (60 s): a hub process that hangs
//!   inside a transaction loses its session, and its row locks, instead of stalling every other instance.
//! - Cross-instance correctness comes from the database, never from a lock in one process:
//!   - an upload locks its till row (`SELECT ... FOR UPDATE`), so two instances given the same batch take turns:
//!     the first stores it, the second then finds it stored and answers the same acknowledgement (the idempotent
//!     duplicate); `UNIQUE (store, till, seq)` and `UNIQUE (store, till, event_id)` back this up, and the till's
//!     head moves only by `UPDATE ... WHERE hub_seq = <the head read>`;
//!   - enrolment and revocation lock the till row too, and a partial unique index allows one live credential per
//!     till;
//!   - a document write locks its `store_docs` rows (in store order) and stores only when the store is still at
//!     the epoch and version the caller changed, else [`StorageError::Conflict`] (reload and retry); compaction
//!     locks the same row, so it never interleaves with a write;
//!   - hub positions (`events.hub_pos`) and outbox positions (`outbox.pos`) come from one counter row taken last in
//!     the ingest transaction and held to its COMMIT. Positions are therefore handed out in commit order: whoever
//!     sees position N also sees every position before it, so a delivery cursor or an `after` page never skips an
//!     event that a slower transaction commits later (a sequence would allow exactly that). The price is that the
//!     tail of concurrent ingests (the inserts and the COMMIT) is serialised, as on SQLite;
//!   - delivery: a subscription is delivered by the instance holding its lease (`lease_owner`, `lease_until`, taken
//!     and renewed by a conditional UPDATE); cursors only move forward (`GREATEST`).
//! - Migrations: [`MIGRATIONS`], applied at open in one transaction under `pg_advisory_xact_lock` (keyed by the
//!   schema), recorded in `schema_migrations`. Instances starting together take turns; the later ones find nothing
//!   to do. A database migrated by a newer hub (an unknown version) is refused, not written to.
//! - Tables mirror the SQLite backend's (see [`crate::storage::sqlite`]) with PostgreSQL types: `BIGINT` counters
//!   and unix seconds, `UUID` event and journal ids, `BYTEA` documents and archives, `TEXT[]` subscription filters,
//!   plus `hub_counters` (the one counter row) and `schema_migrations`.
//! - Recovery: nothing beyond PostgreSQL's own; all state is in the database.
//!
//! Layout of this folder: `settings.rs` (the [`PgSettings`] and pool limits), `error.rs` (error mapping),
//! `conn.rs` (the [`PostgresStorage`] type, its pool and the transaction-retry helper), `schema.rs`
//! ([`MIGRATIONS`]), `rows.rs` (event and outbox rows read by several files), `scratch.rs` ([`ScratchSchema`] for
//! tests), then one file per trait: `ingest.rs`, `docs.rs`, `enrolment.rs`, `releases.rs`, `outbox.rs` and
//! `reservations.rs`. The per-trait files import the leaf files and each other's helpers, never this file.
//! - Durable when: a method returns only after its COMMIT; a retried transaction (serialization failure, deadlock)
//!   is run again whole, so a call either took effect once or not at all.

mod conn;
mod docs;
mod enrolment;
mod error;
mod ingest;
mod outbox;
mod releases;
mod reservations;
mod rows;
mod schema;
mod scratch;
mod settings;

pub use conn::PostgresStorage;
pub use schema::{MIGRATIONS, Migration};
pub use scratch::ScratchSchema;
pub use settings::{DEFAULT_POOL_SIZE, POOL_WAIT, PgSettings, TX_ATTEMPTS, redact_url};

#[cfg(test)]
mod reservations_tests;
#[cfg(test)]
mod tests;
