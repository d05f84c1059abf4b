//! The layout of a store's automerge document, and pure helpers to read and change it.
//!
//! ```text
//! ROOT
//! ├── "stock":  { "<sku>\u{1f}<writer>": Counter }          on_hand(sku) = Σ over writers
//! ├── "prices": { "<sku>\u{1f}<effective_from UTC>": "<price_minor> <currency>" }
//! ├── "escrow": { "qty\u{1f}<sku>": Int,                      units held back for online orders (hub only)
//! │             "hold\u{1f}<reservation id>": Str (JSON) }    active reservations against them (hub only)
//! └── "config": { }                                          store configuration
//! ```
//!
//! Why flat keys with a writer in them: an automerge `Counter` sums concurrent increments only when every replica
//! increments *the same* counter object. Two tills that each create `stock/<sku>` while offline create two
//! conflicting counters, and the loser's increments vanish from view. So every writer (a till, or the hub) owns
//! its own counter per SKU, which no one else ever creates, and a SKU's stock is the sum of its writers' counters.
//! For the same reason the root maps are created by a deterministic genesis change (fixed actor, fixed time),
//! which is byte-identical, and so the same object, on every replica of every store.
//!
//! SKUs cannot contain control characters ([`crate::event::check_sku`]), so `\u{1f}` separates key parts, and a
//! SKU's entries are the contiguous key range `"<sku>\u{1f}" .. "<sku>\u{20}"`.

use std::collections::BTreeMap;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, Automerge, AutomergeError, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, ScalarValueRef, Value,
    ValueRef,
};

pub const STOCK: &str = "stock";
pub const PRICES: &str = "prices";
pub const ESCROW: &str = "escrow";
pub const CONFIG: &str = "config";
const SEP: char = '\u{1f}';
const SEP_NEXT: char = '\u{20}';

/// The writer slot head office's own stock movements go to.
pub const HUB_WRITER: &str = "hub";

/// A document holding only the genesis change, identical on every replica. Give it a real actor with
/// `genesis().with_actor(..)` before changing it.
pub fn genesis() -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from(b"storesync/genesis/v1".as_slice()));
    let mut tx = doc.transaction();
    for name in [STOCK, PRICES, ESCROW, CONFIG] {
        // Putting into a fresh transaction on a fresh document cannot fail.
        let _ = tx.put_object(ROOT, name, ObjType::Map);
    }
    tx.commit_with(CommitOptions::default().with_time(0).with_message("storesync genesis v1".to_owned()));
    doc
}

/// The object id of one of the root maps.
pub fn root_map(doc: &impl ReadDoc, name: &str) -> Option<ObjId> {
    match doc.get(ROOT, name) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
        _ => None,
    }
}

fn sku_range(sku: &str) -> std::ops::Range<String> {
    format!("{sku}{SEP}")..format!("{sku}{SEP_NEXT}")
}

/// The key of `writer`'s counter for `sku`.
pub fn stock_key(sku: &str, writer: &str) -> String {
    format!("{sku}{SEP}{writer}")
}

fn counter_value(v: &ValueRef<'_>) -> i64 {
    match v {
        ValueRef::Scalar(s @ (ScalarValueRef::Counter(_) | ScalarValueRef::Int(_))) => s.as_i64(),
        _ => 0,
    }
}

/// Adds `deltas` to `writer`'s counters.
pub fn apply_stock<T: Transactable>(
    tx: &mut T,
    stock: &ObjId,
    writer: &str,
    deltas: &BTreeMap<String, i64>,
) -> Result<(), AutomergeError> {
    for (sku, delta) in deltas {
        if *delta == 0 {
            continue;
        }
        let key = stock_key(sku, writer);
        match tx.get(stock, key.as_str())? {
            Some((Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Counter(_)) => {
                tx.increment(stock, key.as_str(), *delta)?
            }
            _ => tx.put(stock, key.as_str(), ScalarValue::counter(*delta))?,
        }
    }
    Ok(())
}

/// [`apply_stock`] for a writer that remembers which of its counters exist (`known`, keys from [`stock_key`]):
/// incrementing a known counter needs no read, and reading a counter costs time in proportion to its history.
pub fn apply_stock_known<T: Transactable>(
    tx: &mut T,
    stock: &ObjId,
    writer: &str,
    deltas: &BTreeMap<String, i64>,
    known: &mut std::collections::HashSet<String>,
) -> Result<(), AutomergeError> {
    for (sku, delta) in deltas {
        if *delta == 0 {
            continue;
        }
        let key = stock_key(sku, writer);
        if known.contains(&key) {
            tx.increment(stock, key.as_str(), *delta)?;
        } else {
            apply_stock(tx, stock, writer, &BTreeMap::from([(sku.clone(), *delta)]))?;
            known.insert(key);
        }
    }
    Ok(())
}

/// The keys of `writer`'s own counters.
pub fn writer_keys(doc: &impl ReadDoc, stock: &ObjId, writer: &str) -> std::collections::HashSet<String> {
    let suffix = format!("{SEP}{writer}");
    doc.keys(stock).filter(|k| k.ends_with(&suffix)).collect()
}

/// Stock on hand of one SKU: the sum of every writer's counter, at `heads` if given.
pub fn on_hand(doc: &impl ReadDoc, stock: &ObjId, sku: &str, heads: Option<&[ChangeHash]>) -> i64 {
    let range = sku_range(sku);
    match heads {
        Some(h) => doc.map_range_at(stock, range, h).map(|item| counter_value(&item.value)).sum(),
        None => doc.map_range(stock, range).map(|item| counter_value(&item.value)).sum(),
    }
}

/// Stock on hand of every SKU the document knows.
pub fn all_stock(doc: &impl ReadDoc, stock: &ObjId, heads: Option<&[ChangeHash]>) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let mut add = |key: &str, v: i64| {
        if let Some((sku, _)) = key.split_once(SEP) {
            *out.entry(sku.to_owned()).or_insert(0) += v;
        }
    };
    match heads {
        Some(h) => doc.map_range_at(stock, .., h).for_each(|i| add(&i.key, counter_value(&i.value))),
        None => doc.map_range(stock, ..).for_each(|i| add(&i.key, counter_value(&i.value))),
    }
    out
}

/// A price as it is stored: amount, currency and the moment it takes effect (UTC, RFC 3339, seconds precision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub price_minor: i64,
    pub currency: String,
    pub effective_from: String,
}

/// The key of a price entry. `effective_from` must already be normalized with [`normalize_instant`].
pub fn price_key(sku: &str, effective_from: &str) -> String {
    format!("{sku}{SEP}{effective_from}")
}

/// Formats an instant the one way price keys use, so that string order is time order.
pub fn normalize_instant(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Records a price for `sku` from `effective_from` on.
pub fn set_price<T: Transactable>(tx: &mut T, prices: &ObjId, sku: &str, price: &Price) -> Result<(), AutomergeError> {
    let value = format!("{} {}", price.price_minor, price.currency);
    tx.put(prices, price_key(sku, &price.effective_from).as_str(), value)
}

fn parse_price(key: &str, value: &ValueRef<'_>) -> Option<Price> {
    let (_, effective_from) = key.split_once(SEP)?;
    let ValueRef::Scalar(ScalarValueRef::Str(text)) = value else {
        return None;
    };
    let (amount, currency) = text.split_once(' ')?;
    Some(Price {
        price_minor: amount.parse().ok()?,
        currency: currency.to_owned(),
        effective_from: effective_from.to_owned(),
    })
}

/// The price in force at `now` and the next scheduled change after it, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PriceView {
    pub current: Option<Price>,
    pub next: Option<Price>,
}

/// Reads `sku`'s price schedule at `now` (a [`normalize_instant`] string).
pub fn price_at(doc: &impl ReadDoc, prices: &ObjId, sku: &str, now: &str, heads: Option<&[ChangeHash]>) -> PriceView {
    let entries: Vec<Price> = match heads {
        Some(h) => doc.map_range_at(prices, sku_range(sku), h).filter_map(|i| parse_price(&i.key, &i.value)).collect(),
        None => doc.map_range(prices, sku_range(sku)).filter_map(|i| parse_price(&i.key, &i.value)).collect(),
    };
    let mut view = PriceView::default();
    for p in entries {
        // Entries come in key order, which is effective_from order.
        if p.effective_from.as_str() <= now {
            view.current = Some(p);
        } else if view.next.is_none() {
            view.next = Some(p);
        }
    }
    view
}

// Escrow: how many units of a SKU a store holds back for online orders. Only head office writes it (a till's
// sync message touching it is refused like any write outside the till's own stock slot), so one register per SKU
// with last-writer-wins is exact: every write is a hub change made in causal order after the one before it.

const ESCROW_QTY: &str = "qty";

/// The key of `sku`'s escrow register in the escrow map.
pub fn escrow_key(sku: &str) -> String {
    format!("{ESCROW_QTY}{SEP}{sku}")
}

/// Sets the store's escrow for `sku` (0 removes the register).
pub fn set_escrow<T: Transactable>(tx: &mut T, escrow: &ObjId, sku: &str, qty: i64) -> Result<(), AutomergeError> {
    if qty == 0 { tx.delete(escrow, escrow_key(sku).as_str()) } else { tx.put(escrow, escrow_key(sku).as_str(), qty) }
}

/// Every SKU with an escrow set (non-zero), and its escrow, at the current heads.
pub fn escrows(doc: &impl ReadDoc, escrow: &ObjId) -> std::collections::HashMap<String, i64> {
    let prefix = format!("{ESCROW_QTY}{SEP}");
    doc.map_range(escrow, prefix.clone()..format!("{ESCROW_QTY}{SEP_NEXT}"))
        .filter_map(|item| {
            let sku = item.key.strip_prefix(&prefix)?;
            let qty = counter_value(&item.value);
            (qty != 0).then(|| (sku.to_owned(), qty))
        })
        .collect()
}

/// The store's escrow for `sku` (0 when none is set), at `heads` if given.
pub fn escrow_of(doc: &impl ReadDoc, escrow: &ObjId, sku: &str, heads: Option<&[ChangeHash]>) -> i64 {
    let key = escrow_key(sku);
    let got = match heads {
        Some(h) => doc.get_at(escrow, key.as_str(), h),
        None => doc.get(escrow, key.as_str()),
    };
    match got {
        Ok(Some((Value::Scalar(s), _))) => s.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// An active reservation as the store's document carries it to the tills: what to pick for which order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Hold {
    pub reservation_id: uuid::Uuid,
    pub order_id: String,
    pub lines: Vec<crate::reservation::ReservedLine>,
    /// RFC 3339, UTC.
    pub pickup_by: String,
    /// `reserved` or `picked`.
    pub status: crate::reservation::ReservationStatus,
}

const HOLD: &str = "hold";

fn hold_key(id: uuid::Uuid) -> String {
    format!("{HOLD}{SEP}{id}")
}

/// Puts (or replaces) a hold in the escrow map.
pub fn put_hold<T: Transactable>(tx: &mut T, escrow: &ObjId, hold: &Hold) -> Result<(), AutomergeError> {
    let text = serde_json::to_string(hold).map_err(|_| AutomergeError::Fail)?;
    tx.put(escrow, hold_key(hold.reservation_id).as_str(), text)
}

/// Removes a hold (the reservation ended or moved to another store).
pub fn remove_hold<T: Transactable>(tx: &mut T, escrow: &ObjId, id: uuid::Uuid) -> Result<(), AutomergeError> {
    tx.delete(escrow, hold_key(id).as_str())
}

/// Every hold in the escrow map, at `heads` if given, in reservation id order. Unreadable entries are skipped.
pub fn holds(doc: &impl ReadDoc, escrow: &ObjId, heads: Option<&[ChangeHash]>) -> Vec<Hold> {
    let range = format!("{HOLD}{SEP}")..format!("{HOLD}{SEP_NEXT}");
    let parse = |v: &ValueRef<'_>| match v {
        ValueRef::Scalar(ScalarValueRef::Str(text)) => serde_json::from_str::<Hold>(text).ok(),
        _ => None,
    };
    match heads {
        Some(h) => doc.map_range_at(escrow, range, h).filter_map(|i| parse(&i.value)).collect(),
        None => doc.map_range(escrow, range).filter_map(|i| parse(&i.value)).collect(),
    }
}

/// Every SKU's escrow the document holds.
pub fn all_escrow(doc: &impl ReadDoc, escrow: &ObjId) -> BTreeMap<String, i64> {
    let prefix = format!("{ESCROW_QTY}{SEP}");
    doc.map_range(escrow, ..)
        .filter_map(|i| {
            let sku = i.key.strip_prefix(&prefix)?;
            let ValueRef::Scalar(s) = &i.value else { return None };
            Some((sku.to_owned(), s.as_i64()))
        })
        .filter(|(_, q)| *q != 0)
        .collect()
}

/// Copies `escrow` and `holds` (from [`all_escrow`] and [`holds`] of the old document) into a new epoch's document
/// as ONE change (none when both are empty), so compaction keeps what head office holds back and promised.
pub fn carry_escrow(
    doc: &mut Automerge,
    escrow: &BTreeMap<String, i64>,
    holds: &[Hold],
    time: i64,
) -> Result<(), AutomergeError> {
    if escrow.is_empty() && holds.is_empty() {
        return Ok(());
    }
    let obj = root_map(doc, ESCROW).ok_or(AutomergeError::Fail)?;
    let mut tx = doc.transaction();
    for (sku, qty) in escrow {
        set_escrow(&mut tx, &obj, sku, *qty)?;
    }
    for h in holds {
        put_hold(&mut tx, &obj, h)?;
    }
    tx.commit_with(CommitOptions::default().with_time(time).with_message("storesync epoch escrow".to_owned()));
    Ok(())
}

// Epochs: the pure parts of the hub's compaction.

/// The writer slot holding an epoch snapshot's base counters (journal effects up to the cuts plus head-office
/// movements).
pub const BASE_WRITER: &str = "base";

/// Every price entry of every SKU, in key order (so each SKU's entries are in `effective_from` order).
pub fn all_prices(doc: &impl ReadDoc, prices: &ObjId) -> BTreeMap<String, Vec<Price>> {
    let mut out: BTreeMap<String, Vec<Price>> = BTreeMap::new();
    for item in doc.map_range(prices, ..) {
        if let (Some((sku, _)), Some(p)) = (item.key.split_once(SEP), parse_price(&item.key, &item.value)) {
            out.entry(sku.to_owned()).or_default().push(p);
        }
    }
    out
}

/// The stock effect of a run of stored journal events `(event_id, kind, body)`, summed per SKU.
///
/// A void's effect is the negation of the voided event's: the voided event is looked for among the events already
/// seen in `events`, then through `lookup` (for events before the run); a void of a void, or of an event that cannot
/// be found, moves nothing (the till refuses both when journaling).
pub fn journal_effects<I, L>(events: I, mut lookup: L) -> Result<BTreeMap<String, i64>, crate::ValidationError>
where
    I: IntoIterator<Item = (uuid::Uuid, crate::EventKind, serde_json::Value)>,
    L: FnMut(uuid::Uuid) -> Option<(crate::EventKind, serde_json::Value)>,
{
    use crate::event::{EventBody, negate};
    let mut seen: std::collections::HashMap<uuid::Uuid, BTreeMap<String, i64>> = std::collections::HashMap::new();
    let mut total: BTreeMap<String, i64> = BTreeMap::new();
    for (id, kind, value) in events {
        let effect = match EventBody::from_stored(kind, value)? {
            EventBody::Void(v) => match seen.get(&v.voided_event_id) {
                Some(e) => negate(e),
                None => match lookup(v.voided_event_id) {
                    Some((k, body)) if k != crate::EventKind::Void => {
                        negate(&EventBody::from_stored(k, body)?.stock_effect())
                    }
                    _ => BTreeMap::new(),
                },
            },
            other => other.stock_effect(),
        };
        for (sku, d) in &effect {
            *total.entry(sku.clone()).or_insert(0) += d;
        }
        if kind != crate::EventKind::Void {
            seen.insert(id, effect);
        }
    }
    total.retain(|_, d| *d != 0);
    Ok(total)
}

/// [`journal_effects`] of a run that holds every event its voids refer to.
pub fn effects_of<I>(events: I) -> Result<BTreeMap<String, i64>, crate::ValidationError>
where
    I: IntoIterator<Item = (uuid::Uuid, crate::EventKind, serde_json::Value)>,
{
    journal_effects(events, |_| None)
}

/// Builds the first document of a new epoch: the genesis change, then ONE change (by `actor`, at `time` unix
/// seconds) holding `base` as [`BASE_WRITER`] counters and, of `prices`, each SKU's entry in force at `now` (a
/// [`normalize_instant`] string) plus every later one.
pub fn epoch_doc(
    actor: ActorId,
    base: &BTreeMap<String, i64>,
    prices: &BTreeMap<String, Vec<Price>>,
    now: &str,
    time: i64,
) -> Result<Automerge, AutomergeError> {
    let mut doc = genesis().with_actor(actor);
    let (Some(stock), Some(price_map)) = (root_map(&doc, STOCK), root_map(&doc, PRICES)) else {
        return Err(AutomergeError::Fail);
    };
    let mut tx = doc.transaction();
    apply_stock(&mut tx, &stock, BASE_WRITER, base)?;
    for (sku, entries) in prices {
        let current = entries.iter().rposition(|p| p.effective_from.as_str() <= now);
        let keep = entries.iter().enumerate().filter(|(i, p)| Some(*i) == current || p.effective_from.as_str() > now);
        for (_, p) in keep {
            set_price(&mut tx, &price_map, sku, p)?;
        }
    }
    tx.commit_with(CommitOptions::default().with_time(time).with_message("storesync epoch base".to_owned()));
    Ok(doc)
}

/// A till's document for a new epoch, as a till installs it: the hub's epoch `snapshot`, given `actor`, plus ONE
/// change (with `message`) adding `effects` (the till's journal effects after its cut in that epoch, see
/// [`journal_effects`]) to `writer`'s counters; no change when `effects` is empty. Fails on bytes that are not an
/// automerge document or a document without the stock map.
pub fn rebase_on_snapshot(
    snapshot: &[u8],
    actor: ActorId,
    writer: &str,
    effects: &BTreeMap<String, i64>,
    message: &str,
) -> Result<Automerge, AutomergeError> {
    let mut doc = Automerge::load(snapshot)?.with_actor(actor);
    let stock = root_map(&doc, STOCK).ok_or(AutomergeError::Fail)?;
    if effects.values().any(|d| *d != 0) {
        let mut tx = doc.transaction();
        apply_stock(&mut tx, &stock, writer, effects)?;
        tx.commit_with(CommitOptions::default().with_message(message.to_owned()));
    }
    Ok(doc)
}

/// Whether two sets of heads are the same (in any order).
pub fn same_heads(a: &[ChangeHash], b: &[ChangeHash]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

/// The first operation, in the changes of `doc` after `before`, that is not on one of `writer`'s own stock
/// counters (`"<sku>\u{1f}<writer>"` in the stock map), described for an error message; `None` when every one is.
/// The hub refuses a till's sync message that holds such an operation: a till may not write another writer's slot,
/// the hub's, the epoch base, prices or the root.
pub fn foreign_op(doc: &Automerge, before: &[ChangeHash], writer: &str) -> Option<String> {
    let stock = root_map(doc, STOCK).map(|o| o.to_string());
    for change in doc.get_changes(before) {
        for op in change.decode().operations {
            let own = match &op.key {
                automerge::legacy::Key::Map(key) => {
                    stock.as_deref() == Some(op.obj.to_string().as_str())
                        && key.split_once('\u{1f}').is_some_and(|(sku, w)| !sku.is_empty() && w == writer)
                }
                automerge::legacy::Key::Seq(_) => false,
            };
            if !own {
                return Some(format!(
                    "a change of actor {} writes {:?} of object {}",
                    change.actor_id(),
                    op.key,
                    op.obj
                ));
            }
        }
    }
    None
}

/// The hub's "nothing to send" rule for one sync round: drops `reply` when it carries no changes and asks for
/// none, and the till already has `ours` (its message said so in `their_heads`, or, for a round without a message,
/// the shared heads kept between rounds are `ours`). Only `State::encode` survives between the hub's rounds, so
/// automerge alone would answer every round.
pub fn reply_if_needed(
    reply: Option<automerge::sync::Message>,
    their_heads: Option<&[ChangeHash]>,
    shared_heads: &[ChangeHash],
    ours: &[ChangeHash],
) -> Option<automerge::sync::Message> {
    let current = same_heads(their_heads.unwrap_or(shared_heads), ours);
    reply.filter(|r| !(r.changes.is_empty() && r.need.is_empty() && current))
}

/// Decodes a sync message from the other side and checks what automerge 0.12 takes on trust: each `have`'s Bloom
/// filter. A filter that claims entries but has no bits (a zero bits-per-entry), or asks for no probes or an absurd
/// number of them, makes `generate_sync_message` divide by zero or allocate gigabytes. A corrupt or hostile message
/// is refused here, before it reaches the document.
pub fn decode_sync_message(bytes: &[u8]) -> Result<automerge::sync::Message, String> {
    let message = automerge::sync::Message::decode(bytes).map_err(|e| e.to_string())?;
    for have in &message.have {
        check_bloom(&have.bloom.to_bytes())?;
    }
    Ok(message)
}

/// The most probes a Bloom filter may ask for (automerge writes 7).
const MAX_BLOOM_PROBES: u64 = 64;

/// `bloom` is a filter's wire form: empty, or entries, bits per entry and probes (LEB128), then the bits.
fn check_bloom(bloom: &[u8]) -> Result<(), String> {
    if bloom.is_empty() {
        return Ok(());
    }
    let mut rest = bloom;
    let mut next = || -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, tail) = rest.split_first().ok_or("a Bloom filter is cut short")?;
            rest = tail;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a Bloom filter has an overlong number".to_owned())
    };
    let (entries, bits_per_entry, probes) = (next()?, next()?, next()?);
    if entries > 0 && (bits_per_entry == 0 || rest.is_empty()) {
        return Err(format!("a Bloom filter of {entries} entries has no bits"));
    }
    if !(1..=MAX_BLOOM_PROBES).contains(&probes) {
        return Err(format!("a Bloom filter asks for {probes} probes (1 to {MAX_BLOOM_PROBES})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real message from a till that has changes the other side lacks, so it carries a non-empty Bloom filter.
    fn message_with_bloom() -> Vec<u8> {
        use automerge::sync::SyncDoc;
        let mut a = till("a");
        sell(&mut a, "a", "SKU", -1);
        let mut state = automerge::sync::State::new();
        // The first message announces heads; once the peer's heads are known, `have` carries the filter.
        state.their_heads = Some(Vec::new());
        state.their_have = Some(Vec::new());
        state.their_need = Some(Vec::new());
        a.generate_sync_message(&mut state).expect("a message").encode()
    }

    #[test]
    fn escrows_lists_the_skus_that_have_one() {
        let mut doc = genesis();
        let escrow = root_map(&doc, ESCROW).unwrap();
        let mut tx = doc.transaction();
        for (sku, qty) in [("A", 4), ("B", 1), ("C", 2)] {
            set_escrow(&mut tx, &escrow, sku, qty).unwrap();
        }
        tx.commit();
        let mut tx = doc.transaction();
        set_escrow(&mut tx, &escrow, "B", 0).unwrap();
        tx.commit();
        let got = escrows(&doc, &escrow);
        assert_eq!(got, std::collections::HashMap::from([("A".to_owned(), 4), ("C".to_owned(), 2)]));
        for (sku, qty) in &got {
            assert_eq!(escrow_of(&doc, &escrow, sku, None), *qty);
        }
    }

    #[test]
    fn sync_messages_with_broken_bloom_filters_are_refused() {
        let good = message_with_bloom();
        let msg = decode_sync_message(&good).expect("a real message decodes");
        let bloom = msg.have[0].bloom.to_bytes();
        assert!(!bloom.is_empty(), "the test needs a message with a filter");
        assert_eq!(check_bloom(&bloom), Ok(()));
        // Entries 1, bits per entry 0 (so no bits), 7 probes: what made the hub divide by zero.
        assert!(check_bloom(&[1, 0, 7]).unwrap_err().contains("no bits"));
        assert!(check_bloom(&[1, 10, 0, 0xff, 0xff]).unwrap_err().contains("0 probes"));
        assert!(check_bloom(&[1, 10, 0xff, 0xff, 0xff, 0xff, 0x0f, 0xff, 0xff]).unwrap_err().contains("probes"));
        assert!(check_bloom(&[0x80]).is_err(), "cut short");
        // The same, inside a whole message that automerge itself decodes.
        let mut bad = msg;
        bad.have[0].bloom = automerge::sync::BloomFilter::try_from(&[1u8, 0, 7][..]).expect("automerge parses it");
        let bad = bad.encode();
        assert!(automerge::sync::Message::decode(&bad).is_ok(), "automerge takes it");
        assert!(decode_sync_message(&bad).unwrap_err().contains("no bits"));
    }

    fn till(name: &str) -> Automerge {
        genesis().with_actor(ActorId::from(name.as_bytes()))
    }

    fn sell(doc: &mut Automerge, writer: &str, sku: &str, delta: i64) {
        let stock = root_map(doc, STOCK).unwrap();
        let mut tx = doc.transaction();
        apply_stock(&mut tx, &stock, writer, &BTreeMap::from([(sku.to_owned(), delta)])).unwrap();
        tx.commit();
    }

    #[test]
    fn foreign_op_finds_writes_outside_the_writers_own_slot() {
        let mut doc = till("t1");
        let before = doc.get_heads();
        sell(&mut doc, "T1", "A", -1);
        assert_eq!(foreign_op(&doc, &before, "T1"), None);
        let before = doc.get_heads();
        sell(&mut doc, HUB_WRITER, "A", 5);
        assert!(foreign_op(&doc, &before, "T1").is_some(), "the hub's slot is not T1's");
        let before = doc.get_heads();
        let prices = root_map(&doc, PRICES).unwrap();
        let mut tx = doc.transaction();
        tx.put(&prices, "A\u{1f}T1", "1 EUR").unwrap();
        tx.commit();
        assert!(foreign_op(&doc, &before, "T1").is_some(), "a key shaped like T1's slot, but in prices");
    }

    #[test]
    fn reply_if_needed_drops_only_empty_replies_to_a_current_till() {
        use automerge::sync::SyncDoc;
        let mut hub = till("hub");
        sell(&mut hub, HUB_WRITER, "A", 5);
        let ours = hub.get_heads();
        // A first message carries no changes and needs none: only the heads and the Bloom filter.
        let reply = hub.generate_sync_message(&mut automerge::sync::State::new());
        assert!(reply.as_ref().is_some_and(|r| r.need.is_empty()));
        // The till said it lacks our heads, or a round without a message finds other shared heads: it goes out.
        assert!(reply_if_needed(reply.clone(), Some(&[]), &ours, &ours).is_some());
        assert!(reply_if_needed(reply.clone(), None, &[], &ours).is_some());
        // The till has our heads, by its message or by the shared heads: nothing to send.
        assert!(reply_if_needed(reply.clone(), Some(&ours), &[], &ours).is_none());
        assert!(reply_if_needed(reply, None, &ours, &ours).is_none());
    }

    #[test]
    fn escrow_is_a_hub_register_per_sku_that_survives_an_epoch() {
        let mut hub = till("hub");
        let escrow = root_map(&hub, ESCROW).unwrap();
        let mut tx = hub.transaction();
        set_escrow(&mut tx, &escrow, "A", 4).unwrap();
        set_escrow(&mut tx, &escrow, "AB", 2).unwrap();
        tx.commit();
        let mut tx = hub.transaction();
        set_escrow(&mut tx, &escrow, "A", 3).unwrap();
        set_escrow(&mut tx, &escrow, "AB", 0).unwrap();
        tx.commit();
        assert_eq!(escrow_of(&hub, &escrow, "A", None), 3);
        assert_eq!(escrow_of(&hub, &escrow, "AB", None), 0);
        assert_eq!(all_escrow(&hub, &escrow), BTreeMap::from([("A".to_owned(), 3)]));
        // A till that merges the hub's changes sees the same escrow; a till may not write it.
        let mut t1 = till("t1");
        t1.merge(&mut hub.clone()).unwrap();
        assert_eq!(escrow_of(&t1, &escrow, "A", None), 3);
        let before = t1.get_heads();
        let mut tx = t1.transaction();
        set_escrow(&mut tx, &escrow, "A", 99).unwrap();
        tx.commit();
        assert!(foreign_op(&t1, &before, "T1").is_some(), "escrow is head office's alone");
        // Compaction: the epoch document plus the carried escrow.
        let mut fresh =
            epoch_doc(ActorId::random(), &BTreeMap::new(), &BTreeMap::new(), "2026-01-01T00:00:00Z", 0).unwrap();
        let hold = Hold {
            reservation_id: uuid::Uuid::from_u128(7),
            order_id: "W-1".into(),
            lines: vec![crate::reservation::ReservedLine { sku: "A".into(), qty: 2 }],
            pickup_by: "2026-01-02T00:00:00Z".into(),
            status: crate::reservation::ReservationStatus::Reserved,
        };
        let mut tx = hub.transaction();
        put_hold(&mut tx, &escrow, &hold).unwrap();
        put_hold(&mut tx, &escrow, &Hold { reservation_id: uuid::Uuid::from_u128(8), ..hold.clone() }).unwrap();
        tx.commit();
        let mut tx = hub.transaction();
        remove_hold(&mut tx, &escrow, uuid::Uuid::from_u128(8)).unwrap();
        tx.commit();
        assert_eq!(holds(&hub, &escrow, None), std::slice::from_ref(&hold));
        assert_eq!(all_escrow(&hub, &escrow).len(), 1, "holds are not escrow registers");
        carry_escrow(&mut fresh, &all_escrow(&hub, &escrow), &holds(&hub, &escrow, None), 0).unwrap();
        let obj = root_map(&fresh, ESCROW).unwrap();
        assert_eq!(all_escrow(&fresh, &obj), BTreeMap::from([("A".to_owned(), 3)]));
        assert_eq!(holds(&fresh, &obj, None), [hold]);
    }

    #[test]
    fn genesis_is_identical_everywhere() {
        assert_eq!(genesis().get_heads(), genesis().get_heads());
        assert_eq!(root_map(&till("a"), STOCK), root_map(&till("b"), STOCK));
    }

    #[test]
    fn concurrent_first_writes_from_two_tills_both_count() {
        let (mut a, mut b, mut hub) = (till("a"), till("b"), till("hub"));
        sell(&mut hub, HUB_WRITER, "X", 10);
        sell(&mut a, "T1", "X", -1);
        sell(&mut a, "T1", "X", -2);
        sell(&mut b, "T2", "X", -4);
        a.merge(&mut b).unwrap();
        a.merge(&mut hub).unwrap();
        b.merge(&mut a).unwrap();
        let stock = root_map(&a, STOCK).unwrap();
        assert_eq!(on_hand(&a, &stock, "X", None), 3);
        assert_eq!(on_hand(&b, &stock, "X", None), 3);
        assert_eq!(on_hand(&a, &stock, "Y", None), 0);
        // A SKU that is a prefix of another is not mixed up with it.
        sell(&mut a, "T1", "XY", 5);
        assert_eq!(on_hand(&a, &stock, "X", None), 3);
        assert_eq!(all_stock(&a, &stock, None), BTreeMap::from([("X".into(), 3), ("XY".into(), 5)]));
    }

    #[test]
    fn price_schedule_switches_at_effective_from() {
        let mut doc = till("hub");
        let prices = root_map(&doc, PRICES).unwrap();
        let mut tx = doc.transaction();
        for (at, amount) in [("2026-01-01T00:00:00Z", 100), ("2026-06-01T00:00:00Z", 120)] {
            let p = Price { price_minor: amount, currency: "EUR".into(), effective_from: at.into() };
            set_price(&mut tx, &prices, "A", &p).unwrap();
        }
        tx.commit();
        let v = price_at(&doc, &prices, "A", "2026-03-01T00:00:00Z", None);
        assert_eq!(v.current.unwrap().price_minor, 100);
        assert_eq!(v.next.unwrap().price_minor, 120);
        let v = price_at(&doc, &prices, "A", "2026-06-01T00:00:00Z", None);
        assert_eq!(v.current.unwrap().price_minor, 120);
        assert_eq!(v.next, None);
        assert_eq!(price_at(&doc, &prices, "A", "2025-01-01T00:00:00Z", None).current, None);
    }
}
