//! [`EnrolmentStore`] on SQLite: enrolment codes, credentials and failed attempts.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use storesync_shared::genesis_hash;

use super::conn::{SqliteStorage, lock};
use crate::storage::enrolment::{EnrolmentStore, NewEnrollment, RedeemError};
use crate::storage::error::StorageError;
use crate::storage::ingest::TillId;

/// Failed-attempt rows older than this are pruned on the next failure.
pub(super) const FAILURE_RETENTION_S: i64 = 24 * 3600;

impl EnrolmentStore for SqliteStorage {
    fn create_enrollment(&self, e: &NewEnrollment) -> Result<(), StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO enrollments (code_hash, store, till, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![e.code_hash, e.till.store, e.till.till, e.created_at, e.expires_at],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO tills (store, till, last_hash) VALUES (?1, ?2, ?3)",
            params![e.till.store, e.till.till, genesis_hash(&e.till.store, &e.till.till)],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn redeem_enrollment(
        &self,
        code_hash: &str,
        credential_hash: &str,
        agent_version: &str,
        now: i64,
    ) -> Result<TillId, RedeemError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, String, i64, Option<i64>)> = tx
            .query_row(
                "SELECT store, till, expires_at, used_at FROM enrollments WHERE code_hash = ?1",
                params![code_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((store, till, expires_at, used_at)) = row else {
            return Err(RedeemError::InvalidCode);
        };
        if used_at.is_some() {
            return Err(RedeemError::Used);
        }
        if now >= expires_at {
            return Err(RedeemError::Expired);
        }
        let used = tx.execute(
            "UPDATE enrollments SET used_at = ?1 WHERE code_hash = ?2 AND used_at IS NULL",
            params![now, code_hash],
        )?;
        if used != 1 {
            return Err(RedeemError::Used);
        }
        tx.execute(
            "UPDATE credentials SET revoked_at = ?1 WHERE store = ?2 AND till = ?3 AND revoked_at IS NULL",
            params![now, store, till],
        )?;
        tx.execute(
            "INSERT INTO credentials (hash, store, till, issued_at) VALUES (?1, ?2, ?3, ?4)",
            params![credential_hash, store, till, now],
        )?;
        tx.execute(
            "INSERT INTO tills (store, till, last_hash, enrolled_at, agent_version) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (store, till) DO UPDATE SET enrolled_at = ?4, revoked_at = NULL, agent_version = ?5",
            params![store, till, genesis_hash(&store, &till), now, agent_version],
        )?;
        tx.commit()?;
        Ok(TillId { store, till })
    }

    fn authenticate(&self, credential_hash: &str) -> Result<Option<TillId>, StorageError> {
        self.with_reader(|conn| {
            Ok(conn
                .query_row(
                    "SELECT store, till FROM credentials WHERE hash = ?1 AND revoked_at IS NULL",
                    params![credential_hash],
                    |r| Ok(TillId { store: r.get(0)?, till: r.get(1)? }),
                )
                .optional()?)
        })
    }

    fn revoke(&self, till: &TillId, now: i64) -> Result<bool, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known = tx.execute(
            "UPDATE tills SET revoked_at = ?1 WHERE store = ?2 AND till = ?3",
            params![now, till.store, till.till],
        )?;
        tx.execute(
            "UPDATE credentials SET revoked_at = ?1 WHERE store = ?2 AND till = ?3 AND revoked_at IS NULL",
            params![now, till.store, till.till],
        )?;
        // Outstanding codes would let a revoked till straight back in.
        tx.execute(
            "UPDATE enrollments SET used_at = ?1 WHERE store = ?2 AND till = ?3 AND used_at IS NULL",
            params![now, till.store, till.till],
        )?;
        tx.commit()?;
        Ok(known == 1)
    }

    fn record_failed_attempt(&self, client: &str, now: i64) -> Result<(), StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO enroll_failures (client, at) VALUES (?1, ?2)", params![client, now])?;
        tx.execute("DELETE FROM enroll_failures WHERE at < ?1", params![now - FAILURE_RETENTION_S])?;
        tx.commit()?;
        Ok(())
    }

    fn failed_attempts_since(&self, client: &str, since: i64) -> Result<(u32, Option<i64>), StorageError> {
        self.with_reader(|conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*), MIN(at) FROM enroll_failures WHERE client = ?1 AND at >= ?2",
                params![client, since],
                |r| Ok((r.get::<_, u32>(0)?, r.get(1)?)),
            )?)
        })
    }
}
