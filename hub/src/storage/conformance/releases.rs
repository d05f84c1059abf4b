//! Conformance of [`crate::storage::ReleaseStore`]: releases stored once, rollouts, failure counting, the version
//! spread.

use storesync_shared::release::UpdateOutcome;

use super::support::{NOW, enroll};
use crate::rollout::{Stage, Transition, TransitionError};
use crate::storage::Storage;
use crate::storage::enrolment::NewEnrollment;
use crate::storage::ingest::TillId;
use crate::storage::releases::{NewRelease, NewRollout, NewUpdateReport, PutRelease, RolloutError};

/// Runs every case of this file, each on a fresh backend from `fresh`.
pub(crate) fn run<S: Storage>(mut fresh: impl FnMut() -> S) {
    releases_are_stored_once(&fresh());
    rollouts_start_change_and_supersede(&fresh());
    rollbacks_halt_a_rollout_at_max_failures(&fresh());
    rollbacks_of_stores_outside_the_canary_ring_do_not_count(&fresh());
    update_checks_and_reports_move_the_version_spread(&fresh());
}

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn release(version: &str, archive: &[u8]) -> NewRelease {
    use sha2::Digest as _;
    let sha = hex::encode(sha2::Sha256::digest(archive));
    NewRelease {
        version: version.into(),
        target: TARGET.into(),
        manifest: format!("{{\"version\":\"{version}\",\"sha\":\"{sha}\"}}").into_bytes(),
        signature: Some("c2ln".into()),
        archive: archive.to_vec(),
        archive_sha256: sha,
        archive_size: archive.len() as u64,
        min_version: "0.0.0".into(),
        expires_at: "2030-01-01T00:00:00Z".into(),
        uploaded_at: NOW,
    }
}

fn rollout_of(version: &str, canary_percent: u8, max_failures: u32) -> NewRollout {
    NewRollout { target: TARGET.into(), version: version.into(), canary_percent, max_failures }
}

fn report(version: &str, outcome: UpdateOutcome) -> NewUpdateReport {
    NewUpdateReport {
        version: version.into(),
        target: TARGET.into(),
        outcome,
        running_version: "0.1.0".into(),
        reason: None,
        detail: None,
    }
}

/// The first store ids, in order `s0, s1, ...`, inside (or outside) the canary ring of `percent`.
fn stores_by_ring(percent: u8, inside: bool, n: usize) -> Vec<String> {
    (0..).map(|i| format!("s{i}")).filter(|s| crate::rollout::in_canary(s, percent) == inside).take(n).collect()
}

fn releases_are_stored_once<S: Storage>(s: &S) {
    assert_eq!(s.put_release(&release("0.2.0", b"archive")).unwrap(), PutRelease::Created);
    assert_eq!(s.put_release(&release("0.2.0", b"archive")).unwrap(), PutRelease::Identical);
    assert_eq!(s.put_release(&release("0.2.0", b"other")).unwrap(), PutRelease::Conflict);
    let mut unsigned = release("0.2.0", b"archive");
    unsigned.signature = None;
    assert_eq!(s.put_release(&unsigned).unwrap(), PutRelease::Conflict, "the signature is part of a release");
    assert_eq!(s.release_archive("0.2.0", TARGET).unwrap().as_deref(), Some(&b"archive"[..]));
    let mut other_target = release("0.2.0", b"win");
    other_target.target = "x86_64-pc-windows-msvc".into();
    other_target.signature = None;
    assert_eq!(s.put_release(&other_target).unwrap(), PutRelease::Created);
    assert_eq!(s.put_release(&release("0.10.0", b"ten")).unwrap(), PutRelease::Created);
    assert_eq!(s.put_release(&release("0.9.1", b"nine")).unwrap(), PutRelease::Created);
    let listed: Vec<(String, String, bool)> =
        s.list_releases().unwrap().into_iter().map(|r| (r.version, r.target, r.signed)).collect();
    let want = [
        ("0.10.0", TARGET, true),
        ("0.9.1", TARGET, true),
        ("0.2.0", "x86_64-pc-windows-msvc", false),
        ("0.2.0", TARGET, true),
    ];
    assert_eq!(listed, want.map(|(v, t, sg)| (v.to_owned(), t.to_owned(), sg)), "semver order, newest first");
    assert_eq!(s.release_archive("0.3.0", TARGET).unwrap(), None);
}

fn rollouts_start_change_and_supersede<S: Storage>(s: &S) {
    assert!(matches!(s.start_rollout(&rollout_of("0.2.0", 10, 1), NOW), Err(RolloutError::UnknownRelease { .. })));
    assert!(matches!(s.change_rollout(TARGET, &Transition::Promote, NOW), Err(RolloutError::NoRollout(_))));
    s.put_release(&release("0.2.0", b"a")).unwrap();
    s.put_release(&release("0.3.0", b"b")).unwrap();
    let r = s.start_rollout(&rollout_of("0.2.0", 10, 2), NOW).unwrap();
    assert_eq!((r.stage, r.canary_percent, r.max_failures, r.failures), (Stage::Canary, 10, 2, 0));
    assert_eq!(s.change_rollout(TARGET, &Transition::Promote, NOW + 1).unwrap().stage, Stage::All);
    let halted = s.change_rollout(TARGET, &Transition::Halt(Some("looks bad".into())), NOW + 2).unwrap();
    assert_eq!((halted.stage, halted.halted_reason.as_deref()), (Stage::Halted, Some("looks bad")));
    assert!(matches!(
        s.change_rollout(TARGET, &Transition::Promote, NOW + 3),
        Err(RolloutError::Transition(TransitionError::Halted))
    ));
    let resumed = s.change_rollout(TARGET, &Transition::Resume, NOW + 4).unwrap();
    assert_eq!((resumed.stage, resumed.halted_reason, resumed.updated_at), (Stage::Canary, None, NOW + 4));
    assert!(matches!(
        s.change_rollout(TARGET, &Transition::Resume, NOW + 5),
        Err(RolloutError::Transition(TransitionError::NotHalted))
    ));
    // A new rollout replaces the target's active one; 100% starts at `all`.
    let next = s.start_rollout(&rollout_of("0.3.0", 100, 1), NOW + 6).unwrap();
    assert_eq!((next.version.as_str(), next.stage, next.started_at), ("0.3.0", Stage::All, NOW + 6));
    let all = s.list_rollouts().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0], next);
}

fn rollbacks_halt_a_rollout_at_max_failures<S: Storage>(s: &S) {
    s.put_release(&release("0.2.0", b"a")).unwrap();
    s.start_rollout(&rollout_of("0.2.0", 10, 2), NOW).unwrap();
    let canaries = stores_by_ring(10, true, 3);
    let tills: Vec<TillId> = canaries
        .iter()
        .enumerate()
        .map(|(i, st)| enroll(s, st, "T1", &format!("code-{i}"), &format!("cred-{i}")))
        .collect();
    let e = s.record_update_report(&tills[0], &report("0.2.0", UpdateOutcome::Installed), NOW).unwrap();
    assert_eq!(e.rollout.as_ref().map(|r| (r.installed, r.failures)), Some((1, 0)));
    let e = s.record_update_report(&tills[0], &report("0.2.0", UpdateOutcome::Refused), NOW).unwrap();
    assert_eq!(e.rollout.as_ref().map(|r| r.refused), Some(1));
    let e = s.record_update_report(&tills[1], &report("0.2.0", UpdateOutcome::RolledBack), NOW).unwrap();
    assert!(e.counted_failure && !e.halted_now);
    assert_eq!(e.rollout.as_ref().map(|r| (r.stage, r.failures)), Some((Stage::Canary, 1)));
    // A report about another version does not touch the rollout.
    let e = s.record_update_report(&tills[1], &report("0.1.5", UpdateOutcome::RolledBack), NOW).unwrap();
    assert_eq!(e.rollout, None);
    let e = s.record_update_report(&tills[2], &report("0.2.0", UpdateOutcome::RolledBack), NOW + 1).unwrap();
    assert!(e.counted_failure && e.halted_now);
    let r = e.rollout.unwrap();
    assert_eq!((r.stage, r.failures), (Stage::Halted, 2));
    assert_eq!(r.halted_reason.as_deref(), Some("canary health regressed: 2 rollbacks"));
    assert_eq!(s.list_rollouts().unwrap(), [r]);
    // Halted: further rollbacks are recorded but count no more; resume resets the count.
    let e = s.record_update_report(&tills[0], &report("0.2.0", UpdateOutcome::RolledBack), NOW + 2).unwrap();
    assert!(!e.counted_failure && !e.halted_now);
    let resumed = s.change_rollout(TARGET, &Transition::Resume, NOW + 3).unwrap();
    assert_eq!((resumed.stage, resumed.failures), (Stage::Canary, 0));
}

fn rollbacks_of_stores_outside_the_canary_ring_do_not_count<S: Storage>(s: &S) {
    s.put_release(&release("0.2.0", b"a")).unwrap();
    s.start_rollout(&rollout_of("0.2.0", 10, 1), NOW).unwrap();
    let outside = &stores_by_ring(10, false, 2);
    let a = enroll(s, &outside[0], "T1", "code-a", "cred-a");
    let b = enroll(s, &outside[1], "T1", "code-b", "cred-b");
    let e = s.record_update_report(&a, &report("0.2.0", UpdateOutcome::RolledBack), NOW).unwrap();
    assert!(!e.counted_failure, "a store outside the canary ring during `canary`");
    assert_eq!(e.rollout.map(|r| (r.stage, r.failures)), Some((Stage::Canary, 0)));
    // Once promoted to `all`, a rollback anywhere counts.
    s.change_rollout(TARGET, &Transition::Promote, NOW + 1).unwrap();
    let e = s.record_update_report(&b, &report("0.2.0", UpdateOutcome::RolledBack), NOW + 2).unwrap();
    assert!(e.counted_failure && e.halted_now);
    assert_eq!(e.rollout.map(|r| r.stage), Some(Stage::Halted));
}

fn update_checks_and_reports_move_the_version_spread<S: Storage>(s: &S) {
    let a = enroll(s, "S1", "T1", "code-a", "cred-a");
    let b = enroll(s, "S1", "T2", "code-b", "cred-b");
    let c = enroll(s, "S2", "T1", "code-c", "cred-c");
    s.create_enrollment(&NewEnrollment {
        code_hash: "code-d".into(),
        till: TillId { store: "S3".into(), till: "T1".into() },
        created_at: NOW,
        expires_at: NOW + 60,
    })
    .unwrap();
    assert_eq!(s.version_spread().unwrap(), [("test/1".to_owned(), 3)]);
    // No rollout: nothing to offer, but the running version is recorded.
    assert_eq!(s.check_update(&a, "0.1.0", TARGET, NOW).unwrap(), None);
    assert_eq!(s.check_update(&b, "0.1.0", TARGET, NOW).unwrap(), None);
    let mut rep = report("0.2.0", UpdateOutcome::Installed);
    rep.running_version = "0.2.0".into();
    s.record_update_report(&c, &rep, NOW).unwrap();
    assert_eq!(s.version_spread().unwrap(), [("0.1.0".to_owned(), 2), ("0.2.0".to_owned(), 1)]);
    assert!(s.revoke(&c, NOW).unwrap());
    assert_eq!(s.version_spread().unwrap(), [("0.1.0".to_owned(), 2)], "revoked tills are not counted");
    // With a rollout: its manifest and signature as stored.
    s.put_release(&release("0.2.0", b"a")).unwrap();
    s.start_rollout(&rollout_of("0.2.0", 50, 1), NOW).unwrap();
    let cand = s.check_update(&a, "0.1.0", TARGET, NOW).unwrap().unwrap();
    assert_eq!(cand.manifest, release("0.2.0", b"a").manifest);
    assert_eq!(cand.signature.as_deref(), Some("c2ln"));
    assert_eq!((cand.rollout.version.as_str(), cand.rollout.stage), ("0.2.0", Stage::Canary));
    assert_eq!(s.check_update(&a, "0.1.0", "aarch64-unknown-linux-gnu", NOW).unwrap(), None);
}
