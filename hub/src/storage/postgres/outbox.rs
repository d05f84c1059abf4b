//! [`OutboxStore`] on PostgreSQL: subscriptions, delivery cursors and leases, dead letters.

use postgres::Row;

use super::conn::{Mode, PostgresStorage, limit_of, to_u32, to_u64};
use super::rows::{OUTBOX_FILTER, OUTBOX_SELECT, outbox_entry};
use crate::storage::error::StorageError;
use crate::storage::outbox::{DeadLetter, NewSubscription, OutboxEntry, OutboxStore, ReplaySelector, Subscription};

/// The columns [`subscription_row`] reads, from `subscriptions`.
pub(super) const SUBSCRIPTION_SELECT: &str =
    "SELECT id, kind, url, secret, kinds, stores, batch_size, max_attempts, cursor,
        created_at, last_error, last_delivery_at, stream, subject_prefix FROM subscriptions";

pub(super) fn subscription_row(r: &Row) -> Subscription {
    Subscription {
        spec: NewSubscription {
            id: r.get(0),
            kind: r.get(1),
            url: r.get(2),
            secret: r.get(3),
            kinds: r.get(4),
            stores: r.get(5),
            batch_size: to_u32(r.get(6)),
            max_attempts: to_u32(r.get(7)),
            stream: r.get(12),
            subject_prefix: r.get(13),
        },
        cursor: r.get(8),
        created_at: r.get(9),
        last_error: r.get(10),
        last_delivery_at: r.get(11),
        lag: 0,
        dead_letters: 0,
    }
}

impl OutboxStore for PostgresStorage {
    fn create_subscription(&self, sub: &NewSubscription, now: i64) -> Result<Subscription, StorageError> {
        let res = self.tx(Mode::Write, |tx| -> Result<u64, StorageError> {
            Ok(tx.execute(
                "INSERT INTO subscriptions (id, kind, url, secret, kinds, stores, batch_size, max_attempts, created_at,
                                            stream, subject_prefix)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING",
                &[
                    &sub.id,
                    &sub.kind,
                    &sub.url,
                    &sub.secret,
                    &sub.kinds,
                    &sub.stores,
                    &i64::from(sub.batch_size),
                    &i64::from(sub.max_attempts),
                    &now,
                    &sub.stream,
                    &sub.subject_prefix,
                ],
            )?)
        })?;
        if res != 1 {
            return Err(StorageError::Conflict);
        }
        Ok(Subscription::new(sub.clone(), now))
    }

    fn subscription(&self, id: &str) -> Result<Option<Subscription>, StorageError> {
        self.with_conn(|cx| {
            let sql = format!("{SUBSCRIPTION_SELECT} WHERE id = $1");
            Ok(cx.query_opt(&sql, &[&id])?.as_ref().map(subscription_row))
        })
    }

    fn list_subscriptions(&self, lag: bool) -> Result<Vec<Subscription>, StorageError> {
        self.with_conn(|cx| {
            let sql = format!("{SUBSCRIPTION_SELECT} ORDER BY id COLLATE \"C\"");
            let mut subs: Vec<Subscription> = cx.query(&sql, &[])?.iter().map(subscription_row).collect();
            let lag_sql =
                format!("SELECT COUNT(*) FROM outbox o JOIN events e ON e.hub_pos = o.hub_pos WHERE {OUTBOX_FILTER}");
            for sub in &mut subs {
                if lag {
                    let row = cx.query_one(&lag_sql, &[&sub.cursor, &sub.spec.kinds, &sub.spec.stores])?;
                    sub.lag = to_u64(row.get(0));
                }
                let row = cx.query_one(
                    "SELECT COUNT(*) FROM dead_letters WHERE subscription = $1 AND replayed_at IS NULL",
                    &[&sub.spec.id],
                )?;
                sub.dead_letters = to_u64(row.get(0));
            }
            Ok(subs)
        })
    }

    fn delete_subscription(&self, id: &str) -> Result<bool, StorageError> {
        self.tx(Mode::Write, |tx| {
            let n = tx.execute("DELETE FROM subscriptions WHERE id = $1", &[&id])?;
            tx.execute("DELETE FROM dead_letters WHERE subscription = $1", &[&id])?;
            Ok(n == 1)
        })
    }

    fn outbox_after(&self, sub: &NewSubscription, after: i64, limit: usize) -> Result<Vec<OutboxEntry>, StorageError> {
        self.with_conn(|cx| {
            let sql = format!("{OUTBOX_SELECT} WHERE {OUTBOX_FILTER} ORDER BY o.pos LIMIT $4");
            let rows = cx.query(&sql, &[&after, &sub.kinds, &sub.stores, &limit_of(limit)])?;
            Ok(rows.iter().map(outbox_entry).collect())
        })
    }

    fn delivered(&self, id: &str, cursor: i64, now: i64) -> Result<(), StorageError> {
        self.with_conn(|cx| {
            cx.execute(
                "UPDATE subscriptions SET cursor = GREATEST(cursor, $2), last_delivery_at = $3, last_error = NULL
                 WHERE id = $1",
                &[&id, &cursor, &now],
            )?;
            Ok(())
        })
    }

    fn delivery_failed(&self, id: &str, error: &str, _now: i64) -> Result<(), StorageError> {
        self.with_conn(|cx| {
            cx.execute("UPDATE subscriptions SET last_error = $2 WHERE id = $1", &[&id, &error])?;
            Ok(())
        })
    }

    fn dead_letter(
        &self,
        id: &str,
        entry: &OutboxEntry,
        attempts: u32,
        error: &str,
        now: i64,
    ) -> Result<(), StorageError> {
        self.tx(Mode::Write, |tx| {
            tx.execute(
                "INSERT INTO dead_letters (subscription, pos, attempts, last_error, dead_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (subscription, pos) DO UPDATE SET attempts = dead_letters.attempts + excluded.attempts,
                     last_error = excluded.last_error, dead_at = excluded.dead_at, replay_requested_at = NULL,
                     replayed_at = NULL",
                &[&id, &entry.pos, &i64::from(attempts), &error, &now],
            )?;
            tx.execute(
                "UPDATE subscriptions SET cursor = GREATEST(cursor, $2), last_error = $3 WHERE id = $1",
                &[&id, &entry.pos, &error],
            )?;
            Ok(())
        })
    }

    fn list_dead_letters(&self, id: &str) -> Result<Vec<DeadLetter>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT d.id, d.subscription, d.pos, e.event_id, e.store, e.till, e.seq, e.kind, d.attempts,
                        d.last_error, d.dead_at, d.replay_requested_at, d.replayed_at
                 FROM dead_letters d JOIN outbox o ON o.pos = d.pos JOIN events e ON e.hub_pos = o.hub_pos
                 WHERE d.subscription = $1 ORDER BY d.id",
                &[&id],
            )?;
            Ok(rows
                .iter()
                .map(|r| DeadLetter {
                    id: r.get(0),
                    subscription: r.get(1),
                    pos: r.get(2),
                    event_id: r.get(3),
                    store: r.get(4),
                    till: r.get(5),
                    seq: to_u64(r.get(6)),
                    kind: r.get(7),
                    attempts: to_u32(r.get(8)),
                    last_error: r.get(9),
                    dead_at: r.get(10),
                    replay_requested_at: r.get(11),
                    replayed_at: r.get(12),
                })
                .collect())
        })
    }

    fn request_replay(&self, id: &str, which: &ReplaySelector, now: i64) -> Result<u64, StorageError> {
        self.tx(Mode::Write, |tx| {
            Ok(match which {
                ReplaySelector::Ids(ids) => tx.execute(
                    "UPDATE dead_letters SET replay_requested_at = $3, replayed_at = NULL
                     WHERE subscription = $1 AND id = ANY($2::bigint[])",
                    &[&id, ids, &now],
                )?,
                ReplaySelector::DeadBetween(from, to) => tx.execute(
                    "UPDATE dead_letters SET replay_requested_at = $4, replayed_at = NULL
                     WHERE subscription = $1 AND dead_at BETWEEN $2 AND $3",
                    &[&id, from, to, &now],
                )?,
            })
        })
    }

    fn pending_replays(&self, id: &str, limit: usize) -> Result<Vec<(i64, OutboxEntry)>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body, e.hash, FALSE,
                        o.pos, e.received_at, d.id
                 FROM dead_letters d JOIN outbox o ON o.pos = d.pos JOIN events e ON e.hub_pos = o.hub_pos
                 WHERE d.subscription = $1 AND d.replay_requested_at IS NOT NULL AND d.replayed_at IS NULL
                 ORDER BY d.id LIMIT $2",
                &[&id, &limit_of(limit)],
            )?;
            Ok(rows.iter().map(|r| (r.get(12), outbox_entry(r))).collect())
        })
    }

    fn replayed(&self, dead_letter: i64, now: i64) -> Result<(), StorageError> {
        self.with_conn(|cx| {
            cx.execute("UPDATE dead_letters SET replayed_at = $2 WHERE id = $1", &[&dead_letter, &now])?;
            Ok(())
        })
    }

    fn rewind_subscription(&self, id: &str, cursor: i64) -> Result<bool, StorageError> {
        self.with_conn(|cx| Ok(cx.execute("UPDATE subscriptions SET cursor = $2 WHERE id = $1", &[&id, &cursor])? == 1))
    }

    fn lease_subscription(&self, id: &str, owner: &str, now: i64, until: i64) -> Result<bool, StorageError> {
        self.with_conn(|cx| {
            let n = cx.execute(
                "UPDATE subscriptions SET lease_owner = $2, lease_until = $4
                 WHERE id = $1 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until <= $3)",
                &[&id, &owner, &now, &until],
            )?;
            Ok(n == 1)
        })
    }

    fn release_subscription_lease(&self, id: &str, owner: &str) -> Result<(), StorageError> {
        self.with_conn(|cx| {
            cx.execute(
                "UPDATE subscriptions SET lease_owner = NULL, lease_until = 0 WHERE id = $1 AND lease_owner = $2",
                &[&id, &owner],
            )?;
            Ok(())
        })
    }
}
