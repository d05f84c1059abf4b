//! [`EnrolmentStore`] on PostgreSQL: enrolment codes, credentials and failed attempts.

use storesync_shared::genesis_hash;

use super::conn::{Mode, PostgresStorage, to_u32};
use crate::storage::enrolment::{EnrolmentStore, NewEnrollment, RedeemError};
use crate::storage::error::StorageError;
use crate::storage::ingest::TillId;

/// Failed-attempt rows older than this are pruned on the next failure.
pub(super) const FAILURE_RETENTION_S: i64 = 24 * 3600;

impl EnrolmentStore for PostgresStorage {
    fn create_enrollment(&self, e: &NewEnrollment) -> Result<(), StorageError> {
        self.tx(Mode::Write, |tx| {
            tx.execute(
                "INSERT INTO enrollments (code_hash, store, till, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                &[&e.code_hash, &e.till.store, &e.till.till, &e.created_at, &e.expires_at],
            )?;
            tx.execute(
                "INSERT INTO tills (store, till, last_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&e.till.store, &e.till.till, &genesis_hash(&e.till.store, &e.till.till)],
            )?;
            Ok(())
        })
    }

    fn redeem_enrollment(
        &self,
        code_hash: &str,
        credential_hash: &str,
        agent_version: &str,
        now: i64,
    ) -> Result<TillId, RedeemError> {
        self.tx(Mode::Write, |tx| {
            let Some(row) = tx.query_opt("SELECT store, till FROM enrollments WHERE code_hash = $1", &[&code_hash])?
            else {
                return Err(RedeemError::InvalidCode);
            };
            let (store, till): (String, String) = (row.get(0), row.get(1));
            // The till row first (as revoke takes it), then the code: a concurrent revoke or another redeem of the
            // same till waits here, and nobody waits crosswise.
            tx.execute(
                "INSERT INTO tills (store, till, last_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&store, &till, &genesis_hash(&store, &till)],
            )?;
            tx.execute("SELECT 1 FROM tills WHERE store = $1 AND till = $2 FOR UPDATE", &[&store, &till])?;
            let row = tx.query_one(
                "SELECT expires_at, used_at FROM enrollments WHERE code_hash = $1 FOR UPDATE",
                &[&code_hash],
            )?;
            if row.get::<_, Option<i64>>(1).is_some() {
                return Err(RedeemError::Used);
            }
            if now >= row.get::<_, i64>(0) {
                return Err(RedeemError::Expired);
            }
            let used = tx.execute(
                "UPDATE enrollments SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL",
                &[&now, &code_hash],
            )?;
            if used != 1 {
                return Err(RedeemError::Used);
            }
            tx.execute(
                "UPDATE credentials SET revoked_at = $1 WHERE store = $2 AND till = $3 AND revoked_at IS NULL",
                &[&now, &store, &till],
            )?;
            tx.execute(
                "INSERT INTO credentials (hash, store, till, issued_at) VALUES ($1, $2, $3, $4)",
                &[&credential_hash, &store, &till, &now],
            )?;
            tx.execute(
                "UPDATE tills SET enrolled_at = $1, revoked_at = NULL, agent_version = $2 WHERE store = $3 AND till = $4",
                &[&now, &agent_version, &store, &till],
            )?;
            Ok(TillId { store, till })
        })
    }

    fn authenticate(&self, credential_hash: &str) -> Result<Option<TillId>, StorageError> {
        self.with_conn(|cx| {
            let row = cx.query_opt(
                "SELECT store, till FROM credentials WHERE hash = $1 AND revoked_at IS NULL",
                &[&credential_hash],
            )?;
            Ok(row.map(|r| TillId { store: r.get(0), till: r.get(1) }))
        })
    }

    fn revoke(&self, till: &TillId, now: i64) -> Result<bool, StorageError> {
        self.tx(Mode::Write, |tx| {
            let known = tx.execute(
                "UPDATE tills SET revoked_at = $1 WHERE store = $2 AND till = $3",
                &[&now, &till.store, &till.till],
            )?;
            tx.execute(
                "UPDATE credentials SET revoked_at = $1 WHERE store = $2 AND till = $3 AND revoked_at IS NULL",
                &[&now, &till.store, &till.till],
            )?;
            // Outstanding codes would let a revoked till straight back in.
            tx.execute(
                "UPDATE enrollments SET used_at = $1 WHERE store = $2 AND till = $3 AND used_at IS NULL",
                &[&now, &till.store, &till.till],
            )?;
            Ok(known == 1)
        })
    }

    fn record_failed_attempt(&self, client: &str, now: i64) -> Result<(), StorageError> {
        self.tx(Mode::Write, |tx| {
            tx.execute("INSERT INTO enroll_failures (client, at) VALUES ($1, $2)", &[&client, &now])?;
            tx.execute("DELETE FROM enroll_failures WHERE at < $1", &[&(now - FAILURE_RETENTION_S)])?;
            Ok(())
        })
    }

    fn failed_attempts_since(&self, client: &str, since: i64) -> Result<(u32, Option<i64>), StorageError> {
        self.with_conn(|cx| {
            let r = cx.query_one(
                "SELECT COUNT(*), MIN(at) FROM enroll_failures WHERE client = $1 AND at >= $2",
                &[&client, &since],
            )?;
            Ok((to_u32(r.get(0)), r.get(1)))
        })
    }
}
