//! [`ReleaseStore`] on PostgreSQL: releases, rollouts and update reports.

use postgres::Row;

use super::conn::{Mode, PostgresStorage, Tx, to_i64, to_u32, to_u64};
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

pub(super) fn rollout_row(r: &Row) -> Rollout {
    let stage: String = r.get(2);
    Rollout {
        target: r.get(0),
        version: r.get(1),
        // An unknown stage (written by a newer hub) offers nothing.
        stage: Stage::parse(&stage).unwrap_or(Stage::Halted),
        canary_percent: u8::try_from(r.get::<_, i64>(3).clamp(0, 100)).unwrap_or(0),
        max_failures: to_u32(r.get(4)),
        failures: to_u32(r.get(5)),
        installed: to_u64(r.get(6)),
        refused: to_u64(r.get(7)),
        halted_reason: r.get(8),
        started_at: r.get(9),
        updated_at: r.get(10),
    }
}

/// The target's rollout, locked for the rest of the transaction.
pub(super) fn lock_rollout(tx: &mut Tx<'_, '_>, target: &str) -> Result<Option<Rollout>, postgres::Error> {
    let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE target = $1 FOR UPDATE");
    Ok(tx.query_opt(&sql, &[&target])?.as_ref().map(rollout_row))
}

/// Writes a rollout's mutable fields back.
pub(super) fn write_rollout(tx: &mut Tx<'_, '_>, r: &Rollout) -> Result<(), postgres::Error> {
    tx.execute(
        "UPDATE rollouts SET stage = $1, failures = $2, installed = $3, refused = $4, halted_reason = $5,
            updated_at = $6 WHERE target = $7",
        &[
            &r.stage.as_str(),
            &i64::from(r.failures),
            &to_i64(r.installed),
            &to_i64(r.refused),
            &r.halted_reason,
            &r.updated_at,
            &r.target,
        ],
    )?;
    Ok(())
}

impl ReleaseStore for PostgresStorage {
    fn put_release(&self, rel: &NewRelease) -> Result<PutRelease, StorageError> {
        self.tx(Mode::Write, |tx| {
            let compare = |tx: &mut Tx<'_, '_>| -> Result<Option<PutRelease>, postgres::Error> {
                let row = tx.query_opt(
                    "SELECT manifest, signature, archive_sha256 FROM releases WHERE version = $1 AND target = $2",
                    &[&rel.version, &rel.target],
                )?;
                Ok(row.map(|r| {
                    let same = r.get::<_, Vec<u8>>(0) == rel.manifest
                        && r.get::<_, Option<String>>(1) == rel.signature
                        && r.get::<_, String>(2) == rel.archive_sha256;
                    if same { PutRelease::Identical } else { PutRelease::Conflict }
                }))
            };
            if let Some(stored) = compare(tx)? {
                return Ok(stored);
            }
            let n = tx.execute(
                "INSERT INTO releases (version, target, manifest, signature, archive, archive_sha256, archive_size,
                     min_version, expires_at, uploaded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (version, target) DO NOTHING",
                &[
                    &rel.version,
                    &rel.target,
                    &rel.manifest,
                    &rel.signature,
                    &rel.archive,
                    &rel.archive_sha256,
                    &to_i64(rel.archive_size),
                    &rel.min_version,
                    &rel.expires_at,
                    &rel.uploaded_at,
                ],
            )?;
            if n == 1 {
                return Ok(PutRelease::Created);
            }
            // Another instance stored this version and target between the look and the insert.
            Ok(compare(tx)?.unwrap_or(PutRelease::Conflict))
        })
    }

    fn list_releases(&self) -> Result<Vec<ReleaseInfo>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT version, target, min_version, expires_at, archive_sha256, archive_size,
                        signature IS NOT NULL, uploaded_at FROM releases",
                &[],
            )?;
            let mut out: Vec<ReleaseInfo> = rows
                .iter()
                .map(|r| ReleaseInfo {
                    version: r.get(0),
                    target: r.get(1),
                    min_version: r.get(2),
                    expires_at: r.get(3),
                    archive_sha256: r.get(4),
                    archive_size: to_u64(r.get(5)),
                    signed: r.get(6),
                    uploaded_at: r.get(7),
                })
                .collect();
            out.sort_by(newest_first);
            Ok(out)
        })
    }

    fn release_archive(&self, version: &str, target: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.with_conn(|cx| {
            let row =
                cx.query_opt("SELECT archive FROM releases WHERE version = $1 AND target = $2", &[&version, &target])?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn start_rollout(&self, new: &NewRollout, now: i64) -> Result<Rollout, RolloutError> {
        // SERIALIZABLE: the target's row may not exist yet, so there is nothing to lock; two instances starting a
        // rollout of one target at once would otherwise both miss recording the other's as superseded.
        self.tx(Mode::Serializable, |tx| {
            let known: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM releases WHERE version = $1 AND target = $2)",
                    &[&new.version, &new.target],
                )?
                .get(0);
            if !known {
                return Err(RolloutError::UnknownRelease { version: new.version.clone(), target: new.target.clone() });
            }
            tx.execute(
                "INSERT INTO rollout_history (target, version, stage, canary_percent, max_failures, failures,
                     installed, refused, halted_reason, started_at, ended_at)
                 SELECT target, version, 'superseded', canary_percent, max_failures, failures, installed, refused,
                     halted_reason, started_at, $2 FROM rollouts WHERE target = $1",
                &[&new.target, &now],
            )?;
            tx.execute("DELETE FROM rollouts WHERE target = $1", &[&new.target])?;
            tx.execute(
                "INSERT INTO rollouts (target, version, stage, canary_percent, max_failures, started_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6)",
                &[
                    &new.target,
                    &new.version,
                    &Stage::initial(new.canary_percent).as_str(),
                    &i64::from(new.canary_percent),
                    &i64::from(new.max_failures),
                    &now,
                ],
            )?;
            lock_rollout(tx, &new.target)?.ok_or_else(|| RolloutError::NoRollout(new.target.clone()))
        })
    }

    fn change_rollout(&self, target: &str, change: &Transition, now: i64) -> Result<Rollout, RolloutError> {
        self.tx(Mode::Write, |tx| {
            let mut r = lock_rollout(tx, target)?.ok_or_else(|| RolloutError::NoRollout(target.to_owned()))?;
            apply_transition(&mut r, change, now)?;
            write_rollout(tx, &r)?;
            Ok(r)
        })
    }

    fn list_rollouts(&self) -> Result<Vec<Rollout>, StorageError> {
        self.with_conn(|cx| {
            let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY target COLLATE \"C\"");
            Ok(cx.query(&sql, &[])?.iter().map(rollout_row).collect())
        })
    }

    fn version_spread(&self) -> Result<Vec<(String, u64)>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT agent_version, COUNT(*) FROM tills
                 WHERE enrolled_at IS NOT NULL AND revoked_at IS NULL
                 GROUP BY agent_version ORDER BY agent_version COLLATE \"C\"",
                &[],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), to_u64(r.get(1)))).collect())
        })
    }

    fn check_update(
        &self,
        till: &TillId,
        running_version: &str,
        target: &str,
        now: i64,
    ) -> Result<Option<UpdateCandidate>, StorageError> {
        self.tx(Mode::Write, |tx| {
            tx.execute(
                "UPDATE tills SET agent_version = $1, last_seen = $2 WHERE store = $3 AND till = $4",
                &[&running_version, &now, &till.store, &till.till],
            )?;
            let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE target = $1");
            let Some(rollout) = tx.query_opt(&sql, &[&target])?.as_ref().map(rollout_row) else {
                return Ok(None);
            };
            let release = tx.query_opt(
                "SELECT manifest, signature FROM releases WHERE version = $1 AND target = $2",
                &[&rollout.version, &rollout.target],
            )?;
            Ok(release.map(|r| UpdateCandidate { rollout, manifest: r.get(0), signature: r.get(1) }))
        })
    }

    fn record_update_report(
        &self,
        till: &TillId,
        report: &NewUpdateReport,
        now: i64,
    ) -> Result<ReportEffect, StorageError> {
        self.tx(Mode::Write, |tx| {
            tx.execute(
                "INSERT INTO update_reports (store, till, version, target, outcome, running_version, reason, detail, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &till.store,
                    &till.till,
                    &report.version,
                    &report.target,
                    &outcome_text(report.outcome),
                    &report.running_version,
                    &report.reason,
                    &report.detail,
                    &now,
                ],
            )?;
            tx.execute(
                "UPDATE tills SET agent_version = $1, last_seen = $2 WHERE store = $3 AND till = $4",
                &[&report.running_version, &now, &till.store, &till.till],
            )?;
            // Locked: reports of two instances count one after the other, so a halt at max_failures is never lost.
            match lock_rollout(tx, &report.target)?.filter(|r| r.version == report.version) {
                Some(mut r) => {
                    let effect = apply_report(&mut r, &till.store, report.outcome, now);
                    write_rollout(tx, &r)?;
                    Ok(effect)
                }
                None => Ok(ReportEffect { rollout: None, counted_failure: false, halted_now: false }),
            }
        })
    }
}
