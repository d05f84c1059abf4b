//! Conformance of [`crate::storage::OutboxStore`]: delivery order, dead letters and replays, leases.

use super::support::{NOW, chain, enroll, journal, upload};
use crate::storage::Storage;
use crate::storage::error::StorageError;

/// Runs every case of this file, each on a fresh backend from `fresh`.
pub(crate) fn run<S: Storage>(mut fresh: impl FnMut() -> S) {
    the_outbox_feeds_subscriptions_in_order(&fresh());
    delivery_leases_are_exclusive_until_they_run_out(&fresh());
}

/// A webhook subscription to every event.
pub(crate) fn webhook(id: &str) -> crate::storage::outbox::NewSubscription {
    crate::storage::outbox::NewSubscription {
        id: id.into(),
        kind: "webhook".into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: "0123456789abcdef".into(),
        kinds: vec![],
        stores: vec![],
        batch_size: 100,
        max_attempts: 3,
        stream: String::new(),
        subject_prefix: String::new(),
    }
}

fn the_outbox_feeds_subscriptions_in_order<S: Storage>(s: &S) {
    use crate::storage::outbox::{NewSubscription, ReplaySelector};
    let a = enroll(s, "A", "T1", "code-1", "cred-1");
    let b = enroll(s, "B", "T1", "code-2", "cred-2");
    s.append_batch(&a, &upload(journal(), &chain(&a, 2, 0)), NOW).unwrap();
    s.append_batch(&b, &upload(journal(), &chain(&b, 2, 1)), NOW).unwrap();
    s.append_batch(&a, &upload(journal(), &chain(&a, 3, 0)), NOW + 1).unwrap();
    let spec = |id: &str, stores: &[&str]| NewSubscription {
        stores: stores.iter().map(|s| (*s).to_owned()).collect(),
        ..webhook(id)
    };
    let all = spec("all", &[]);
    s.create_subscription(&all, NOW).unwrap();
    assert!(matches!(s.create_subscription(&all, NOW), Err(StorageError::Conflict)));
    let order: Vec<(String, u64)> =
        s.outbox_after(&all, 0, 100).unwrap().iter().map(|e| (e.event.store.clone(), e.event.seq)).collect();
    let want = [("A", 1), ("A", 2), ("B", 1), ("B", 2), ("A", 3)];
    assert_eq!(order, want.map(|(st, n)| (st.to_owned(), n)));
    let only_a: Vec<u64> = s.outbox_after(&spec("a", &["A"]), 0, 100).unwrap().iter().map(|e| e.event.seq).collect();
    assert_eq!(only_a, vec![1, 2, 3]);

    let entries = s.outbox_after(&all, 0, 100).unwrap();
    s.delivered("all", entries[1].pos, NOW).unwrap();
    s.delivered("all", entries[0].pos, NOW).unwrap(); // never backwards
    assert_eq!(s.subscription("all").unwrap().unwrap().cursor, entries[1].pos);
    s.delivery_failed("all", "receiver answered 500", NOW).unwrap();
    s.dead_letter("all", &entries[2], 3, "receiver answered 422", NOW + 5).unwrap();
    let sub = &s.list_subscriptions(true).unwrap()[0];
    let cheap = &s.list_subscriptions(false).unwrap()[0];
    assert_eq!((cheap.lag, cheap.dead_letters), (0, 1), "without lag: dead letters still counted");
    assert_eq!((sub.cursor, sub.lag, sub.dead_letters), (entries[2].pos, 2, 1));
    assert_eq!(sub.last_error.as_deref(), Some("receiver answered 422"));
    let dead = s.list_dead_letters("all").unwrap();
    assert_eq!((dead.len(), dead[0].store.as_str(), dead[0].seq, dead[0].attempts), (1, "B", 1, 3));
    assert!(s.pending_replays("all", 10).unwrap().is_empty());
    assert_eq!(s.request_replay("all", &ReplaySelector::DeadBetween(NOW + 6, NOW + 9), NOW).unwrap(), 0);
    assert_eq!(s.request_replay("all", &ReplaySelector::Ids(vec![dead[0].id]), NOW + 10).unwrap(), 1);
    let pending = s.pending_replays("all", 10).unwrap();
    assert_eq!((pending.len(), pending[0].0, pending[0].1.pos), (1, dead[0].id, entries[2].pos));
    s.replayed(dead[0].id, NOW + 11).unwrap();
    assert!(s.pending_replays("all", 10).unwrap().is_empty());
    assert_eq!(s.list_dead_letters("all").unwrap()[0].replayed_at, Some(NOW + 11));
    assert_eq!(s.list_subscriptions(true).unwrap()[0].dead_letters, 0);

    assert!(s.rewind_subscription("all", 0).unwrap());
    assert_eq!(s.list_subscriptions(true).unwrap()[0].lag, 5);
    assert!(!s.rewind_subscription("nope", 0).unwrap());
    assert!(s.delete_subscription("all").unwrap());
    assert!(s.subscription("all").unwrap().is_none() && s.list_dead_letters("all").unwrap().is_empty());
    assert!(!s.delete_subscription("all").unwrap());
}

fn delivery_leases_are_exclusive_until_they_run_out<S: Storage>(s: &S) {
    assert!(!s.lease_subscription("s", "a", NOW, NOW + 10).unwrap(), "an unknown subscription has no lease");
    s.create_subscription(&webhook("s"), NOW).unwrap();
    s.create_subscription(&webhook("other"), NOW).unwrap();
    assert!(s.lease_subscription("s", "a", NOW, NOW + 10).unwrap());
    assert!(s.lease_subscription("other", "b", NOW, NOW + 10).unwrap(), "leases are per subscription");
    assert!(!s.lease_subscription("s", "b", NOW + 9, NOW + 19).unwrap(), "held by a");
    assert!(s.lease_subscription("s", "a", NOW + 9, NOW + 20).unwrap(), "a renews");
    assert!(!s.lease_subscription("s", "b", NOW + 19, NOW + 29).unwrap(), "the renewal counts");
    assert!(s.lease_subscription("s", "b", NOW + 20, NOW + 30).unwrap(), "run out: b takes over");
    assert!(!s.lease_subscription("s", "a", NOW + 21, NOW + 31).unwrap());
    s.release_subscription_lease("s", "a").unwrap();
    assert!(!s.lease_subscription("s", "a", NOW + 21, NOW + 31).unwrap(), "only the holder gives a lease up");
    s.release_subscription_lease("s", "b").unwrap();
    assert!(s.lease_subscription("s", "a", NOW + 22, NOW + 32).unwrap(), "given up: taken at once");
    assert_eq!(s.subscription("s").unwrap().unwrap().cursor, 0, "a lease moves no cursor");
}
