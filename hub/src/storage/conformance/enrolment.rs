//! Conformance of [`crate::storage::EnrolmentStore`]: one-time codes, credentials, revocation, failed attempts.

use super::support::{NOW, enroll};
use crate::storage::Storage;
use crate::storage::enrolment::{NewEnrollment, RedeemError};
use crate::storage::ingest::TillId;

/// Runs every case of this file, each on a fresh backend from `fresh`.
pub(crate) fn run<S: Storage>(mut fresh: impl FnMut() -> S) {
    enrolment_codes_are_one_time_and_expire(&fresh());
    reenrolment_revokes_the_old_credential(&fresh());
    revoke_ends_access(&fresh());
    failed_attempts_are_counted(&fresh());
}

fn enrolment_codes_are_one_time_and_expire<S: Storage>(s: &S) {
    let till = TillId { store: "S1".into(), till: "T1".into() };
    for (code, expires) in [("a", NOW + 10), ("b", NOW)] {
        s.create_enrollment(&NewEnrollment {
            code_hash: code.into(),
            till: till.clone(),
            created_at: NOW - 10,
            expires_at: expires,
        })
        .unwrap();
    }
    let views = s.list_stores().unwrap();
    assert!(!views[0].tills[0].enrolled, "a till with only a code is not enrolled yet");
    assert!(matches!(s.redeem_enrollment("nope", "c0", "", NOW), Err(RedeemError::InvalidCode)));
    assert!(matches!(s.redeem_enrollment("b", "c0", "", NOW), Err(RedeemError::Expired)));
    assert_eq!(s.redeem_enrollment("a", "c1", "v1", NOW).unwrap(), till);
    assert!(matches!(s.redeem_enrollment("a", "c2", "", NOW), Err(RedeemError::Used)));
    assert_eq!(s.authenticate("c1").unwrap(), Some(till.clone()));
    assert_eq!(s.authenticate("c2").unwrap(), None);
    assert_eq!(s.authenticate("c0").unwrap(), None);
    let views = s.list_stores().unwrap();
    assert!(views[0].tills[0].enrolled);
    assert_eq!(views[0].tills[0].version, "v1");
}

fn reenrolment_revokes_the_old_credential<S: Storage>(s: &S) {
    let till = enroll(s, "S1", "T1", "code-1", "cred-1");
    enroll(s, "S1", "T1", "code-2", "cred-2");
    assert_eq!(s.authenticate("cred-1").unwrap(), None);
    assert_eq!(s.authenticate("cred-2").unwrap(), Some(till));
}

fn revoke_ends_access<S: Storage>(s: &S) {
    let till = enroll(s, "S1", "T1", "code-1", "cred-1");
    s.create_enrollment(&NewEnrollment {
        code_hash: "pending".into(),
        till: till.clone(),
        created_at: NOW,
        expires_at: NOW + 60,
    })
    .unwrap();
    assert!(s.revoke(&till, NOW).unwrap());
    assert_eq!(s.authenticate("cred-1").unwrap(), None);
    assert!(
        matches!(s.redeem_enrollment("pending", "cred-x", "", NOW), Err(RedeemError::Used)),
        "codes issued before a revoke die with it"
    );
    let view = &s.list_stores().unwrap()[0].tills[0];
    assert!(view.revoked);
    assert!(!s.revoke(&TillId { store: "S9".into(), till: "T9".into() }, NOW).unwrap());
    // A fresh code brings the till back.
    enroll(s, "S1", "T1", "code-3", "cred-3");
    assert!(!s.list_stores().unwrap()[0].tills[0].revoked);
}

fn failed_attempts_are_counted<S: Storage>(s: &S) {
    for i in 0..3 {
        s.record_failed_attempt("10.0.0.1", NOW + i).unwrap();
    }
    s.record_failed_attempt("10.0.0.2", NOW).unwrap();
    assert_eq!(s.failed_attempts_since("10.0.0.1", NOW).unwrap(), (3, Some(NOW)));
    assert_eq!(s.failed_attempts_since("10.0.0.1", NOW + 1).unwrap(), (2, Some(NOW + 1)));
    assert_eq!(s.failed_attempts_since("10.0.0.3", 0).unwrap(), (0, None));
}
