//! Staged rollout of agent releases: which store is in the canary ring, which stage offers a release to whom,
//! which admin transitions are allowed and which reported rollbacks count against a rollout.
//!
//! Design note: pure functions, no I/O; [`crate::storage`] applies them inside its transactions and [`crate::api`]
//! answers with them, so every rule is unit-tested here.
//!
//! - Ring: a store is in the canary ring iff `bucket(store) < canary_percent`, where `bucket` is the first 8 bytes
//!   of SHA-256 of the store id, read as a big-endian u64, mod 100. Deterministic and independent of the release,
//!   so the same stores are canaries of every rollout with the same percentage, and raising the percentage only
//!   adds stores.
//! - Stages: `canary` offers the release to canary stores only, `all` to every store, `halted` to nobody.
//!   `superseded` is only ever written to the history, when a new rollout replaces the active one of a target.
//! - Failures: a `rolled_back` report about the rollout's release counts as a failure when it comes from a canary
//!   store during `canary`, and from **any** store during `all` (a release that regresses in the wide fleet must
//!   stop as surely as one that regresses in the canary ring). A report from a non-canary store during `canary`
//!   (an offer from an earlier stage or rollout) is recorded but does not count; nothing counts while `halted`.
//!   At `max_failures` the rollout halts by itself.
//!
//! The hub is not a trust anchor: agents verify every manifest and archive signature themselves. The rollout only
//! decides who is offered what, and when to stop offering.

use sha2::{Digest, Sha256};

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Canary,
    All,
    Halted,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Canary => "canary",
            Stage::All => "all",
            Stage::Halted => "halted",
        }
    }

    pub fn parse(text: &str) -> Option<Stage> {
        match text {
            "canary" => Some(Stage::Canary),
            "all" => Some(Stage::All),
            "halted" => Some(Stage::Halted),
            _ => None,
        }
    }

    /// The stage a rollout starts (or resumes) in.
    pub fn initial(canary_percent: u8) -> Stage {
        if canary_percent >= 100 { Stage::All } else { Stage::Canary }
    }
}

/// What head office asks of an active rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Offer the release to every store.
    Promote,
    /// Stop offering it, with an optional reason.
    Halt(Option<String>),
    /// Offer it to the canary ring again, with the failure count reset.
    Resume,
}

/// Why a transition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("the rollout is halted: resume it first")]
    Halted,
    #[error("the rollout is not halted")]
    NotHalted,
}

impl TransitionError {
    pub fn code(&self) -> &'static str {
        match self {
            TransitionError::Halted => "halted",
            TransitionError::NotHalted => "not_halted",
        }
    }
}

/// The stage after `t`. Promoting a promoted rollout and halting a halted one are no-ops (the halt reason is
/// replaced); resuming goes back to the initial stage.
pub fn transition(stage: Stage, canary_percent: u8, t: &Transition) -> Result<Stage, TransitionError> {
    match (stage, t) {
        (Stage::Halted, Transition::Promote) => Err(TransitionError::Halted),
        (_, Transition::Promote) => Ok(Stage::All),
        (_, Transition::Halt(_)) => Ok(Stage::Halted),
        (Stage::Halted, Transition::Resume) => Ok(Stage::initial(canary_percent)),
        (_, Transition::Resume) => Err(TransitionError::NotHalted),
    }
}

/// The store's bucket, 0..100: first 8 bytes of SHA-256 of the id, big-endian, mod 100.
pub fn bucket(store: &str) -> u8 {
    let digest = Sha256::digest(store.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // `% 100` is below 100, so the cast cannot truncate.
    (u64::from_be_bytes(first) % 100) as u8
}

/// Whether the store is in the canary ring of a rollout with this percentage.
pub fn in_canary(store: &str, canary_percent: u8) -> bool {
    bucket(store) < canary_percent
}

/// The ring through which a store is offered the release in this stage (`"canary"` or `"all"`), or `None`.
pub fn offered_ring(stage: Stage, canary_percent: u8, store: &str) -> Option<&'static str> {
    match stage {
        Stage::Canary if in_canary(store, canary_percent) => Some("canary"),
        Stage::Canary | Stage::Halted => None,
        Stage::All => Some("all"),
    }
}

/// Whether a rollback reported by `store` counts as a failure of a rollout in this stage (module note).
pub fn counts_as_failure(stage: Stage, canary_percent: u8, store: &str) -> bool {
    match stage {
        Stage::Canary => in_canary(store, canary_percent),
        Stage::All => true,
        Stage::Halted => false,
    }
}

/// The halt reason written when failures reach `max_failures`.
pub fn auto_halt_reason(failures: u32) -> String {
    let s = if failures == 1 { "" } else { "s" };
    format!("canary health regressed: {failures} rollback{s}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_sha256_prefix_mod_100() {
        for store in ["S1", "S2", "store-7", "", "a-very-long-store-id-0123456789"] {
            let d = Sha256::digest(store.as_bytes());
            let want = u64::from_be_bytes(d[..8].try_into().unwrap()) % 100;
            assert_eq!(u64::from(bucket(store)), want, "{store}");
        }
        // Pinned (computed independently with Python's hashlib): a change here moves stores between rings.
        for (store, want) in [("S1", 93), ("S2", 38), ("S3", 80), ("store-7", 78), ("s17", 0), ("s14", 6)] {
            assert_eq!(bucket(store), want, "{store}");
        }
    }

    #[test]
    fn rings_grow_with_the_percentage_and_cover_everything_at_100() {
        let stores: Vec<String> = (0..1000).map(|i| format!("store-{i}")).collect();
        let mut previous = 0;
        for pct in [0u8, 1, 10, 50, 99, 100] {
            let n = stores.iter().filter(|s| in_canary(s, pct)).count();
            assert!(n >= previous, "{pct}%");
            previous = n;
            for s in &stores {
                if in_canary(s, pct) {
                    assert!(in_canary(s, pct.saturating_add(1)), "raising the percentage keeps {s}");
                }
            }
        }
        assert_eq!(stores.iter().filter(|s| in_canary(s, 0)).count(), 0);
        assert_eq!(stores.iter().filter(|s| in_canary(s, 100)).count(), 1000);
        // Roughly uniform: 10% of 1,000 stores is near 100.
        let ten = stores.iter().filter(|s| in_canary(s, 10)).count();
        assert!((50..=150).contains(&ten), "{ten}");
    }

    #[test]
    fn stages_offer_to_the_right_stores() {
        let canary = (0..).map(|i| format!("s{i}")).find(|s| bucket(s) < 10).unwrap();
        let other = (0..).map(|i| format!("s{i}")).find(|s| bucket(s) >= 10).unwrap();
        let check = |stage, store: &str| offered_ring(stage, 10, store);
        assert_eq!(check(Stage::Canary, &canary), Some("canary"));
        assert_eq!(check(Stage::Canary, &other), None);
        assert_eq!(check(Stage::All, &canary), Some("all"));
        assert_eq!(check(Stage::All, &other), Some("all"));
        assert_eq!(check(Stage::Halted, &canary), None);
        assert_eq!(check(Stage::Halted, &other), None);
        assert!(counts_as_failure(Stage::Canary, 10, &canary));
        assert!(!counts_as_failure(Stage::Canary, 10, &other));
        assert!(counts_as_failure(Stage::All, 10, &other));
        assert!(!counts_as_failure(Stage::Halted, 10, &canary));
    }

    #[test]
    fn transitions() {
        use Stage::*;
        let halt = Transition::Halt(None);
        for (stage, pct, t, want) in [
            (Canary, 10, Transition::Promote, Ok(All)),
            (All, 10, Transition::Promote, Ok(All)),
            (Halted, 10, Transition::Promote, Err(TransitionError::Halted)),
            (Canary, 10, halt.clone(), Ok(Halted)),
            (All, 10, halt.clone(), Ok(Halted)),
            (Halted, 10, halt.clone(), Ok(Halted)),
            (Halted, 10, Transition::Resume, Ok(Canary)),
            (Halted, 100, Transition::Resume, Ok(All)),
            (Canary, 10, Transition::Resume, Err(TransitionError::NotHalted)),
            (All, 10, Transition::Resume, Err(TransitionError::NotHalted)),
        ] {
            assert_eq!(transition(stage, pct, &t), want, "{stage:?} {t:?}");
        }
        for s in [Canary, All, Halted] {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
        }
        assert_eq!(Stage::initial(100), All);
        assert_eq!(Stage::initial(0), Canary);
        assert_eq!(auto_halt_reason(1), "canary health regressed: 1 rollback");
        assert_eq!(auto_halt_reason(3), "canary health regressed: 3 rollbacks");
    }
}
