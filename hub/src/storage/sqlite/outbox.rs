//! [`OutboxStore`] on SQLite: subscriptions, delivery cursors and leases, dead letters.

use rusqlite::{ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::conn::{SqliteStorage, lock, to_u64};
use super::rows::{OUTBOX_SELECT, outbox_entry};
use crate::storage::error::StorageError;
use crate::storage::outbox::{DeadLetter, NewSubscription, OutboxEntry, OutboxStore, ReplaySelector, Subscription};

/// The columns [`subscription_row`] reads, from `subscriptions`.
pub(super) const SUBSCRIPTION_SELECT: &str =
    "SELECT id, kind, url, secret, kinds, stores, batch_size, max_attempts, cursor,
        created_at, last_error, last_delivery_at, stream, subject_prefix FROM subscriptions";

pub(super) fn subscription_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Subscription> {
    let list = |i: usize| -> rusqlite::Result<Vec<String>> {
        let text: String = r.get(i)?;
        Ok(serde_json::from_str(&text).unwrap_or_default())
    };
    Ok(Subscription {
        spec: NewSubscription {
            id: r.get(0)?,
            kind: r.get(1)?,
            url: r.get(2)?,
            secret: r.get(3)?,
            kinds: list(4)?,
            stores: list(5)?,
            batch_size: r.get(6)?,
            max_attempts: r.get(7)?,
            stream: r.get(12)?,
            subject_prefix: r.get(13)?,
        },
        cursor: r.get(8)?,
        created_at: r.get(9)?,
        last_error: r.get(10)?,
        last_delivery_at: r.get(11)?,
        lag: 0,
        dead_letters: 0,
    })
}

pub(super) fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

impl OutboxStore for SqliteStorage {
    fn create_subscription(&self, sub: &NewSubscription, now: i64) -> Result<Subscription, StorageError> {
        let conn = lock(&self.writer);
        let res = conn.execute(
            "INSERT INTO subscriptions (id, kind, url, secret, kinds, stores, batch_size, max_attempts, created_at,
                                        stream, subject_prefix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                sub.id,
                sub.kind,
                sub.url,
                sub.secret,
                json_list(&sub.kinds),
                json_list(&sub.stores),
                sub.batch_size,
                sub.max_attempts,
                now,
                sub.stream,
                sub.subject_prefix
            ],
        );
        match res {
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => Err(StorageError::Conflict),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(Subscription::new(sub.clone(), now)),
        }
    }

    fn subscription(&self, id: &str) -> Result<Option<Subscription>, StorageError> {
        self.with_reader(|conn| {
            Ok(conn
                .query_row(&format!("{SUBSCRIPTION_SELECT} WHERE id = ?1"), params![id], subscription_row)
                .optional()?)
        })
    }

    fn list_subscriptions(&self, lag: bool) -> Result<Vec<Subscription>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!("{SUBSCRIPTION_SELECT} ORDER BY id"))?;
            let mut subs = stmt.query_map([], subscription_row)?.collect::<Result<Vec<_>, _>>()?;
            for sub in &mut subs {
                if lag {
                    sub.lag = to_u64(conn.query_row(
                        "SELECT COUNT(*) FROM outbox o JOIN events e ON e.hub_pos = o.hub_pos
                         WHERE o.pos > ?1 AND (?2 = '[]' OR e.kind IN (SELECT value FROM json_each(?2)))
                           AND (?3 = '[]' OR e.store IN (SELECT value FROM json_each(?3)))",
                        params![sub.cursor, json_list(&sub.spec.kinds), json_list(&sub.spec.stores)],
                        |r| r.get(0),
                    )?);
                }
                sub.dead_letters = to_u64(conn.query_row(
                    "SELECT COUNT(*) FROM dead_letters WHERE subscription = ?1 AND replayed_at IS NULL",
                    params![sub.spec.id],
                    |r| r.get(0),
                )?);
            }
            Ok(subs)
        })
    }

    fn delete_subscription(&self, id: &str) -> Result<bool, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute("DELETE FROM subscriptions WHERE id = ?1", params![id])?;
        tx.execute("DELETE FROM dead_letters WHERE subscription = ?1", params![id])?;
        tx.commit()?;
        Ok(n == 1)
    }

    fn outbox_after(&self, sub: &NewSubscription, after: i64, limit: usize) -> Result<Vec<OutboxEntry>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{OUTBOX_SELECT} WHERE o.pos > ?1 AND (?2 = '[]' OR e.kind IN (SELECT value FROM json_each(?2)))
                   AND (?3 = '[]' OR e.store IN (SELECT value FROM json_each(?3)))
                 ORDER BY o.pos LIMIT ?4"
            ))?;
            let n = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows =
                stmt.query_map(params![after, json_list(&sub.kinds), json_list(&sub.stores), n], outbox_entry)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn delivered(&self, id: &str, cursor: i64, now: i64) -> Result<(), StorageError> {
        let conn = lock(&self.writer);
        conn.execute(
            "UPDATE subscriptions SET cursor = MAX(cursor, ?2), last_delivery_at = ?3, last_error = NULL WHERE id = ?1",
            params![id, cursor, now],
        )?;
        Ok(())
    }

    fn delivery_failed(&self, id: &str, error: &str, _now: i64) -> Result<(), StorageError> {
        let conn = lock(&self.writer);
        conn.execute("UPDATE subscriptions SET last_error = ?2 WHERE id = ?1", params![id, error])?;
        Ok(())
    }

    fn dead_letter(
        &self,
        id: &str,
        entry: &OutboxEntry,
        attempts: u32,
        error: &str,
        now: i64,
    ) -> Result<(), StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO dead_letters (subscription, pos, attempts, last_error, dead_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (subscription, pos) DO UPDATE SET attempts = attempts + excluded.attempts,
                 last_error = excluded.last_error, dead_at = excluded.dead_at, replay_requested_at = NULL,
                 replayed_at = NULL",
            params![id, entry.pos, attempts, error, now],
        )?;
        tx.execute(
            "UPDATE subscriptions SET cursor = MAX(cursor, ?2), last_error = ?3 WHERE id = ?1",
            params![id, entry.pos, error],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn list_dead_letters(&self, id: &str) -> Result<Vec<DeadLetter>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT d.id, d.subscription, d.pos, e.event_id, e.store, e.till, e.seq, e.kind, d.attempts,
                        d.last_error, d.dead_at, d.replay_requested_at, d.replayed_at
                 FROM dead_letters d JOIN outbox o ON o.pos = d.pos JOIN events e ON e.hub_pos = o.hub_pos
                 WHERE d.subscription = ?1 ORDER BY d.id",
            )?;
            let rows = stmt.query_map(params![id], |r| {
                let event_id: String = r.get(3)?;
                Ok(DeadLetter {
                    id: r.get(0)?,
                    subscription: r.get(1)?,
                    pos: r.get(2)?,
                    event_id: event_id.parse().unwrap_or_default(),
                    store: r.get(4)?,
                    till: r.get(5)?,
                    seq: to_u64(r.get(6)?),
                    kind: r.get(7)?,
                    attempts: r.get(8)?,
                    last_error: r.get(9)?,
                    dead_at: r.get(10)?,
                    replay_requested_at: r.get(11)?,
                    replayed_at: r.get(12)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn request_replay(&self, id: &str, which: &ReplaySelector, now: i64) -> Result<u64, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = match which {
            ReplaySelector::Ids(ids) => {
                let mut stmt = tx.prepare_cached(
                    "UPDATE dead_letters SET replay_requested_at = ?3, replayed_at = NULL
                     WHERE subscription = ?1 AND id = ?2",
                )?;
                let mut n = 0;
                for dl in ids {
                    n += stmt.execute(params![id, dl, now])?;
                }
                n
            }
            ReplaySelector::DeadBetween(from, to) => tx.execute(
                "UPDATE dead_letters SET replay_requested_at = ?4, replayed_at = NULL
                 WHERE subscription = ?1 AND dead_at BETWEEN ?2 AND ?3",
                params![id, from, to, now],
            )?,
        };
        tx.commit()?;
        Ok(n as u64)
    }

    fn pending_replays(&self, id: &str, limit: usize) -> Result<Vec<(i64, OutboxEntry)>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body, e.hash, 0,
                        o.pos, e.received_at, d.id
                 FROM dead_letters d JOIN outbox o ON o.pos = d.pos JOIN events e ON e.hub_pos = o.hub_pos
                 WHERE d.subscription = ?1 AND d.replay_requested_at IS NOT NULL AND d.replayed_at IS NULL
                 ORDER BY d.id LIMIT ?2",
            )?;
            let n = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![id, n], |r| Ok((r.get::<_, i64>(12)?, outbox_entry(r)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn replayed(&self, dead_letter: i64, now: i64) -> Result<(), StorageError> {
        let conn = lock(&self.writer);
        conn.execute("UPDATE dead_letters SET replayed_at = ?2 WHERE id = ?1", params![dead_letter, now])?;
        Ok(())
    }

    fn rewind_subscription(&self, id: &str, cursor: i64) -> Result<bool, StorageError> {
        let conn = lock(&self.writer);
        Ok(conn.execute("UPDATE subscriptions SET cursor = ?2 WHERE id = ?1", params![id, cursor])? == 1)
    }

    fn lease_subscription(&self, id: &str, owner: &str, now: i64, until: i64) -> Result<bool, StorageError> {
        let conn = lock(&self.writer);
        let n = conn.execute(
            "UPDATE subscriptions SET lease_owner = ?2, lease_until = ?4
             WHERE id = ?1 AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_until <= ?3)",
            params![id, owner, now, until],
        )?;
        Ok(n == 1)
    }

    fn release_subscription_lease(&self, id: &str, owner: &str) -> Result<(), StorageError> {
        let conn = lock(&self.writer);
        conn.execute(
            "UPDATE subscriptions SET lease_owner = NULL, lease_until = 0 WHERE id = ?1 AND lease_owner = ?2",
            params![id, owner],
        )?;
        Ok(())
    }
}
