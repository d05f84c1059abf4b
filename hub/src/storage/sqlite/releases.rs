//! [`ReleaseStore`] on SQLite: releases, rollouts and update reports.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::conn::{SqliteStorage, lock, to_i64, to_u64};
use crate::rollout::{Stage, Transition};
use crate::storage::error::StorageError;
use crate::storage::ingest::TillId;
use crate::storage::releases::{
    NewRelease, NewRollout, NewUpdateReport, PutRelease, ReleaseInfo, ReleaseStore, ReportEffect, Rollout,
    RolloutError, UpdateCandidate,
};
use crate::storage::rules::{apply_report, apply_transition, newest_first, outcome_text};

pub(super) const ROLLOUT_COLUMNS: &str =
    "target, version, stage, canary_percent, max_failures, failures, installed, refused,
    halted_reason, started_at, updated_at";

pub(super) fn rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Rollout> {
    let stage: String = r.get(2)?;
    Ok(Rollout {
        target: r.get(0)?,
        version: r.get(1)?,
        // An unknown stage (written by a newer hub) offers nothing.
        stage: Stage::parse(&stage).unwrap_or(Stage::Halted),
        canary_percent: u8::try_from(r.get::<_, i64>(3)?.clamp(0, 100)).unwrap_or(0),
        max_failures: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(u32::MAX),
        failures: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(u32::MAX),
        installed: to_u64(r.get(6)?),
        refused: to_u64(r.get(7)?),
        halted_reason: r.get(8)?,
        started_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

pub(super) fn read_rollout(conn: &Connection, target: &str) -> Result<Option<Rollout>, rusqlite::Error> {
    conn.query_row(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE target = ?1"), params![target], rollout_row)
        .optional()
}

/// Writes a rollout's mutable fields back.
pub(super) fn write_rollout(conn: &Connection, r: &Rollout) -> Result<(), rusqlite::Error> {
    conn.execute(
        "UPDATE rollouts SET stage = ?1, failures = ?2, installed = ?3, refused = ?4, halted_reason = ?5,
            updated_at = ?6 WHERE target = ?7",
        params![
            r.stage.as_str(),
            i64::from(r.failures),
            to_i64(r.installed),
            to_i64(r.refused),
            r.halted_reason,
            r.updated_at,
            r.target
        ],
    )?;
    Ok(())
}

impl ReleaseStore for SqliteStorage {
    fn put_release(&self, rel: &NewRelease) -> Result<PutRelease, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<(Vec<u8>, Option<String>, String)> = tx
            .query_row(
                "SELECT manifest, signature, archive_sha256 FROM releases WHERE version = ?1 AND target = ?2",
                params![rel.version, rel.target],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((manifest, signature, sha)) = stored {
            let same = manifest == rel.manifest && signature == rel.signature && sha == rel.archive_sha256;
            return Ok(if same { PutRelease::Identical } else { PutRelease::Conflict });
        }
        tx.execute(
            "INSERT INTO releases (version, target, manifest, signature, archive, archive_sha256, archive_size,
                 min_version, expires_at, uploaded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                rel.version,
                rel.target,
                rel.manifest,
                rel.signature,
                rel.archive,
                rel.archive_sha256,
                to_i64(rel.archive_size),
                rel.min_version,
                rel.expires_at,
                rel.uploaded_at
            ],
        )?;
        tx.commit()?;
        Ok(PutRelease::Created)
    }

    fn list_releases(&self) -> Result<Vec<ReleaseInfo>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT version, target, min_version, expires_at, archive_sha256, archive_size,
                        signature IS NOT NULL, uploaded_at FROM releases",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(ReleaseInfo {
                    version: r.get(0)?,
                    target: r.get(1)?,
                    min_version: r.get(2)?,
                    expires_at: r.get(3)?,
                    archive_sha256: r.get(4)?,
                    archive_size: to_u64(r.get(5)?),
                    signed: r.get(6)?,
                    uploaded_at: r.get(7)?,
                })
            })?;
            let mut out = rows.collect::<Result<Vec<_>, _>>()?;
            out.sort_by(newest_first);
            Ok(out)
        })
    }

    fn release_archive(&self, version: &str, target: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.with_reader(|conn| {
            Ok(conn
                .query_row(
                    "SELECT archive FROM releases WHERE version = ?1 AND target = ?2",
                    params![version, target],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    fn start_rollout(&self, new: &NewRollout, now: i64) -> Result<Rollout, RolloutError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM releases WHERE version = ?1 AND target = ?2)",
            params![new.version, new.target],
            |r| r.get(0),
        )?;
        if !known {
            return Err(RolloutError::UnknownRelease { version: new.version.clone(), target: new.target.clone() });
        }
        tx.execute(
            "INSERT INTO rollout_history (target, version, stage, canary_percent, max_failures, failures, installed,
                 refused, halted_reason, started_at, ended_at)
             SELECT target, version, 'superseded', canary_percent, max_failures, failures, installed, refused,
                 halted_reason, started_at, ?2 FROM rollouts WHERE target = ?1",
            params![new.target, now],
        )?;
        tx.execute("DELETE FROM rollouts WHERE target = ?1", params![new.target])?;
        tx.execute(
            "INSERT INTO rollouts (target, version, stage, canary_percent, max_failures, started_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                new.target,
                new.version,
                Stage::initial(new.canary_percent).as_str(),
                i64::from(new.canary_percent),
                i64::from(new.max_failures),
                now
            ],
        )?;
        let r = read_rollout(&tx, &new.target)?.ok_or_else(|| RolloutError::NoRollout(new.target.clone()))?;
        tx.commit()?;
        Ok(r)
    }

    fn change_rollout(&self, target: &str, change: &Transition, now: i64) -> Result<Rollout, RolloutError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut r = read_rollout(&tx, target)?.ok_or_else(|| RolloutError::NoRollout(target.to_owned()))?;
        apply_transition(&mut r, change, now)?;
        write_rollout(&tx, &r)?;
        tx.commit()?;
        Ok(r)
    }

    fn list_rollouts(&self) -> Result<Vec<Rollout>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY target"))?;
            let rows = stmt.query_map([], rollout_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn version_spread(&self) -> Result<Vec<(String, u64)>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT agent_version, COUNT(*) FROM tills
                 WHERE enrolled_at IS NOT NULL AND revoked_at IS NULL GROUP BY agent_version ORDER BY agent_version",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?))))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn check_update(
        &self,
        till: &TillId,
        running_version: &str,
        target: &str,
        now: i64,
    ) -> Result<Option<UpdateCandidate>, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE tills SET agent_version = ?1, last_seen = ?2 WHERE store = ?3 AND till = ?4",
            params![running_version, now, till.store, till.till],
        )?;
        let Some(rollout) = read_rollout(&tx, target)? else {
            tx.commit()?;
            return Ok(None);
        };
        let release: Option<(Vec<u8>, Option<String>)> = tx
            .query_row(
                "SELECT manifest, signature FROM releases WHERE version = ?1 AND target = ?2",
                params![rollout.version, rollout.target],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        tx.commit()?;
        Ok(release.map(|(manifest, signature)| UpdateCandidate { rollout, manifest, signature }))
    }

    fn record_update_report(
        &self,
        till: &TillId,
        report: &NewUpdateReport,
        now: i64,
    ) -> Result<ReportEffect, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO update_reports (store, till, version, target, outcome, running_version, reason, detail, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                till.store,
                till.till,
                report.version,
                report.target,
                outcome_text(report.outcome),
                report.running_version,
                report.reason,
                report.detail,
                now
            ],
        )?;
        tx.execute(
            "UPDATE tills SET agent_version = ?1, last_seen = ?2 WHERE store = ?3 AND till = ?4",
            params![report.running_version, now, till.store, till.till],
        )?;
        let mut effect = ReportEffect { rollout: None, counted_failure: false, halted_now: false };
        if let Some(mut r) = read_rollout(&tx, &report.target)?.filter(|r| r.version == report.version) {
            effect = apply_report(&mut r, &till.store, report.outcome, now);
            write_rollout(&tx, &r)?;
        }
        tx.commit()?;
        Ok(effect)
    }
}
