//! Hash-chained till journals made up by tests and the load generator: [`chain`] links entries the way a till's
//! journal does (seq, `prev_hash`, `hash` over the canonical body), and [`Shop`] makes a realistic run of sales and
//! returns over a small catalogue.

use std::collections::BTreeMap;

use rand::Rng;
use serde_json::Value;
use storesync_shared::canonical::{ChainInput, canonical_json, event_hash};
use storesync_shared::event::{EventBody, Line, ReturnBody, SaleBody, Tender};
use storesync_shared::wire::JournalEvent;
use storesync_shared::{EventKind, genesis_hash};
use uuid::Uuid;

/// One journal entry before it is chained: seqs and hashes come from its place in [`chain`].
#[derive(Debug, Clone)]
pub struct Entry {
    pub event_id: Uuid,
    pub kind: EventKind,
    pub occurred_at: String,
    pub body: Value,
}

/// The entries as a till's hash-chained journal, from seq 1.
pub fn chain(store: &str, till: &str, entries: impl IntoIterator<Item = Entry>) -> Vec<JournalEvent> {
    chain_from(store, till, 1, &genesis_hash(store, till), entries)
}

/// The entries chained after a journal that ends at `first_seq - 1` with hash `prev_hash`.
pub fn chain_from(
    store: &str,
    till: &str,
    first_seq: u64,
    prev_hash: &str,
    entries: impl IntoIterator<Item = Entry>,
) -> Vec<JournalEvent> {
    let mut prev = prev_hash.to_owned();
    (first_seq..)
        .zip(entries)
        .map(|(seq, Entry { event_id, kind, occurred_at, body })| {
            let hash = event_hash(&ChainInput {
                store,
                till,
                seq,
                event_id,
                kind,
                body: &canonical_json(&body),
                prev_hash: &prev,
            });
            JournalEvent {
                seq,
                event_id,
                kind,
                occurred_at,
                body,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            }
        })
        .collect()
}

/// A shop's catalogue and habits: what a till sells, and how often customers bring something back.
#[derive(Debug, Clone)]
pub struct Shop {
    /// `(sku, unit price in minor units)`.
    pub catalogue: Vec<(String, i64)>,
    /// Percent of entries that are returns (of something this till sold before).
    pub returns_pct: u32,
    pub currency: String,
}

impl Shop {
    /// `skus` SKUs (`SKU-0001`, …) at prices from 0.49 to about 60.00 EUR; `returns_pct` percent returns.
    pub fn new(skus: usize, returns_pct: u32) -> Shop {
        let catalogue = (1..=skus.max(1)).map(|i| (format!("SKU-{i:04}"), 49 + (i as i64 * 7_919) % 5_951)).collect();
        Shop { catalogue, returns_pct: returns_pct.min(100), currency: "EUR".into() }
    }

    /// The next entry of a till that has sold `sold` so far (`(sku, qty)` lines it may take back), at `at`: a sale
    /// of 1 to 4 distinct SKUs (mostly 1 of each, sometimes a discount, paid by card, cash or both), or a return
    /// of one line of an earlier sale, refunded in cash.
    pub fn next_entry(&self, rng: &mut impl Rng, sold: &mut Vec<(usize, i64)>, at: time::OffsetDateTime) -> Entry {
        let occurred_at = at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let event_id = Uuid::new_v4();
        if !sold.is_empty() && rng.random_range(0..100) < self.returns_pct {
            let (item, max_qty) = sold.swap_remove(rng.random_range(0..sold.len()));
            let qty = rng.random_range(1..=max_qty);
            let (sku, price) = &self.catalogue[item];
            let body = ReturnBody {
                schema: storesync_shared::event::SCHEMA_VERSION,
                occurred_at: occurred_at.clone(),
                currency: self.currency.clone(),
                lines: vec![Line { sku: sku.clone(), qty, unit_price_minor: *price, discount_minor: 0 }],
                refunds: vec![Tender { method: "cash".into(), amount_minor: qty * price }],
                original_event_id: None,
                reason: if rng.random_bool(0.5) { "faulty".into() } else { "changed mind".into() },
                customer_id: None,
            };
            return Entry { event_id, kind: EventKind::Return, occurred_at, body: to_value(&body) };
        }
        let n_lines = [1, 1, 1, 2, 2, 3, 4][rng.random_range(0..7)].min(self.catalogue.len());
        let mut items: Vec<usize> = Vec::with_capacity(n_lines);
        while items.len() < n_lines {
            let i = rng.random_range(0..self.catalogue.len());
            if !items.contains(&i) {
                items.push(i);
            }
        }
        let lines: Vec<Line> = items
            .iter()
            .map(|&i| {
                let (sku, price) = &self.catalogue[i];
                let qty = [1, 1, 1, 1, 2, 2, 3][rng.random_range(0..7)];
                let discount_minor = if rng.random_range(0..10) == 0 { qty * price / 10 } else { 0 };
                sold.push((i, qty));
                Line { sku: sku.clone(), qty, unit_price_minor: *price, discount_minor }
            })
            .collect();
        let total: i64 = lines.iter().map(|l| l.qty * l.unit_price_minor - l.discount_minor).sum();
        let payments = match rng.random_range(0..10) {
            0..=5 => vec![Tender { method: "card".into(), amount_minor: total }],
            6..=8 => vec![Tender { method: "cash".into(), amount_minor: total }],
            _ if total >= 2 => vec![
                Tender { method: "cash".into(), amount_minor: total / 2 },
                Tender { method: "card".into(), amount_minor: total - total / 2 },
            ],
            _ => vec![Tender { method: "card".into(), amount_minor: total }],
        };
        let body = SaleBody {
            schema: storesync_shared::event::SCHEMA_VERSION,
            occurred_at: occurred_at.clone(),
            currency: self.currency.clone(),
            lines,
            payments,
            customer_id: None,
            reservation_id: None,
        };
        Entry { event_id, kind: EventKind::Sale, occurred_at, body: to_value(&body) }
    }
}

fn to_value<T: serde::Serialize>(body: &T) -> Value {
    // Plain structs of strings and integers always serialize.
    serde_json::to_value(body).unwrap_or(Value::Null)
}

/// The stock movement of one entry, per SKU (as the hub and the till compute it).
///
/// # Errors
/// A body that is not a valid event of its kind.
pub fn stock_effect(e: &JournalEvent) -> Result<BTreeMap<String, i64>, storesync_shared::ValidationError> {
    Ok(EventBody::from_stored(e.kind, e.body.clone())?.stock_effect())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn a_shop_journal_is_a_valid_chain_of_sales_and_returns_whose_returns_never_exceed_the_sales() {
        let shop = Shop::new(8, 20);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut sold = Vec::new();
        let t0 = time::macros::datetime!(2026-11-26 09:00 +01:00);
        let entries: Vec<Entry> =
            (0..400).map(|i| shop.next_entry(&mut rng, &mut sold, t0 + time::Duration::seconds(i * 37))).collect();
        let journal = chain("S1", "T1", entries);
        let mut prev = genesis_hash("S1", "T1");
        let (mut returns, mut stock) = (0, BTreeMap::<String, i64>::new());
        for (i, e) in journal.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
            assert_eq!(e.prev_hash, prev);
            prev = e.hash.clone();
            let body = EventBody::from_stored(e.kind, e.body.clone()).unwrap_or_else(|err| panic!("{i}: {err}"));
            body.validate().unwrap_or_else(|err| panic!("seq {}: {err} {}", e.seq, e.body));
            returns += usize::from(e.kind == EventKind::Return);
            for (sku, d) in stock_effect(e).unwrap() {
                *stock.entry(sku).or_default() += d;
            }
        }
        assert!((40..=120).contains(&returns), "about 20% returns: {returns}");
        assert!(stock.len() > 4 && stock.values().all(|v| *v <= 0), "returns only bring back what was sold: {stock:?}");
        let more = chain_from("S1", "T1", 401, &prev, [shop.next_entry(&mut rng, &mut sold, t0)]);
        assert_eq!((more[0].seq, more[0].prev_hash.as_str()), (401, prev.as_str()), "chain_from continues it");
    }
}
