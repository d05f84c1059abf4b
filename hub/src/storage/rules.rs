//! Rules every backend applies in the same way, outside SQL: batch shape, the health an upload records, rollout
//! transitions and failure counting, release order.

use std::collections::BTreeMap;

use storesync_shared::release::UpdateOutcome;
use storesync_shared::wire::MAX_BATCH_EVENTS;

use super::ingest::{IngestBatch, IngestError, Ingested};
use super::releases::{ReleaseInfo, ReportEffect, Rollout};

/// Checks the shape of a batch that needs no database: size, seqs from 1, consecutive.
pub(crate) fn check_batch_shape(req: &IngestBatch) -> Result<(), IngestError> {
    if req.events.len() > MAX_BATCH_EVENTS {
        return Err(IngestError::BatchTooLarge { n: req.events.len(), max: MAX_BATCH_EVENTS });
    }
    if req.events.first().is_some_and(|e| e.seq == 0) {
        return Err(IngestError::ZeroSeq);
    }
    for pair in req.events.windows(2) {
        if pair[0].seq.checked_add(1) != Some(pair[1].seq) {
            return Err(IngestError::NotConsecutive { seq: pair[1].seq });
        }
    }
    Ok(())
}

/// What an upload's outcome does to its till's health row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthChange {
    /// The upload stored events: `last_error` is cleared.
    pub(crate) appended: bool,
    /// The new `chain_ok`, when the outcome says something about the chain.
    pub(crate) chain_ok: Option<bool>,
    /// The new `last_error`, when the upload was refused.
    pub(crate) last_error: Option<String>,
    /// The hub's seq after the upload (for the progress sample).
    pub(crate) hub_seq: u64,
}

/// The health an upload records, from the till's `hub_seq` before it and its outcome.
pub(crate) fn health_change(head_seq: u64, outcome: &Result<Ingested, IngestError>) -> HealthChange {
    let appended = matches!(outcome, Ok(ack) if ack.acked_through > head_seq);
    let (chain_ok, last_error) = match outcome {
        Ok(_) if appended => (Some(true), None),
        Ok(_) | Err(IngestError::Storage(_)) => (None, None),
        Err(e) if e.breaks_chain() => (Some(false), Some(format!("{}: {e}", e.code()))),
        Err(e) => (None, Some(format!("{}: {e}", e.code()))),
    };
    let hub_seq = match outcome {
        Ok(ack) => ack.acked_through.max(head_seq),
        Err(_) => head_seq,
    };
    HealthChange { appended, chain_ok, last_error, hub_seq }
}

/// Adds per-SKU deltas into a total, dropping SKUs that come to zero.
pub(crate) fn add_into(total: &mut BTreeMap<String, i64>, more: &BTreeMap<String, i64>) {
    for (sku, d) in more {
        *total.entry(sku.clone()).or_insert(0) += d;
    }
    total.retain(|_, d| *d != 0);
}

/// The stored text of an update report's outcome.
pub(crate) fn outcome_text(o: UpdateOutcome) -> &'static str {
    match o {
        UpdateOutcome::Installed => "installed",
        UpdateOutcome::RolledBack => "rolled_back",
        UpdateOutcome::Refused => "refused",
    }
}

/// Semantic version order, newest first; text that is not a version sorts after every version.
pub(crate) fn newest_first(a: &ReleaseInfo, b: &ReleaseInfo) -> std::cmp::Ordering {
    let va = semver::Version::parse(&a.version).ok();
    let vb = semver::Version::parse(&b.version).ok();
    match (va, vb) {
        (Some(x), Some(y)) => y.cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => b.version.cmp(&a.version),
    }
    .then_with(|| a.target.cmp(&b.target))
}

/// Applies an admin transition to a rollout read inside the caller's transaction.
pub(crate) fn apply_transition(
    r: &mut Rollout,
    change: &crate::rollout::Transition,
    now: i64,
) -> Result<(), crate::rollout::TransitionError> {
    use crate::rollout::Transition;
    r.stage = crate::rollout::transition(r.stage, r.canary_percent, change)?;
    match change {
        Transition::Halt(reason) => r.halted_reason = reason.clone().or(r.halted_reason.take()),
        Transition::Resume => {
            r.failures = 0;
            r.halted_reason = None;
        }
        Transition::Promote => {}
    }
    r.updated_at = now;
    Ok(())
}

/// Counts a till's report about the rollout's release against the rollout (read inside the caller's
/// transaction), halting it at `max_failures`.
pub(crate) fn apply_report(r: &mut Rollout, store: &str, outcome: UpdateOutcome, now: i64) -> ReportEffect {
    use crate::rollout::Stage;
    let mut effect = ReportEffect { rollout: None, counted_failure: false, halted_now: false };
    match outcome {
        UpdateOutcome::Installed => r.installed = r.installed.saturating_add(1),
        UpdateOutcome::Refused => r.refused = r.refused.saturating_add(1),
        UpdateOutcome::RolledBack => {
            if crate::rollout::counts_as_failure(r.stage, r.canary_percent, store) {
                effect.counted_failure = true;
                r.failures = r.failures.saturating_add(1);
                if r.failures >= r.max_failures {
                    r.stage = Stage::Halted;
                    r.halted_reason = Some(crate::rollout::auto_halt_reason(r.failures));
                    effect.halted_now = true;
                }
            }
        }
    }
    r.updated_at = now;
    effect.rollout = Some(r.clone());
    effect
}
