//! The check a load run ends with, through the hub's admin API only:
//! - **exactly once**: `GET /v1/admin/stores` shows every simulated till with `hub_seq` = its last seq and its
//!   chain intact; paging through `GET /v1/admin/events` finds every entry of every till exactly once, at its
//!   seq, with the event id and hash the till journaled, and nothing else for those tills;
//! - **stock**: `GET /v1/admin/stores/{store}/stock/{sku}` for every store and every SKU of the catalogue equals
//!   the sum of the movements its tills journaled (when the run synced store documents).

use std::collections::{BTreeMap, HashMap};

use futures_util::{StreamExt as _, TryStreamExt as _};
use serde_json::Value;
use uuid::Uuid;

use super::hubs::Hubs;

/// What a till journaled, as the check needs it.
#[derive(Debug, Clone, Copy)]
pub struct TillRecord<'a> {
    pub store: &'a str,
    pub till: &'a str,
    pub ids: &'a [Uuid],
    pub hashes: &'a [String],
}

/// One event as the hub lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub store: String,
    pub till: String,
    pub seq: u64,
    pub event_id: String,
    pub hash: String,
}

/// At most this many problems are listed (all are counted).
const LISTED: usize = 20;

/// Problems found, listed up to [`LISTED`] and all counted.
#[derive(Debug, Default, Clone)]
pub struct Problems {
    pub listed: Vec<String>,
    pub count: usize,
}

impl Problems {
    fn add(&mut self, p: String) {
        self.count += 1;
        if self.listed.len() < LISTED {
            self.listed.push(p);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Checks the hub's view (`hub_tills`: `(store, till)` → `(hub_seq, chain_ok)`; `events`: every event the hub
/// lists, any store) against what the tills journaled. Events of other stores are ignored.
pub fn exactly_once(
    tills: &[TillRecord<'_>],
    hub_tills: &BTreeMap<(String, String), (u64, bool)>,
    events: impl IntoIterator<Item = Observed>,
) -> (u64, Problems) {
    let mut problems = Problems::default();
    let index: HashMap<(&str, &str), usize> = tills.iter().enumerate().map(|(i, t)| ((t.store, t.till), i)).collect();
    let mut seen: Vec<Vec<bool>> = tills.iter().map(|t| vec![false; t.ids.len()]).collect();
    let mut checked = 0u64;
    for e in events {
        let Some(&i) = index.get(&(e.store.as_str(), e.till.as_str())) else { continue };
        let (t, name) = (&tills[i], format!("{}/{}", e.store, e.till));
        checked += 1;
        let Some(pos) = e.seq.checked_sub(1).map(|p| p as usize).filter(|p| *p < t.ids.len()) else {
            problems.add(format!("{name}: the hub lists seq {}, the till journaled {}", e.seq, t.ids.len()));
            continue;
        };
        if std::mem::replace(&mut seen[i][pos], true) {
            problems.add(format!("{name}: seq {} is listed twice", e.seq));
        }
        if e.event_id != t.ids[pos].to_string() {
            problems
                .add(format!("{name}: seq {} has event {} at the hub, {} in the till", e.seq, e.event_id, t.ids[pos]));
        }
        if e.hash != t.hashes[pos] {
            problems.add(format!("{name}: seq {} has another hash at the hub", e.seq));
        }
    }
    for (t, seen) in tills.iter().zip(&seen) {
        let name = format!("{}/{}", t.store, t.till);
        let missing = seen.iter().filter(|s| !**s).count();
        if missing > 0 {
            let first = seen.iter().position(|s| !*s).unwrap_or(0) + 1;
            problems.add(format!("{name}: {missing} journaled events are not at the hub (the first at seq {first})"));
        }
        match hub_tills.get(&(t.store.to_owned(), t.till.to_owned())) {
            None => problems.add(format!("{name}: not in GET /v1/admin/stores")),
            Some(&(hub_seq, chain_ok)) => {
                if hub_seq != t.ids.len() as u64 {
                    problems.add(format!("{name}: hub_seq {hub_seq}, the till journaled {}", t.ids.len()));
                }
                if !chain_ok {
                    problems.add(format!("{name}: the hub says its chain is broken"));
                }
            }
        }
    }
    (checked, problems)
}

/// Every till of `GET /v1/admin/stores`: `(store, till)` → `(hub_seq, chain_ok)`.
pub(crate) async fn hub_tills(hubs: &Hubs) -> anyhow::Result<BTreeMap<(String, String), (u64, bool)>> {
    let v = hubs.admin(reqwest::Method::GET, "/v1/admin/stores", None).await?;
    let mut out = BTreeMap::new();
    for s in v["stores"].as_array().into_iter().flatten() {
        let store = s["store"].as_str().unwrap_or_default();
        for t in s["tills"].as_array().into_iter().flatten() {
            let till = t["till"].as_str().unwrap_or_default();
            let hub_seq = t["hub_seq"].as_u64().unwrap_or(0);
            out.insert((store.to_owned(), till.to_owned()), (hub_seq, t["chain_ok"].as_bool().unwrap_or(false)));
        }
    }
    Ok(out)
}

/// Every event the hub lists whose store is in `stores`, through `GET /v1/admin/events` pages of 1,000.
pub(crate) async fn hub_events(
    hubs: &Hubs,
    stores: &std::collections::HashSet<String>,
) -> anyhow::Result<Vec<Observed>> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/v1/admin/events?limit=1000&after={after}");
        let page = hubs.admin(reqwest::Method::GET, &path, None).await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            return Ok(out);
        }
        for e in &events {
            let store = e["store"].as_str().unwrap_or_default();
            if !stores.contains(store) {
                continue;
            }
            out.push(Observed {
                store: store.to_owned(),
                till: e["till"].as_str().unwrap_or_default().to_owned(),
                seq: e["seq"].as_u64().unwrap_or(0),
                event_id: e["event_id"].as_str().unwrap_or_default().to_owned(),
                hash: e["hash"].as_str().unwrap_or_default().to_owned(),
            });
        }
        after = page["next"].as_str().unwrap_or_default().to_owned();
        if after.is_empty() {
            return Ok(out);
        }
    }
}

/// Compares the hub's stock of every `(store, sku)` of `expected` with it, 16 requests at a time; answers how many
/// were compared.
pub(crate) async fn stock(
    hubs: &Hubs,
    expected: &BTreeMap<(String, String), i64>,
    problems: &mut Problems,
) -> anyhow::Result<usize> {
    let got: Vec<((String, String), i64, Option<i64>)> = futures_util::stream::iter(expected.iter())
        .map(|((store, sku), want)| async move {
            let v: Value =
                hubs.admin(reqwest::Method::GET, &format!("/v1/admin/stores/{store}/stock/{sku}"), None).await?;
            Ok::<_, anyhow::Error>(((store.clone(), sku.clone()), *want, v["on_hand"].as_i64()))
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    for ((store, sku), want, have) in &got {
        if *have != Some(*want) {
            problems.add(format!("{store}: the hub has {have:?} of {sku}, the tills' movements sum to {want}"));
        }
    }
    Ok(got.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(edit: impl FnOnce(&mut Vec<Observed>, &mut BTreeMap<(String, String), (u64, bool)>), want: &[&str]) {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let hashes: Vec<String> = (0..3).map(|i| format!("h{i}")).collect();
        let tills = [TillRecord { store: "S1", till: "T1", ids: &ids, hashes: &hashes }];
        let mut events: Vec<Observed> = (0..3)
            .map(|i| Observed {
                store: "S1".into(),
                till: "T1".into(),
                seq: i as u64 + 1,
                event_id: ids[i].to_string(),
                hash: hashes[i].clone(),
            })
            .collect();
        // Another store's events are not this run's.
        events.push(Observed {
            store: "OTHER".into(),
            till: "T1".into(),
            seq: 9,
            event_id: "x".into(),
            hash: "y".into(),
        });
        let mut hub = BTreeMap::from([(("S1".to_owned(), "T1".to_owned()), (3, true))]);
        edit(&mut events, &mut hub);
        let (_, problems) = exactly_once(&tills, &hub, events);
        assert_eq!(problems.count, want.len(), "{:?}", problems.listed);
        for (p, w) in problems.listed.iter().zip(want) {
            assert!(p.contains(w), "{p:?} should say {w:?}");
        }
    }

    #[test]
    fn exactly_once_finds_duplicates_gaps_strangers_and_wrong_counts() {
        check(|_, _| {}, &[]);
        check(|e, _| e.push(e[1].clone()), &["seq 2 is listed twice"]);
        check(|e, _| drop(e.remove(0)), &["1 journaled events are not at the hub (the first at seq 1)"]);
        check(|e, _| e[2].hash = "forged".into(), &["seq 3 has another hash"]);
        check(|e, _| e[0].event_id = Uuid::nil().to_string(), &["seq 1 has event 00000000"]);
        check(|e, _| e.push(Observed { seq: 4, ..e[0].clone() }), &["the hub lists seq 4, the till journaled 3"]);
        check(
            |_, h| {
                h.insert(("S1".into(), "T1".into()), (2, true));
            },
            &["hub_seq 2"],
        );
        check(
            |_, h| {
                h.insert(("S1".into(), "T1".into()), (3, false));
            },
            &["chain is broken"],
        );
        check(|_, h| h.clear(), &["not in GET /v1/admin/stores"]);
    }
}
