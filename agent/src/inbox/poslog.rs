//! ARTS POSLog (XML): `POSLog/Transaction/RetailTransaction/LineItem` mapped to canonical sales and returns.
//!
//! The file is read with quick-xml's streaming reader. Only one `Transaction` at a time is held in memory, as a
//! small tree of its ARTS elements (at most [`MAX_NODES`] elements and [`MAX_TEXT_BYTES`] of text; a larger
//! transaction is refused and the reader goes on with the next one). Elements of other namespaces (vendor
//! extensions) are ignored with everything inside them; elements with no namespace are read as ARTS ones, since
//! some exports leave the namespace out. The XML declaration's encoding is honoured (UTF-8, ISO-8859-1,
//! Windows-1252, ...).
//!
//! A transaction's event id is UUIDv5 of ("poslog", RetailStoreID, WorkstationID, BusinessDayDate,
//! SequenceNumber): the ARTS key of a transaction, so the same transaction exported again in another file is
//! journaled once (and a re-export that changed it is refused as a conflict, not journaled twice). A transaction
//! without all of WorkstationID, BusinessDayDate and SequenceNumber falls back to ("poslog-ordinal", its ordinal
//! in the file, SHA-256 of the canonical body). The mapping table is in docs/INBOX.md.

use std::io::BufRead;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, QName, ResolveResult};
use quick_xml::reader::NsReader;
use serde_json::{Map, Value, json};
use storesync_shared::event::BodyType;

use super::money::{to_minor, whole_quantity};
use super::record::{Context, Item, MAX_RECORD_BYTES, Place, Refusal, body_digest, checked, derived_id};

/// The ARTS IXRetail namespace (POSLog 2.x to 6.x all use it, some without the trailing slash).
const ARTS_NAMESPACE: &[u8] = b"http://www.nrf-arts.org/IXRetail/namespace";
/// The most ARTS elements one transaction may have.
const MAX_NODES: usize = 20_000;
/// The most text one transaction may hold.
const MAX_TEXT_BYTES: usize = MAX_RECORD_BYTES;

/// One ARTS element of a transaction.
#[derive(Debug, Default)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Node>,
}

impl Node {
    fn children_named<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The trimmed text of the first child `name`, if it has any.
    fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim()).filter(|t| !t.is_empty())
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim())
    }

    /// A POSLog flag, written as an attribute or as a child element: `true` or `1`.
    fn flag(&self, name: &str) -> bool {
        self.attr(name).or_else(|| self.text_of(name)).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
    }
}

fn is_arts(ns: &ResolveResult<'_>) -> bool {
    match ns {
        ResolveResult::Unbound => true,
        ResolveResult::Bound(Namespace(uri)) => uri.starts_with(ARTS_NAMESPACE),
        ResolveResult::Unknown(_) => false,
    }
}

/// Where the reader is in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    BeforeRoot,
    InRoot,
    AfterRoot,
    Done,
}

/// The POSLog reader.
pub(crate) struct Records {
    reader: NsReader<Box<dyn BufRead + Send>>,
    buf: Vec<u8>,
    skip: Vec<u8>,
    ctx: Context,
    stage: Stage,
    /// Transactions met so far.
    ordinal: u64,
}

/// A read error, ready to be a fatal refusal.
fn xml_error(e: &quick_xml::Error, at: u64) -> Refusal {
    let place = Place { byte: Some(at), ..Place::default() };
    match e {
        quick_xml::Error::Io(io) => Refusal::new(place, "unreadable", format!("reading the file failed: {io}")),
        other => Refusal::new(place, "malformed_xml", format!("the XML is not well-formed: {other}")),
    }
}

impl Records {
    pub(crate) fn new(input: Box<dyn BufRead + Send>, ctx: Context) -> Records {
        let mut reader = NsReader::from_reader(input);
        reader.config_mut().check_end_names = true;
        Records { reader, buf: Vec::new(), skip: Vec::new(), ctx, stage: Stage::BeforeRoot, ordinal: 0 }
    }

    fn fatal(&mut self, refusal: Refusal) -> Option<Result<Item, Refusal>> {
        self.stage = Stage::Done;
        Some(Err(refusal))
    }

    /// Reads one transaction's ARTS elements, from just after its start tag to its end tag.
    fn capture(&mut self, start: Node) -> Result<Result<Node, Refusal>, quick_xml::Error> {
        let mut stack = vec![start];
        // Open elements being skipped: a foreign namespace, or past the size limits.
        let mut skipping = 0usize;
        let (mut nodes, mut text_bytes, mut too_large) = (1usize, 0usize, false);
        loop {
            self.buf.clear();
            let (ns, event) = self.reader.read_resolved_event_into(&mut self.buf)?;
            match event {
                Event::Start(e) => {
                    if skipping > 0 || !is_arts(&ns) || too_large {
                        skipping += 1;
                        continue;
                    }
                    nodes += 1;
                    too_large |= nodes > MAX_NODES;
                    if too_large {
                        skipping += 1;
                        continue;
                    }
                    let node = element(&e, &self.reader)?;
                    stack.push(node);
                }
                Event::Empty(e) => {
                    if skipping > 0 || !is_arts(&ns) || too_large {
                        continue;
                    }
                    nodes += 1;
                    too_large |= nodes > MAX_NODES;
                    let node = element(&e, &self.reader)?;
                    if let Some(top) = stack.last_mut() {
                        top.children.push(node);
                    }
                }
                Event::End(_) => {
                    if skipping > 0 {
                        skipping -= 1;
                        continue;
                    }
                    let Some(done) = stack.pop() else { continue };
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None if too_large => {
                            return Ok(Err(Refusal::new(
                                Place::default(),
                                "record_too_large",
                                format!(
                                    "the transaction has more than {MAX_NODES} elements or {MAX_TEXT_BYTES} bytes of text"
                                ),
                            )));
                        }
                        None => return Ok(Ok(done)),
                    }
                }
                Event::Text(t) if skipping == 0 => {
                    let s = t.xml10_content().map_err(quick_xml::Error::from)?;
                    push_text(&mut stack, &s, &mut text_bytes, &mut too_large);
                }
                Event::CData(t) if skipping == 0 => {
                    let s = t.decode().map_err(quick_xml::Error::from)?;
                    push_text(&mut stack, &s, &mut text_bytes, &mut too_large);
                }
                Event::GeneralRef(r) if skipping == 0 => {
                    let s = match r.resolve_char_ref()? {
                        Some(c) => c.to_string(),
                        None => {
                            let name = r.decode().map_err(quick_xml::Error::from)?;
                            match quick_xml::escape::resolve_predefined_entity(&name) {
                                Some(s) => s.to_owned(),
                                None => {
                                    return Err(quick_xml::Error::Escape(
                                        quick_xml::escape::EscapeError::UnrecognizedEntity(0..0, name.into_owned()),
                                    ));
                                }
                            }
                        }
                    };
                    push_text(&mut stack, &s, &mut text_bytes, &mut too_large);
                }
                Event::Eof => {
                    let inside = stack.last().map(|n| n.name.clone()).unwrap_or_default();
                    return Err(quick_xml::Error::IllFormed(quick_xml::errors::IllFormedError::MissingEndTag(inside)));
                }
                _ => {}
            }
        }
    }

    fn read_item(&mut self) -> Option<Result<Item, Refusal>> {
        loop {
            if self.stage == Stage::Done {
                return None;
            }
            let at = self.reader.buffer_position();
            self.buf.clear();
            let (ns, event) = match self.reader.read_resolved_event_into(&mut self.buf) {
                Ok(x) => x,
                Err(e) => {
                    let at = self.reader.error_position();
                    return self.fatal(xml_error(&e, at));
                }
            };
            let arts = is_arts(&ns);
            match event {
                Event::Start(e) => {
                    let local = e.local_name().as_ref().to_vec();
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    let node = match element(&e, &self.reader) {
                        Ok(n) => n,
                        Err(err) => return self.fatal(xml_error(&err, at)),
                    };
                    match self.stage {
                        Stage::BeforeRoot if arts && local == b"POSLog" => self.stage = Stage::InRoot,
                        Stage::BeforeRoot | Stage::InRoot if arts && local == b"Transaction" => {
                            // A bare <Transaction> root is one transaction in a file of its own.
                            if self.stage == Stage::BeforeRoot {
                                self.stage = Stage::AfterRoot;
                            }
                            return Some(self.transaction(node, at));
                        }
                        Stage::BeforeRoot => {
                            let detail = format!("the root element is <{name}>, not an ARTS <POSLog> or <Transaction>");
                            return self.fatal(Refusal::new(Place::default(), "not_poslog", detail));
                        }
                        Stage::InRoot => {
                            // Not a transaction (a vendor header, an extension): skip it whole.
                            let end = e.name().as_ref().to_vec();
                            self.skip.clear();
                            if let Err(err) = self.reader.read_to_end_into(QName(&end), &mut self.skip) {
                                let at = self.reader.error_position();
                                return self.fatal(xml_error(&err, at));
                            }
                        }
                        Stage::AfterRoot | Stage::Done => {
                            let detail = format!("element <{name}> after the end of the document");
                            return self.fatal(Refusal::new(
                                Place { byte: Some(at), ..Place::default() },
                                "malformed_xml",
                                detail,
                            ));
                        }
                    }
                }
                Event::Empty(e) => {
                    let local = e.local_name().as_ref().to_vec();
                    match self.stage {
                        Stage::BeforeRoot if arts && local == b"POSLog" => self.stage = Stage::AfterRoot,
                        Stage::InRoot if arts && local == b"Transaction" => {
                            self.ordinal += 1;
                            let place = Place {
                                byte: Some(at),
                                record: Some(format!("transaction {}", self.ordinal)),
                                ..Place::default()
                            };
                            return Some(Ok(Item::Skipped { place, why: "an empty Transaction element".into() }));
                        }
                        Stage::InRoot => {}
                        Stage::BeforeRoot => {
                            let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                            let detail = format!("the root element is <{name}/>, not an ARTS <POSLog>");
                            return self.fatal(Refusal::new(Place::default(), "not_poslog", detail));
                        }
                        Stage::AfterRoot | Stage::Done => {
                            let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                            let detail = format!("element <{name}/> after the end of the document");
                            let place = Place { byte: Some(at), ..Place::default() };
                            return self.fatal(Refusal::new(place, "malformed_xml", detail));
                        }
                    }
                }
                Event::End(_) => self.stage = Stage::AfterRoot,
                Event::Eof => {
                    let stage = self.stage;
                    self.stage = Stage::Done;
                    return match stage {
                        Stage::BeforeRoot => {
                            Some(Err(Refusal::new(Place::default(), "not_poslog", "the file holds no XML element")))
                        }
                        Stage::InRoot => Some(Err(Refusal::new(
                            Place { byte: Some(at), ..Place::default() },
                            "malformed_xml",
                            "the file ends before </POSLog>: it is cut short",
                        ))),
                        _ => None,
                    };
                }
                _ => {}
            }
        }
    }

    /// Reads the rest of a transaction and maps it.
    fn transaction(&mut self, start: Node, at: u64) -> Result<Item, Refusal> {
        self.ordinal += 1;
        match self.capture(start) {
            Ok(Ok(node)) => Ok(map_transaction(&node, at, self.ordinal, &self.ctx)),
            Ok(Err(refusal)) => Ok(Item::Refused(Refusal {
                place: Place { byte: Some(at), record: Some(format!("transaction {}", self.ordinal)), line: None },
                ..refusal
            })),
            Err(e) => {
                self.stage = Stage::Done;
                let at = self.reader.error_position();
                Err(xml_error(&e, at))
            }
        }
    }
}

impl Iterator for Records {
    type Item = Result<Item, Refusal>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read_item()
    }
}

fn push_text(stack: &mut [Node], s: &str, text_bytes: &mut usize, too_large: &mut bool) {
    *text_bytes += s.len();
    if *text_bytes > MAX_TEXT_BYTES {
        *too_large = true;
        return;
    }
    if let Some(top) = stack.last_mut() {
        top.text.push_str(s);
    }
}

/// An element's local name and its attributes (namespace declarations left out; names without their prefix).
fn element<R>(e: &BytesStart<'_>, reader: &NsReader<R>) -> Result<Node, quick_xml::Error> {
    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(quick_xml::Error::InvalidAttr)?;
        if a.key.as_namespace_binding().is_some() {
            continue;
        }
        let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
        let value = a.decode_and_unescape_value(reader.decoder())?.into_owned();
        attrs.push((key, value));
    }
    Ok(Node { name, attrs, text: String::new(), children: Vec::new() })
}

/// Why a transaction could not be mapped.
type Refused = (&'static str, String);

/// The ARTS key of a transaction: (store, workstation, business day, sequence), if it has one.
fn arts_key(t: &Node) -> Option<[String; 4]> {
    let store = t.text_of("RetailStoreID").unwrap_or_default().to_owned();
    Some([
        store,
        t.text_of("WorkstationID")?.to_owned(),
        t.text_of("BusinessDayDate")?.to_owned(),
        t.text_of("SequenceNumber")?.to_owned(),
    ])
}

/// The event id of the transaction with this ARTS key.
fn key_id(key: &[String; 4]) -> uuid::Uuid {
    derived_id(&["poslog", &key[0], &key[1], &key[2], &key[3]])
}

/// One `Transaction` to an item.
fn map_transaction(t: &Node, at: u64, ordinal: u64, ctx: &Context) -> Item {
    let key = arts_key(t);
    let record = match &key {
        Some([_, ws, day, seq]) => format!("{ws}/{day}/{seq}"),
        None => format!("transaction {ordinal}"),
    };
    let place = Place { line: None, byte: Some(at), record: Some(record) };
    let skipped = |why: &str| Item::Skipped { place: place.clone(), why: why.to_owned() };
    if t.flag("CancelFlag") {
        return skipped("cancelled (CancelFlag)");
    }
    if t.flag("TrainingModeFlag") {
        return skipped("a training-mode transaction (TrainingModeFlag)");
    }
    let Some(rt) = t.child("RetailTransaction") else {
        let what = t.children.iter().map(|c| c.name.as_str()).find(|n| n.ends_with("Transaction"));
        return skipped(&format!("not a RetailTransaction ({})", what.unwrap_or("no transaction body")));
    };
    let status = rt.attr("TransactionStatus").or_else(|| rt.text_of("TransactionStatus")).unwrap_or("");
    if ["voided", "canceled", "cancelled", "suspended"].iter().any(|s| status.eq_ignore_ascii_case(s)) {
        return skipped(&format!("TransactionStatus {status}"));
    }
    match body_of(t, rt, key.as_ref(), ctx) {
        Ok(None) => skipped("no line items left (every line voided)"),
        Ok(Some((ty, body))) => checked(ty, body, place, |b| match &key {
            Some(k) => key_id(k),
            None => derived_id(&["poslog-ordinal", &ordinal.to_string(), &body_digest(b)]),
        }),
        Err((code, detail)) => Item::Refused(Refusal::new(place, code, detail)),
    }
}

/// The POST body of a retail transaction, or `None` when every line item was voided.
fn body_of(
    t: &Node,
    rt: &Node,
    key: Option<&[String; 4]>,
    ctx: &Context,
) -> Result<Option<(BodyType, Value)>, Refused> {
    let currency = t
        .text_of("CurrencyCode")
        .or_else(|| rt.text_of("CurrencyCode"))
        .map(str::to_owned)
        .or_else(|| ctx.currency.clone())
        .ok_or(("missing_currency", "the transaction has no CurrencyCode and inbox_currency is not set".to_owned()))?;
    let occurred_at = t
        .text_of("EndDateTime")
        .or_else(|| t.text_of("BeginDateTime"))
        .ok_or(("invalid_occurred_at", "the transaction has neither EndDateTime nor BeginDateTime".to_owned()))?;
    let (mut sales, mut returns, mut tenders) = (Vec::new(), Vec::new(), Vec::new());
    let (mut total, mut reason) = (0i64, None);
    for (i, li) in rt.children_named("LineItem").enumerate() {
        if li.flag("VoidFlag") {
            continue;
        }
        let n = i + 1;
        if let Some(item) = li.child("Sale") {
            let (line, net) = line_of(item, &currency, false).map_err(|(c, d)| (c, format!("LineItem {n}: {d}")))?;
            total = total.checked_add(net).ok_or(overflow())?;
            sales.push(line);
        } else if let Some(item) = li.child("Return") {
            let (line, net) = line_of(item, &currency, true).map_err(|(c, d)| (c, format!("LineItem {n}: {d}")))?;
            total = total.checked_add(net).ok_or(overflow())?;
            reason = reason.or_else(|| item.text_of("Reason").or_else(|| item.attr("ReasonCode")).map(str::to_owned));
            returns.push(line);
        } else if let Some(tender) = li.child("Tender")
            && let Some(t) = tender_of(tender, &currency).map_err(|(c, d)| (c, format!("LineItem {n}: {d}")))?
        {
            tenders.push(t);
        }
        // Tax and other line items carry no stock or money of their own here: canonical prices include tax,
        // and the Total check below catches an export whose money does not add up that way.
    }
    let ty = match (sales.is_empty(), returns.is_empty()) {
        (false, false) => {
            return Err((
                "unsupported_transaction",
                "the transaction has both Sale and Return line items (an exchange); journal the sale and the return \
                 as two transactions"
                    .into(),
            ));
        }
        (false, true) => BodyType::Sale,
        (true, false) => BodyType::Return,
        (true, true) if tenders.is_empty() => return Ok(None),
        (true, true) => return Err(("no_lines", "the transaction has tenders but no Sale or Return line".into())),
    };
    for grand in rt.children_named("Total").filter(|n| n.attr("TotalType") == Some("TransactionGrandAmount")) {
        let stated = to_minor(grand.text.trim(), &currency, "Total").map_err(|e| (e.code, e.detail))?.abs();
        if stated != total {
            return Err((
                "total_mismatch",
                format!(
                    "Total TransactionGrandAmount is {stated} minor units but the line items add up to {total} \
                     (canonical prices include tax; is tax added on top?)"
                ),
            ));
        }
    }
    let mut body = Map::new();
    body.insert("occurred_at".into(), json!(occurred_at));
    body.insert("currency".into(), json!(currency));
    if let Some(customer) = rt.child("Customer").and_then(|c| c.text_of("CustomerID")) {
        body.insert("customer_id".into(), json!(customer));
    }
    if ty == BodyType::Sale {
        body.insert("lines".into(), Value::Array(sales));
        body.insert("payments".into(), Value::Array(tenders));
    } else {
        body.insert("lines".into(), Value::Array(returns));
        body.insert("refunds".into(), Value::Array(tenders));
        body.insert("reason".into(), json!(reason.unwrap_or_else(|| "returned at the till (POSLog)".into())));
        if let Some(original) = rt.child("TransactionLink").and_then(|link| linked_key(link, key)) {
            body.insert("original_event_id".into(), json!(key_id(&original)));
        }
    }
    Ok(Some((ty, Value::Object(body))))
}

fn overflow() -> Refused {
    ("amount_overflow", "the line items overflow a 64-bit amount of minor units".into())
}

/// The ARTS key a `TransactionLink` points to (its store defaults to this transaction's).
fn linked_key(link: &Node, own: Option<&[String; 4]>) -> Option<[String; 4]> {
    let store = link.text_of("RetailStoreID").map(str::to_owned).or_else(|| own.map(|k| k[0].clone()))?;
    Some([
        store,
        link.text_of("WorkstationID")?.to_owned(),
        link.text_of("BusinessDayDate")?.to_owned(),
        link.text_of("SequenceNumber")?.to_owned(),
    ])
}

/// A `Sale` or `Return` item to a canonical line and its net amount. Return amounts are taken as positive
/// whichever sign the export writes them with.
fn line_of(item: &Node, currency: &str, is_return: bool) -> Result<(Value, i64), Refused> {
    let amount = |field: &str| -> Result<Option<i64>, Refused> {
        item.text_of(field)
            .map(|t| to_minor(t, currency, field).map(|v| if is_return { v.abs() } else { v }))
            .transpose()
            .map_err(|e| (e.code, e.detail))
    };
    let sku = item
        .text_of("ItemID")
        .or_else(|| item.child("POSIdentity").and_then(|p| p.text_of("POSItemID")))
        .ok_or(("invalid_sku", "the item has no ItemID".to_owned()))?;
    let qty =
        item.text_of("Quantity").map_or(Ok(1), |q| whole_quantity(q, "Quantity")).map_err(|e| (e.code, e.detail))?;
    let qty = if is_return { qty.abs() } else { qty };
    let actual = amount("ActualSalesUnitPrice")?;
    let unit = amount("RegularSalesUnitPrice")?
        .or(actual)
        .ok_or(("invalid_amount", "the item has neither RegularSalesUnitPrice nor ActualSalesUnitPrice".to_owned()))?;
    let mut modifiers = 0i64;
    for m in item.children_named("RetailPriceModifier") {
        let action = m.attr("Action").or_else(|| m.child("Amount").and_then(|a| a.attr("Action")));
        if action.is_some_and(|a| !a.eq_ignore_ascii_case("subtract")) {
            return Err(("unsupported_modifier", "a RetailPriceModifier that adds to the price".into()));
        }
        let a = m.text_of("Amount").map(|t| to_minor(t, currency, "RetailPriceModifier/Amount")).transpose();
        modifiers = modifiers.checked_add(a.map_err(|e| (e.code, e.detail))?.unwrap_or(0).abs()).ok_or(overflow())?;
    }
    let gross = qty.checked_mul(unit).ok_or(overflow())?;
    let base = match (amount("ExtendedAmount")?, actual) {
        (Some(ext), _) => ext,
        (None, Some(actual)) => qty.checked_mul(actual).ok_or(overflow())?,
        (None, None) => gross,
    };
    let net = match amount("ExtendedDiscountAmount")? {
        Some(net) => net,
        None => base.checked_sub(modifiers).ok_or(overflow())?,
    };
    let discount = gross.checked_sub(net).ok_or(overflow())?;
    if discount < 0 {
        return Err((
            "amount_mismatch",
            format!("the item's amount ({net} minor units) exceeds Quantity × unit price ({gross})"),
        ));
    }
    let line = json!({"sku": sku, "qty": qty, "unit_price_minor": unit, "discount_minor": discount});
    Ok((line, net))
}

/// A `Tender` to a canonical payment or refund: its amount less any change given; `None` when that is nothing.
fn tender_of(tender: &Node, currency: &str) -> Result<Option<Value>, Refused> {
    let method = tender
        .attr("TenderType")
        .filter(|m| !m.is_empty())
        .or_else(|| tender.text_of("TenderID"))
        .ok_or(("invalid_text", "the Tender has no TenderType or TenderID".to_owned()))?;
    let amount = tender.text_of("Amount").ok_or(("invalid_amount", "the Tender has no Amount".to_owned()))?;
    let amount = to_minor(amount, currency, "Tender/Amount").map_err(|e| (e.code, e.detail))?.abs();
    let change = match tender.child("TenderChange").and_then(|c| c.text_of("Amount")) {
        Some(c) => to_minor(c, currency, "TenderChange/Amount").map_err(|e| (e.code, e.detail))?.abs(),
        None => 0,
    };
    let net = amount - change; // both non-negative: cannot overflow
    if net < 0 {
        return Err(("invalid_amount", format!("the change given ({change}) exceeds the tender ({amount})")));
    }
    Ok((net > 0).then(|| json!({"method": method, "amount_minor": net})))
}

#[cfg(test)]
mod tests {
    use storesync_shared::{EventBody, EventKind};

    use super::*;
    use crate::inbox::record::Record;

    fn read(bytes: &[u8], currency: Option<&str>) -> Vec<Result<Item, Refusal>> {
        let ctx = Context { currency: currency.map(str::to_owned) };
        Records::new(Box::new(std::io::Cursor::new(bytes.to_vec())), ctx).collect()
    }

    fn records(items: &[Result<Item, Refusal>]) -> Vec<&Record> {
        items.iter().filter_map(|i| if let Ok(Item::Record(r)) = i { Some(r) } else { None }).collect()
    }

    fn skipped(items: &[Result<Item, Refusal>]) -> Vec<String> {
        items
            .iter()
            .filter_map(|i| if let Ok(Item::Skipped { why, .. }) = i { Some(why.clone()) } else { None })
            .collect()
    }

    fn refusals(items: &[Result<Item, Refusal>]) -> Vec<(&'static str, Option<String>)> {
        items
            .iter()
            .filter_map(|i| match i {
                Ok(Item::Refused(r)) | Err(r) => Some((r.code, r.place.record.clone())),
                _ => None,
            })
            .collect()
    }

    const HOURLY: &[u8] = include_bytes!("../../../tests/fixtures/poslog/tlog-S001-ws3-20261126-14.xml");
    const EOD_1252: &[u8] = include_bytes!("../../../tests/fixtures/poslog/tlog-S001-ws5-20261126-eod.xml");
    const SINGLE: &[u8] = include_bytes!("../../../tests/fixtures/poslog/txn-S001-ws3-4716.xml");
    const BAD: &[u8] = include_bytes!("../../../tests/fixtures/poslog/bad/tax-exclusive-and-fractional.xml");
    const CUT: &[u8] = include_bytes!("../../../tests/fixtures/poslog/bad/cut-short.xml");

    fn value(body: &EventBody) -> Value {
        body.to_value()
    }

    #[test]
    fn the_hourly_tlog_maps_sales_returns_tenders_and_skips() {
        let items = read(HOURLY, None);
        assert_eq!(refusals(&items), vec![]);
        let rs = records(&items);
        assert_eq!(rs.len(), 3);
        assert_eq!(
            rs.iter().map(|r| r.place.record.clone().unwrap()).collect::<Vec<_>>(),
            ["3/2026-11-26/4711", "3/2026-11-26/4712", "3/2026-11-26/4715"]
        );
        let sale = value(&rs[0].body);
        assert_eq!(rs[0].body.kind(), EventKind::Sale);
        assert_eq!(sale["occurred_at"], "2026-11-26T14:05:02.480+01:00");
        assert_eq!(sale["currency"], "EUR");
        assert_eq!(sale["customer_id"], "LOY-000123");
        assert_eq!(
            sale["lines"],
            json!([
                {"sku": "4006381333931", "qty": 2, "unit_price_minor": 249, "discount_minor": 0},
                {"sku": "COFFEE-1KG", "qty": 1, "unit_price_minor": 1290, "discount_minor": 129}
            ])
        );
        assert_eq!(
            sale["payments"],
            json!([{"method": "CreditDebit", "amount_minor": 1000}, {"method": "Cash", "amount_minor": 659}])
        );
        // The voided line is left out.
        assert_eq!(
            value(&rs[1].body)["lines"],
            json!([{"sku": "MILK-1L", "qty": 3, "unit_price_minor": 119, "discount_minor": 0}])
        );
        // The return: positive amounts whatever the export's signs, linked to the sale's event id.
        assert_eq!(rs[2].body.kind(), EventKind::Return);
        let ret = value(&rs[2].body);
        assert_eq!(
            ret["lines"],
            json!([{"sku": "COFFEE-1KG", "qty": 1, "unit_price_minor": 1290, "discount_minor": 129}])
        );
        assert_eq!(ret["refunds"], json!([{"method": "Cash", "amount_minor": 1161}]));
        assert_eq!(ret["reason"], "Damaged packaging");
        assert_eq!(ret["original_event_id"], json!(rs[0].event_id));
        assert_eq!(skipped(&items).len(), 2, "{:?}", skipped(&items));
        assert!(skipped(&items).iter().any(|s| s.contains("ControlTransaction")));
        assert!(skipped(&items).iter().any(|s| s.contains("CancelFlag")));
    }

    #[test]
    fn ids_are_the_arts_transaction_key() {
        let a = read(HOURLY, None);
        let b = read(HOURLY, None);
        let ids = |items: &[Result<Item, Refusal>]| records(items).iter().map(|r| r.event_id).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        let key = ["S001", "3", "2026-11-26", "4711"].map(str::to_owned);
        assert_eq!(ids(&a)[0], key_id(&key));
        // The same transaction in another file (here: alone, without the others) keeps its id.
        let start = std::str::from_utf8(HOURLY).unwrap().find("<Transaction>").unwrap();
        let end = std::str::from_utf8(HOURLY).unwrap().find("</Transaction>").unwrap() + "</Transaction>".len();
        let alone = format!(
            "<POSLog xmlns=\"http://www.nrf-arts.org/IXRetail/namespace/\">{}</POSLog>",
            &std::str::from_utf8(HOURLY).unwrap()[start..end]
        );
        assert_eq!(ids(&read(alone.as_bytes(), None)), vec![ids(&a)[0]]);
    }

    #[test]
    fn a_prefixed_windows_1252_export_with_three_tenders() {
        let items = read(EOD_1252, None);
        assert_eq!(refusals(&items), vec![]);
        let rs = records(&items);
        assert_eq!(rs.len(), 2);
        let sale = value(&rs[0].body);
        assert_eq!(
            sale["lines"],
            json!([
                {"sku": "SHIRT-M-BLUE", "qty": 2, "unit_price_minor": 2999, "discount_minor": 2000},
                {"sku": "5012345678900", "qty": 3, "unit_price_minor": 349, "discount_minor": 0}
            ])
        );
        assert_eq!(
            sale["payments"],
            json!([
                {"method": "GiftCard", "amount_minor": 2500},
                {"method": "CreditDebit", "amount_minor": 2000},
                {"method": "Cash", "amount_minor": 545}
            ])
        );
        assert_eq!(value(&rs[1].body)["occurred_at"], "2026-11-26T17:15:30Z");
        assert_eq!(skipped(&items), ["a training-mode transaction (TrainingModeFlag)"]);
    }

    #[test]
    fn a_bare_transaction_root_takes_the_configured_currency() {
        let items = read(SINGLE, Some("EUR"));
        let rs = records(&items);
        assert_eq!(rs.len(), 1);
        assert_eq!(value(&rs[0].body)["currency"], "EUR");
        assert_eq!(refusals(&read(SINGLE, None)), [("missing_currency", Some("3/2026-11-26/4716".into()))]);
    }

    #[test]
    fn refused_transactions_name_their_key_and_reason() {
        let items = read(BAD, None);
        assert_eq!(records(&items).len(), 1);
        assert_eq!(
            refusals(&items),
            [("total_mismatch", Some("7/2026-11-27/88".into())), ("invalid_amount", Some("7/2026-11-27/89".into()))]
        );
    }

    #[test]
    fn a_file_cut_short_is_a_fatal_error_after_what_it_had() {
        let items = read(CUT, None);
        assert!(matches!(items.last(), Some(Err(r)) if r.code == "malformed_xml"), "{items:?}");
    }

    /// One table-driven check: a transaction body (inside RetailTransaction) and the refusal code it must get.
    fn check(inner: &str, code: &str) {
        let xml = format!(
            "<POSLog xmlns=\"http://www.nrf-arts.org/IXRetail/namespace/\"><Transaction>\
             <WorkstationID>1</WorkstationID><SequenceNumber>1</SequenceNumber>\
             <BusinessDayDate>2026-11-26</BusinessDayDate><EndDateTime>2026-11-26T10:00:00Z</EndDateTime>\
             <CurrencyCode>EUR</CurrencyCode><RetailTransaction>{inner}</RetailTransaction></Transaction></POSLog>"
        );
        let items = read(xml.as_bytes(), None);
        let got: Vec<_> = refusals(&items).into_iter().map(|(c, _)| c).collect();
        assert_eq!(got, [code], "{inner}: {items:?}");
    }

    const CASH_1: &str = "<LineItem><Tender TenderType=\"Cash\"><Amount>1.00</Amount></Tender></LineItem>";

    #[test]
    fn bad_transactions_are_refused_precisely() {
        let sale = |item: &str| format!("<LineItem><Sale>{item}</Sale></LineItem>{CASH_1}");
        check(&sale("<RegularSalesUnitPrice>1.00</RegularSalesUnitPrice>"), "invalid_sku");
        check(&sale("<ItemID>A</ItemID>"), "invalid_amount");
        check(&sale("<ItemID>A</ItemID><RegularSalesUnitPrice>1.005</RegularSalesUnitPrice>"), "invalid_amount");
        check(
            &sale("<ItemID>A</ItemID><RegularSalesUnitPrice>1.00</RegularSalesUnitPrice><Quantity>0.5</Quantity>"),
            "invalid_qty",
        );
        check(
            &sale("<ItemID>A</ItemID><RegularSalesUnitPrice>1.00</RegularSalesUnitPrice><Quantity>0</Quantity>"),
            "invalid_qty",
        );
        check(
            &sale(
                "<ItemID>A</ItemID><RegularSalesUnitPrice>1.00</RegularSalesUnitPrice><ExtendedAmount>2.00</ExtendedAmount>",
            ),
            "amount_mismatch",
        );
        check(&sale("<ItemID>A</ItemID><RegularSalesUnitPrice>2.00</RegularSalesUnitPrice>"), "tender_mismatch");
        check(
            &format!(
                "<LineItem><Sale><ItemID>A</ItemID><RegularSalesUnitPrice>1.00</RegularSalesUnitPrice></Sale></LineItem>\
                 <LineItem><Return><ItemID>B</ItemID><RegularSalesUnitPrice>1.00</RegularSalesUnitPrice></Return></LineItem>{CASH_1}"
            ),
            "unsupported_transaction",
        );
        check(CASH_1, "no_lines");
        check(
            &sale(
                "<ItemID>A</ItemID><RegularSalesUnitPrice>1.00</RegularSalesUnitPrice><RetailPriceModifier><Amount Action=\"Add\">0.10</Amount></RetailPriceModifier>",
            ),
            "unsupported_modifier",
        );
        check(
            "<LineItem><Sale><ItemID>A</ItemID><RegularSalesUnitPrice>1.00</RegularSalesUnitPrice></Sale></LineItem><LineItem><Tender><Amount>1.00</Amount></Tender></LineItem>",
            "invalid_text",
        );
        check(
            "<LineItem><Sale><ItemID>A</ItemID><RegularSalesUnitPrice>1.00</RegularSalesUnitPrice></Sale></LineItem><LineItem><Tender TenderType=\"Cash\"><Amount>1.00</Amount><TenderChange><Amount>2.00</Amount></TenderChange></Tender></LineItem>",
            "invalid_amount",
        );
    }

    #[test]
    fn documents_that_are_not_poslog_are_fatal() {
        for (xml, code) in [
            ("", "not_poslog"),
            ("<Invoice/>", "not_poslog"),
            ("<Invoice><Transaction/></Invoice>", "not_poslog"),
            ("<POSLog><Transaction>", "malformed_xml"),
            ("<POSLog><Transaction></POSLog>", "malformed_xml"),
            ("<POSLog></POSLog><POSLog/>", "malformed_xml"),
            ("<POSLog><Transaction><RetailStoreID>&bogus;</RetailStoreID></Transaction></POSLog>", "malformed_xml"),
            ("<p:POSLog xmlns:p=\"urn:not-arts\"/>", "not_poslog"),
        ] {
            let items = read(xml.as_bytes(), None);
            assert!(matches!(items.last(), Some(Err(r)) if r.code == code), "{xml}: {items:?}");
        }
        // An empty POSLog is a valid file with nothing in it.
        assert!(read(b"<POSLog xmlns=\"http://www.nrf-arts.org/IXRetail/namespace/\"/>", None).is_empty());
    }

    #[test]
    fn a_transaction_too_large_is_refused_and_the_next_one_read() {
        let big = "<LineItem><Tax/></LineItem>".repeat(MAX_NODES);
        let xml = format!(
            "<POSLog><Transaction><RetailTransaction>{big}</RetailTransaction></Transaction>\
             <Transaction><WorkstationID>1</WorkstationID><SequenceNumber>2</SequenceNumber>\
             <BusinessDayDate>2026-11-26</BusinessDayDate><EndDateTime>2026-11-26T10:00:00Z</EndDateTime>\
             <CurrencyCode>EUR</CurrencyCode><RetailTransaction>\
             <LineItem><Sale><ItemID>A</ItemID><RegularSalesUnitPrice>1</RegularSalesUnitPrice></Sale></LineItem>\
             {CASH_1}</RetailTransaction></Transaction></POSLog>"
        );
        let items = read(xml.as_bytes(), None);
        assert_eq!(refusals(&items), [("record_too_large", Some("transaction 1".into()))]);
        assert_eq!(records(&items).len(), 1);
    }
}
