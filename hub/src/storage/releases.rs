//! Releases and rollouts of the agent's self-update ([`ReleaseStore`]).

use super::error::StorageError;
use super::ingest::TillId;

/// A release as uploaded, to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRelease {
    pub version: String,
    pub target: String,
    /// The exact manifest bytes the publisher signed.
    pub manifest: Vec<u8>,
    /// Base64 of the manifest signature, as uploaded.
    pub signature: Option<String>,
    pub archive: Vec<u8>,
    pub archive_sha256: String,
    pub archive_size: u64,
    pub min_version: String,
    pub expires_at: String,
    pub uploaded_at: i64,
}

/// A stored release, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseInfo {
    pub version: String,
    pub target: String,
    pub min_version: String,
    pub expires_at: String,
    pub archive_sha256: String,
    pub archive_size: u64,
    pub signed: bool,
    pub uploaded_at: i64,
}

/// What [`ReleaseStore::put_release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutRelease {
    Created,
    /// The same manifest, signature and archive were already stored: nothing changed.
    Identical,
    /// Other bytes are stored under this version and target: nothing changed.
    Conflict,
}

/// A target's rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub target: String,
    pub version: String,
    pub stage: crate::rollout::Stage,
    pub canary_percent: u8,
    pub max_failures: u32,
    /// Counted rollbacks since the rollout started or last resumed.
    pub failures: u32,
    pub installed: u64,
    pub refused: u64,
    pub halted_reason: Option<String>,
    pub started_at: i64,
    pub updated_at: i64,
}

/// A new rollout of a stored release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRollout {
    pub target: String,
    pub version: String,
    pub canary_percent: u8,
    pub max_failures: u32,
}

/// Why a rollout was not started or changed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("no release {version} for {target} is stored")]
    UnknownRelease { version: String, target: String },
    #[error("no rollout for {0}")]
    NoRollout(String),
    #[error(transparent)]
    Transition(#[from] crate::rollout::TransitionError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a till is offered by [`ReleaseStore::check_update`]: the active rollout of its target and that release's
/// manifest. Whether this till's store is offered it is [`crate::rollout::offered_ring`]'s call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateCandidate {
    pub rollout: Rollout,
    pub manifest: Vec<u8>,
    pub signature: Option<String>,
}

/// What a till reported about a release, to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUpdateReport {
    pub version: String,
    pub target: String,
    pub outcome: storesync_shared::release::UpdateOutcome,
    pub running_version: String,
    pub reason: Option<String>,
    pub detail: Option<String>,
}

/// What [`ReleaseStore::record_update_report`] did to the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportEffect {
    /// The target's rollout after the report, when the report was about its release.
    pub rollout: Option<Rollout>,
    /// The report counted as a failure.
    pub counted_failure: bool,
    /// This report halted the rollout (failures reached `max_failures`).
    pub halted_now: bool,
}

/// See [`super::Storage`] for the contract every method keeps (one transaction, blocking).
pub trait ReleaseStore: Send + Sync + 'static {
    /// Stores a release unless `(version, target)` is taken: [`PutRelease::Identical`] when the same bytes are,
    /// [`PutRelease::Conflict`] when others are.
    fn put_release(&self, release: &NewRelease) -> Result<PutRelease, StorageError>;

    /// Every stored release, newest version first (semantic version order), then by target.
    fn list_releases(&self) -> Result<Vec<ReleaseInfo>, StorageError>;

    /// The archive bytes of a release.
    fn release_archive(&self, version: &str, target: &str) -> Result<Option<Vec<u8>>, StorageError>;

    /// Starts a rollout of a stored release for its target, replacing (and recording as `superseded`) the
    /// target's active rollout. It starts at [`crate::rollout::Stage::initial`].
    fn start_rollout(&self, rollout: &NewRollout, now: i64) -> Result<Rollout, RolloutError>;

    /// Applies a transition to the target's rollout ([`crate::rollout::transition`]); `Resume` resets the
    /// failure count.
    fn change_rollout(
        &self,
        target: &str,
        change: &crate::rollout::Transition,
        now: i64,
    ) -> Result<Rollout, RolloutError>;

    /// Every target's rollout, by target.
    fn list_rollouts(&self) -> Result<Vec<Rollout>, StorageError>;

    /// Enrolled, unrevoked tills per last known agent version, by version text.
    fn version_spread(&self) -> Result<Vec<(String, u64)>, StorageError>;

    /// Records the version a till runs (and that it was seen) and answers its target's active rollout with the
    /// release manifest, in one transaction.
    fn check_update(
        &self,
        till: &TillId,
        running_version: &str,
        target: &str,
        now: i64,
    ) -> Result<Option<UpdateCandidate>, StorageError>;

    /// Records a till's update report, sets its `agent_version` to the running version and counts the report
    /// against its target's rollout when it is about that rollout's release (see [`crate::rollout`]); halts the
    /// rollout when failures reach `max_failures`. One transaction.
    fn record_update_report(
        &self,
        till: &TillId,
        report: &NewUpdateReport,
        now: i64,
    ) -> Result<ReportEffect, StorageError>;
}
