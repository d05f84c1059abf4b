//! CSV: one row per line item or payment, grouped into one sale or return by `transaction_id`.
//!
//! The first row is a header naming the columns, in any order (case and surrounding spaces do not matter; a
//! column the reader does not know is a fatal error, so a typo cannot silently drop data). Fields are separated
//! by `,`, or by `;` when the header holds more semicolons than commas (spreadsheets in many European locales);
//! RFC 4180 quoting applies; a UTF-8 byte-order mark is ignored. See docs/INBOX.md for the column table.
//!
//! The rows of one transaction must be consecutive: a transaction ends where the next `transaction_id` starts, so
//! only one transaction is ever held in memory. A transaction's event id is its own `event_id` column, or UUIDv5
//! of ("csv", transaction id, SHA-256 of the canonical body).

use std::collections::VecDeque;
use std::io::BufRead;

use serde_json::{Map, Value, json};
use storesync_shared::event::{BodyType, MAX_LINES};

use super::money::{to_minor, whole_quantity};
use super::record::{Context, Item, Place, Refusal, body_digest, checked, derived_id};

/// The most rows one transaction may have (its lines plus its payments).
const MAX_ROWS: usize = 2 * MAX_LINES;

/// How a money column is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Decimal text in the currency's major unit (`12.50`), converted exactly.
    Major,
    /// Integer minor units (`1250`).
    Minor,
}

/// Where each known column is.
#[derive(Debug, Default)]
struct Columns {
    transaction_id: Option<usize>,
    kind: Option<usize>,
    occurred_at: Option<usize>,
    currency: Option<usize>,
    sku: Option<usize>,
    qty: Option<usize>,
    unit_price: Option<(usize, Unit)>,
    discount: Option<(usize, Unit)>,
    payment_method: Option<usize>,
    payment_amount: Option<(usize, Unit)>,
    reason: Option<usize>,
    customer_id: Option<usize>,
    original_event_id: Option<usize>,
    event_id: Option<usize>,
}

impl Columns {
    fn from_header(header: &csv::StringRecord) -> Result<Columns, Refusal> {
        let mut c = Columns::default();
        let fatal = |code, detail: String| Refusal::new(Place::line(1), code, detail);
        for (i, raw) in header.iter().enumerate() {
            let name = raw.trim().to_ascii_lowercase();
            let slot_taken = {
                let set = |slot: &mut Option<usize>| slot.replace(i).is_some();
                let set_money = |slot: &mut Option<(usize, Unit)>, unit| slot.replace((i, unit)).is_some();
                match name.as_str() {
                    "transaction_id" => set(&mut c.transaction_id),
                    "kind" => set(&mut c.kind),
                    "occurred_at" => set(&mut c.occurred_at),
                    "currency" => set(&mut c.currency),
                    "sku" => set(&mut c.sku),
                    "qty" => set(&mut c.qty),
                    "unit_price" => set_money(&mut c.unit_price, Unit::Major),
                    "unit_price_minor" => set_money(&mut c.unit_price, Unit::Minor),
                    "discount" => set_money(&mut c.discount, Unit::Major),
                    "discount_minor" => set_money(&mut c.discount, Unit::Minor),
                    "payment_method" => set(&mut c.payment_method),
                    "payment_amount" => set_money(&mut c.payment_amount, Unit::Major),
                    "payment_amount_minor" => set_money(&mut c.payment_amount, Unit::Minor),
                    "reason" => set(&mut c.reason),
                    "customer_id" => set(&mut c.customer_id),
                    "original_event_id" => set(&mut c.original_event_id),
                    "event_id" => set(&mut c.event_id),
                    _ => {
                        return Err(fatal(
                            "unknown_column",
                            format!("column {raw:?} is not one this reader knows (see docs/INBOX.md)"),
                        ));
                    }
                }
            };
            if slot_taken {
                return Err(fatal("duplicate_column", format!("column {raw:?} appears twice (or in both units)")));
            }
        }
        let required = [
            ("transaction_id", c.transaction_id.is_some()),
            ("kind", c.kind.is_some()),
            ("occurred_at", c.occurred_at.is_some()),
            ("sku", c.sku.is_some()),
            ("qty", c.qty.is_some()),
            ("unit_price or unit_price_minor", c.unit_price.is_some()),
        ];
        if let Some((name, _)) = required.iter().find(|(_, present)| !present) {
            return Err(fatal("missing_column", format!("the header has no {name} column")));
        }
        if c.payment_method.is_some() != c.payment_amount.is_some() {
            return Err(fatal(
                "missing_column",
                "payment_method and payment_amount (or payment_amount_minor) come together".into(),
            ));
        }
        Ok(c)
    }
}

/// A transaction's fields that every row may repeat, but no two rows may contradict.
const HEAD_FIELDS: [&str; 7] =
    ["kind", "occurred_at", "currency", "reason", "customer_id", "original_event_id", "event_id"];

/// One row, as text.
#[derive(Debug, Default)]
struct Row {
    line: u64,
    sku: String,
    qty: String,
    unit_price: String,
    discount: String,
    payment_method: String,
    payment_amount: String,
}

/// The transaction being read.
#[derive(Debug)]
struct Group {
    id: String,
    line: u64,
    head: [String; 7],
    rows: Vec<Row>,
    error: Option<Refusal>,
}

/// The CSV reader.
pub(crate) struct Records {
    reader: Option<csv::Reader<Box<dyn BufRead + Send>>>,
    columns: Option<Columns>,
    ctx: Context,
    group: Option<Group>,
    out: VecDeque<Result<Item, Refusal>>,
    record: csv::StringRecord,
}

impl Records {
    pub(crate) fn new(mut input: Box<dyn BufRead + Send>, ctx: Context) -> Records {
        let delimiter = sniff_delimiter(&mut *input);
        let reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .trim(csv::Trim::All)
            .delimiter(delimiter)
            .from_reader(input);
        Records {
            reader: Some(reader),
            columns: None,
            ctx,
            group: None,
            out: VecDeque::new(),
            record: csv::StringRecord::new(),
        }
    }

    /// Reads rows until an item is ready or the file ends.
    fn fill(&mut self) {
        let Some(reader) = self.reader.as_mut() else { return };
        if self.columns.is_none() {
            let header = match reader.headers() {
                Ok(h) if h.iter().any(|f| !f.is_empty()) => Columns::from_header(h),
                Ok(_) => Err(Refusal::new(Place::line(1), "missing_column", "the file has no header row")),
                Err(e) => Err(row_error(e, 1)),
            };
            match header {
                Ok(c) => self.columns = Some(c),
                Err(e) => {
                    self.out.push_back(Err(e));
                    self.reader = None;
                    return;
                }
            }
        }
        while self.out.is_empty() {
            let Some(reader) = self.reader.as_mut() else { return };
            let line = reader.position().line();
            match reader.read_record(&mut self.record) {
                Ok(true) => self.row(),
                Ok(false) => {
                    self.finish_group();
                    self.reader = None;
                }
                Err(e) if e.is_io_error() => {
                    self.finish_group();
                    self.out.push_back(Err(row_error(e, line)));
                    self.reader = None;
                }
                Err(e) => self.out.push_back(Ok(Item::Refused(row_error(e, line)))),
            }
        }
    }

    /// Takes one good row into the current transaction, or starts the next one.
    fn row(&mut self) {
        let Some(c) = self.columns.as_ref() else { return };
        let rec = &self.record;
        let line = rec.position().map_or(0, csv::Position::line);
        let get = |col: Option<usize>| col.and_then(|i| rec.get(i)).unwrap_or("").to_owned();
        let get_money = |col: Option<(usize, Unit)>| get(col.map(|(i, _)| i));
        let id = get(c.transaction_id);
        if id.is_empty() {
            let r = Refusal::new(Place::line(line), "missing_transaction_id", "the row has no transaction_id");
            self.out.push_back(Ok(Item::Refused(r)));
            return;
        }
        let head = [
            get(c.kind),
            get(c.occurred_at),
            get(c.currency),
            get(c.reason),
            get(c.customer_id),
            get(c.original_event_id),
            get(c.event_id),
        ];
        let row = Row {
            line,
            sku: get(c.sku),
            qty: get(c.qty),
            unit_price: get_money(c.unit_price),
            discount: get_money(c.discount),
            payment_method: get(c.payment_method),
            payment_amount: get_money(c.payment_amount),
        };
        if self.group.as_ref().is_some_and(|g| g.id != id) {
            self.finish_group();
        }
        let g = self.group.get_or_insert_with(|| Group {
            id: id.clone(),
            line,
            head: Default::default(),
            rows: Vec::new(),
            error: None,
        });
        if g.error.is_some() {
            return;
        }
        for (k, (have, new)) in g.head.iter_mut().zip(head).enumerate() {
            if new.is_empty() {
                continue;
            }
            if have.is_empty() {
                *have = new;
            } else if *have != new {
                g.error = Some(Refusal::new(
                    Place { line: Some(line), byte: None, record: Some(id.clone()) },
                    "inconsistent_transaction",
                    format!(
                        "transaction {id:?}: this row's {} is {new:?} but an earlier row's is {have:?}",
                        HEAD_FIELDS[k]
                    ),
                ));
                return;
            }
        }
        if g.rows.len() >= MAX_ROWS {
            g.error = Some(Refusal::new(
                Place { line: Some(g.line), byte: None, record: Some(id) },
                "too_many_lines",
                format!("a transaction may have at most {MAX_ROWS} rows"),
            ));
            return;
        }
        g.rows.push(row);
    }

    fn finish_group(&mut self) {
        if let (Some(g), Some(c)) = (self.group.take(), self.columns.as_ref()) {
            self.out.push_back(Ok(build(g, c.units(), &self.ctx)));
        }
    }
}

impl Iterator for Records {
    type Item = Result<Item, Refusal>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.out.is_empty() {
            self.fill();
        }
        self.out.pop_front()
    }
}

/// `,` unless the header line holds more `;` than `,`.
fn sniff_delimiter(input: &mut dyn BufRead) -> u8 {
    let Ok(head) = input.fill_buf() else { return b',' };
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let count = |c: u8| first.iter().filter(|&&b| b == c).count();
    if count(b';') > count(b',') { b';' } else { b',' }
}

fn row_error(e: csv::Error, line: u64) -> Refusal {
    let line = e.position().map_or(line, csv::Position::line);
    let place = Place::line(line);
    match e.kind() {
        csv::ErrorKind::Io(io) => Refusal::new(place, "unreadable", format!("reading the file failed: {io}")),
        csv::ErrorKind::Utf8 { .. } => Refusal::new(place, "invalid_text", "the row is not valid UTF-8"),
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            Refusal::new(place, "malformed_row", format!("the row has {len} fields but the header has {expected_len}"))
        }
        _ => Refusal::new(place, "malformed_row", e.to_string()),
    }
}

/// The units of a file's money columns.
#[derive(Debug, Clone, Copy)]
struct Units {
    unit_price: Unit,
    discount: Unit,
    payment_amount: Unit,
}

impl Columns {
    fn units(&self) -> Units {
        let unit = |c: Option<(usize, Unit)>| c.map_or(Unit::Major, |(_, u)| u);
        Units {
            unit_price: unit(self.unit_price),
            discount: unit(self.discount),
            payment_amount: unit(self.payment_amount),
        }
    }
}

/// A money field to minor units.
fn money(text: &str, unit: Unit, currency: &str, field: &str) -> Result<i64, FieldError> {
    match unit {
        Unit::Major => to_minor(text, currency, field).map_err(|e| (e.code, e.detail)),
        Unit::Minor => {
            text.parse::<i64>().map_err(|_| ("invalid_amount", format!("{field} {text:?} is not an integer")))
        }
    }
}

/// A refused field: its code and detail.
type FieldError = (&'static str, String);

/// One row's line item and payment, as parts of a POST body.
fn row_parts(row: &Row, units: Units, currency: &str) -> Result<(Option<Value>, Option<Value>), FieldError> {
    let has_line = !row.sku.is_empty();
    let has_tender = !row.payment_method.is_empty();
    if !has_line && [&row.qty, &row.unit_price, &row.discount].iter().any(|f| !f.is_empty()) {
        return Err(("invalid_sku", "the row has a qty, price or discount but no sku".into()));
    }
    if !has_tender && !row.payment_amount.is_empty() {
        return Err(("invalid_text", "the row has a payment amount but no payment_method".into()));
    }
    if !has_line && !has_tender {
        return Err(("empty_row", "the row has neither a sku nor a payment_method".into()));
    }
    let line = if has_line {
        let qty = whole_quantity(&row.qty, "qty").map_err(|e| (e.code, e.detail))?;
        let price = money(&row.unit_price, units.unit_price, currency, "unit_price")?;
        let discount =
            if row.discount.is_empty() { 0 } else { money(&row.discount, units.discount, currency, "discount")? };
        Some(json!({"sku": row.sku, "qty": qty, "unit_price_minor": price, "discount_minor": discount}))
    } else {
        None
    };
    let tender = if has_tender {
        let amount = money(&row.payment_amount, units.payment_amount, currency, "payment_amount")?;
        Some(json!({"method": row.payment_method, "amount_minor": amount}))
    } else {
        None
    };
    Ok((line, tender))
}

/// A finished transaction to a record (or a refusal).
fn build(g: Group, units: Units, ctx: &Context) -> Item {
    let place = Place { line: Some(g.line), byte: None, record: Some(g.id.clone()) };
    if let Some(e) = g.error {
        return Item::Refused(e);
    }
    let refuse = |code, detail: String| Item::Refused(Refusal::new(place.clone(), code, detail));
    let [kind, occurred_at, currency, reason, customer_id, original_event_id, event_id] = g.head;
    let (ty, tenders_key) = match kind.as_str() {
        "sale" => (BodyType::Sale, "payments"),
        "return" => (BodyType::Return, "refunds"),
        "" => return refuse("missing_kind", format!("transaction {:?} has no kind", g.id)),
        other => return refuse("unknown_kind", format!("kind {other:?}: a CSV transaction is a sale or a return")),
    };
    let currency = match (currency.is_empty(), &ctx.currency) {
        (false, _) => currency,
        (true, Some(c)) => c.clone(),
        (true, None) => {
            return refuse(
                "missing_currency",
                "the transaction names no currency and inbox_currency is not set".into(),
            );
        }
    };
    let mut lines = Vec::new();
    let mut tenders = Vec::new();
    for row in &g.rows {
        match row_parts(row, units, &currency) {
            Ok((line, tender)) => {
                lines.extend(line);
                tenders.extend(tender);
            }
            Err((code, detail)) => {
                let at = Place { line: Some(row.line), ..place };
                return Item::Refused(Refusal::new(at, code, detail));
            }
        }
    }
    let mut body = Map::new();
    body.insert("occurred_at".into(), json!(occurred_at));
    body.insert("currency".into(), json!(currency));
    body.insert("lines".into(), Value::Array(lines));
    body.insert(tenders_key.into(), Value::Array(tenders));
    for (key, value) in [
        ("reason", reason),
        ("customer_id", customer_id),
        ("original_event_id", original_event_id),
        ("event_id", event_id),
    ] {
        if !value.is_empty() {
            body.insert(key.into(), json!(value));
        }
    }
    let id = g.id;
    checked(ty, Value::Object(body), place, |b| derived_id(&["csv", &id, &body_digest(b)]))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use storesync_shared::EventKind;

    use super::*;
    use crate::inbox::record::Record;

    fn read(text: &str, currency: Option<&str>) -> Vec<Result<Item, Refusal>> {
        let ctx = Context { currency: currency.map(str::to_owned) };
        Records::new(Box::new(std::io::Cursor::new(text.as_bytes().to_vec())), ctx).collect()
    }

    fn records(items: &[Result<Item, Refusal>]) -> Vec<&Record> {
        items.iter().filter_map(|i| if let Ok(Item::Record(r)) = i { Some(r) } else { None }).collect()
    }

    const HEADER: &str = "transaction_id,kind,occurred_at,currency,sku,qty,unit_price,discount,payment_method,payment_amount,reason,customer_id\n";

    #[test]
    fn rows_group_into_sales_and_returns() {
        let text = format!(
            "\u{feff}{HEADER}\
             T1,sale,2026-11-26T14:05:00+01:00,EUR,A,2,2.50,0.50,,,,C-7\n\
             T1,,,,B,1,1.00,,card,5.50,,\n\
             T2,return,2026-11-26T15:00:00+01:00,EUR,A,1,2.50,,cash,2.50,faulty,\n\
             T3,sale,2026-11-26T15:10:00+01:00,EUR,C,1,\"1000.00\",,card,600.00,,\n\
             T3,,,,,,,,gift card,400.00,,\n"
        );
        let items = read(&text, None);
        let rs = records(&items);
        assert_eq!(rs.len(), 3, "{items:?}");
        assert_eq!(
            rs.iter().map(|r| r.body.kind()).collect::<Vec<_>>(),
            [EventKind::Sale, EventKind::Return, EventKind::Sale]
        );
        assert_eq!((rs[0].place.line, rs[0].place.record.as_deref()), (Some(2), Some("T1")));
        let sale = rs[0].body.to_value();
        assert_eq!(
            sale["lines"],
            json!([{"sku": "A", "qty": 2, "unit_price_minor": 250, "discount_minor": 50},
                   {"sku": "B", "qty": 1, "unit_price_minor": 100, "discount_minor": 0}])
        );
        assert_eq!(sale["payments"], json!([{"method": "card", "amount_minor": 550}]));
        assert_eq!(sale["customer_id"], "C-7");
        let ret = rs[1].body.to_value();
        assert_eq!(ret["refunds"], json!([{"method": "cash", "amount_minor": 250}]));
        assert_eq!(ret["reason"], "faulty");
        assert_eq!(rs[2].body.to_value()["payments"].as_array().map(Vec::len), Some(2));
        // The same file again gives the same ids.
        let again = read(&text, None);
        let ids = |rs: &[&Record]| rs.iter().map(|r| r.event_id).collect::<Vec<_>>();
        assert_eq!(ids(&records(&again)), ids(&rs));
    }

    #[test]
    fn minor_unit_columns_semicolons_and_the_default_currency() {
        let text = "Transaction_ID ; KIND;occurred_at;sku;qty;unit_price_minor;payment_method;payment_amount_minor;event_id\n\
                    9;sale;2026-11-26T14:05:00Z;A;3;199;cash;597;00000000-0000-4000-8000-0000000000aa\n";
        let items = read(text, Some("EUR"));
        let rs = records(&items);
        assert_eq!(rs.len(), 1, "{items:?}");
        assert_eq!(rs[0].event_id.to_string(), "00000000-0000-4000-8000-0000000000aa");
        assert_eq!(rs[0].body.to_value()["currency"], "EUR");
    }

    /// One table-driven check: rows after the header, and the refusal code the file must get.
    fn check(rows: &str, code: &str) {
        let items = read(&format!("{HEADER}{rows}"), None);
        let got: Vec<&str> = items
            .iter()
            .filter_map(|i| match i {
                Ok(Item::Refused(r)) | Err(r) => Some(r.code),
                _ => None,
            })
            .collect();
        assert_eq!(got, [code], "{rows}: {items:?}");
    }

    #[test]
    fn bad_rows_are_refused_precisely() {
        check("T1,sale,2026-11-26T14:05:00Z,EUR,A,1,1.005,,card,1.00,,\n", "invalid_amount");
        check("T1,sale,2026-11-26T14:05:00Z,EUR,A,1.5,1.00,,card,1.50,,\n", "invalid_qty");
        check("T1,sale,2026-11-26T14:05:00Z,EUR,A,1,1.00,,card,2.00,,\n", "tender_mismatch");
        check("T1,sale,2026-11-26T14:05:00Z,XYZ,A,1,1.00,,card,1.00,,\n", "unknown_currency");
        check("T1,sale,2026-11-26T14:05:00Z,,A,1,1.00,,card,1.00,,\n", "missing_currency");
        check("T1,refund,2026-11-26T14:05:00Z,EUR,A,1,1.00,,card,1.00,,\n", "unknown_kind");
        check("T1,sale,2026-11-26 14:05,EUR,A,1,1.00,,card,1.00,,\n", "invalid_occurred_at");
        check(
            "T1,sale,2026-11-26T14:05:00Z,EUR,A,1,1.00,,card,1.00,,\nT1,return,,,B,1,1.00,,,,,\n",
            "inconsistent_transaction",
        );
        check(",sale,2026-11-26T14:05:00Z,EUR,A,1,1.00,,card,1.00,,\n", "missing_transaction_id");
        check("T1,sale,2026-11-26T14:05:00Z,EUR,A,1\n", "malformed_row");
        check("T1,sale,2026-11-26T14:05:00Z,EUR,,,,,,,,\n", "empty_row");
        check("T1,sale,2026-11-26T14:05:00Z,EUR,,2,,,card,1.00,,\n", "invalid_sku");
        check("T1,sale,2026-11-26T14:05:00Z,EUR,A,1,1.00,,,1.00,,\n", "invalid_text");
        check("T1,sale,2026-11-26T14:05:00Z,EUR,A,1,1.00,,card,1.00,faulty,\n", "invalid_body");
    }

    #[test]
    fn bad_headers_are_fatal() {
        for (text, code) in [
            ("transaction_id,kind,occurred_at,sku,quantity,unit_price\n", "unknown_column"),
            ("transaction_id,kind,occurred_at,sku,qty\n", "missing_column"),
            ("transaction_id,kind,occurred_at,sku,qty,unit_price,unit_price_minor\n", "duplicate_column"),
            ("transaction_id,kind,occurred_at,sku,qty,unit_price,payment_method\n", "missing_column"),
            ("", "missing_column"),
        ] {
            let items = read(text, None);
            assert!(matches!(items.as_slice(), [Err(r)] if r.code == code), "{text}: {items:?}");
        }
    }

    #[test]
    fn a_transaction_over_the_row_limit_is_refused_without_holding_the_rest() {
        let mut text = String::from(HEADER);
        for _ in 0..=MAX_ROWS {
            text.push_str("T1,sale,2026-11-26T14:05:00Z,EUR,A,1,1.00,,,,,\n");
        }
        text.push_str("T2,sale,2026-11-26T14:05:00Z,EUR,A,1,1.00,,card,1.00,,\n");
        let items = read(&text, None);
        assert!(matches!(&items[0], Ok(Item::Refused(r)) if r.code == "too_many_lines"));
        assert_eq!(records(&items).len(), 1);
    }
}
