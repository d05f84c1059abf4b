//! JSON Lines: one canonical event per line, `{"kind": "sale", ...}` with the fields of the matching POST body
//! (`event_id` optional). Blank lines are skipped; a UTF-8 byte-order mark at the start is ignored.
//!
//! A line's event id is its own `event_id`, or UUIDv5 of ("jsonl", line number, SHA-256 of the canonical body).

use std::io::BufRead;

use serde_json::{Value, json};
use storesync_shared::EventKind;
use storesync_shared::event::BodyType;

use super::record::{Item, MAX_RECORD_BYTES, Place, Refusal, body_digest, checked, derived_id, read_line_bounded};

/// The JSON Lines reader.
pub(crate) struct Records {
    input: Box<dyn BufRead + Send>,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl Records {
    pub(crate) fn new(input: Box<dyn BufRead + Send>) -> Records {
        Records { input, line: 0, buf: Vec::new(), done: false }
    }
}

impl Iterator for Records {
    type Item = Result<Item, Refusal>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let too_long = match read_line_bounded(&mut *self.input, &mut self.buf, MAX_RECORD_BYTES) {
                Ok(Some(too_long)) => too_long,
                Ok(None) => break,
                Err(e) => {
                    self.done = true;
                    let place = Place::line(self.line + 1);
                    return Some(Err(Refusal::new(place, "unreadable", format!("reading the file failed: {e}"))));
                }
            };
            self.line += 1;
            let place = Place::line(self.line);
            if too_long {
                let detail = format!("the line is longer than {MAX_RECORD_BYTES} bytes");
                return Some(Ok(Item::Refused(Refusal::new(place, "record_too_large", detail))));
            }
            let text = match self.buf.strip_prefix(b"\xEF\xBB\xBF") {
                Some(rest) if self.line == 1 => rest,
                _ => &self.buf[..],
            };
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(Ok(parse_line(text, self.line)));
        }
        self.done = true;
        None
    }
}

fn refused(line: u64, code: &'static str, detail: impl Into<String>) -> Item {
    Item::Refused(Refusal::new(Place::line(line), code, detail))
}

/// One line to a record: `kind` picks the body type, the rest is the POST body.
fn parse_line(text: &[u8], line: u64) -> Item {
    let value: Value = match serde_json::from_slice(text) {
        Ok(v) => v,
        Err(e) => return refused(line, "malformed_json", format!("the line is not valid JSON: {e}")),
    };
    let Value::Object(mut map) = value else {
        return refused(line, "invalid_body", "a line must be a JSON object");
    };
    let kind = match map.remove("kind") {
        Some(Value::String(k)) => k,
        Some(_) => return refused(line, "unknown_kind", "kind must be a string"),
        None => {
            return refused(
                line,
                "missing_kind",
                "every line needs \"kind\": sale, return, void, transfer_out, transfer_in or adjustment",
            );
        }
    };
    let Some(kind) = EventKind::parse(&kind) else {
        return refused(
            line,
            "unknown_kind",
            format!("kind {kind:?} is not one of sale, return, void, transfer_out, transfer_in, adjustment"),
        );
    };
    // A transfer's kind says its direction; a body may repeat it, but not contradict it (checked below).
    match kind {
        EventKind::TransferOut => drop(map.entry("direction").or_insert(json!("out"))),
        EventKind::TransferIn => drop(map.entry("direction").or_insert(json!("in"))),
        _ => {}
    }
    let line_text = line.to_string();
    match checked(BodyType::for_kind(kind), Value::Object(map), Place::line(line), |body| {
        derived_id(&["jsonl", &line_text, &body_digest(body)])
    }) {
        Item::Record(r) if r.body.kind() != kind => refused(
            line,
            "kind_mismatch",
            format!("kind is {kind} but the body's direction makes it a {}", r.body.kind()),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Vec<Result<Item, Refusal>> {
        Records::new(Box::new(std::io::Cursor::new(text.as_bytes().to_vec()))).collect()
    }

    const SALE: &str = r#"{"kind":"sale","occurred_at":"2026-11-26T14:05:00+01:00","currency":"EUR","lines":[{"sku":"A","qty":2,"unit_price_minor":250}],"payments":[{"method":"card","amount_minor":500}]}"#;

    fn record(item: &Result<Item, Refusal>) -> &super::super::record::Record {
        match item {
            Ok(Item::Record(r)) => r,
            other => panic!("not a record: {other:?}"),
        }
    }

    /// One table-driven check: a line, and the refusal code it must get.
    fn check(line: &str, code: &str) {
        let items = read(line);
        assert_eq!(items.len(), 1, "{line}");
        match &items[0] {
            Ok(Item::Refused(r)) => {
                assert_eq!(r.code, code, "{line}: {}", r.detail);
                assert_eq!(r.place.line, Some(1));
            }
            other => panic!("{line}: expected {code}, got {other:?}"),
        }
    }

    #[test]
    fn every_kind_reads_as_its_post_body() {
        let text = format!(
            "\u{feff}{SALE}\n\n\
             {{\"kind\":\"return\",\"occurred_at\":\"2026-11-26T15:00:00Z\",\"currency\":\"EUR\",\"reason\":\"faulty\",\
               \"lines\":[{{\"sku\":\"A\",\"qty\":1,\"unit_price_minor\":250}}],\
               \"refunds\":[{{\"method\":\"cash\",\"amount_minor\":250}}]}}\r\n\
             {{\"kind\":\"transfer_out\",\"occurred_at\":\"2026-11-26T15:00:00Z\",\"other_store\":\"S2\",\
               \"transfer_id\":\"TR-1\",\"lines\":[{{\"sku\":\"A\",\"qty\":3}}]}}\n\
             {{\"kind\":\"transfer_in\",\"direction\":\"in\",\"occurred_at\":\"2026-11-26T15:00:00Z\",\
               \"other_store\":\"S2\",\"transfer_id\":\"TR-2\",\"lines\":[{{\"sku\":\"A\",\"qty\":3}}]}}\n\
             {{\"kind\":\"adjustment\",\"occurred_at\":\"2026-11-26T15:00:00Z\",\"sku\":\"A\",\"delta\":-1,\
               \"reason\":\"damage\"}}\n\
             {{\"kind\":\"void\",\"event_id\":\"00000000-0000-4000-8000-000000000001\",\
               \"occurred_at\":\"2026-11-26T15:00:00Z\",\"voided_event_id\":\"00000000-0000-4000-8000-000000000002\",\
               \"reason\":\"mistake\"}}"
        );
        let items = read(&text);
        let kinds: Vec<(EventKind, Option<u64>)> = items
            .iter()
            .map(|i| {
                let r = record(i);
                (r.body.kind(), r.place.line)
            })
            .collect();
        use EventKind::*;
        assert_eq!(
            kinds,
            [
                (Sale, Some(1)),
                (Return, Some(3)),
                (TransferOut, Some(4)),
                (TransferIn, Some(5)),
                (Adjustment, Some(6)),
                (Void, Some(7))
            ]
        );
        assert_eq!(record(&items[5]).event_id.to_string(), "00000000-0000-4000-8000-000000000001");
    }

    #[test]
    fn ids_come_from_the_line_and_the_body_unless_the_line_has_one() {
        let twice = read(&format!("{SALE}\n{SALE}\n"));
        let again = read(&format!("{SALE}\n{SALE}\n"));
        let ids: Vec<_> = twice.iter().map(|i| record(i).event_id).collect();
        let ids_again: Vec<_> = again.iter().map(|i| record(i).event_id).collect();
        assert_eq!(ids, ids_again, "the same file gives the same ids");
        assert_ne!(ids[0], ids[1], "two equal lines are two events");
        // Key order and spacing do not change the id: it hashes the canonical body.
        let reordered = r#"{ "payments": [{"amount_minor": 500, "method": "card"}], "kind": "sale",
            "lines": [{"unit_price_minor": 250, "qty": 2, "sku": "A"}], "currency": "EUR",
            "occurred_at": "2026-11-26T14:05:00+01:00" }"#
            .replace('\n', " ");
        let r = read(&reordered);
        assert_eq!(record(&r[0]).event_id, ids[0]);
        // Appending lines to a file keeps the ids of the lines before.
        let longer = read(&format!("{SALE}\n{SALE}\n{SALE}\n"));
        assert_eq!(record(&longer[1]).event_id, ids[1]);
    }

    #[test]
    fn bad_lines_are_refused_with_the_api_codes() {
        check("{not json", "malformed_json");
        check("[1,2]", "invalid_body");
        check(r#"{"occurred_at":"2026-11-26T14:05:00Z"}"#, "missing_kind");
        check(r#"{"kind":"refund"}"#, "unknown_kind");
        check(r#"{"kind":7}"#, "unknown_kind");
        check(&SALE.replace(r#""qty":2"#, r#""qty":0"#), "invalid_qty");
        check(&SALE.replace("EUR", "XYZ"), "unknown_currency");
        check(&SALE.replace(r#""amount_minor":500"#, r#""amount_minor":499"#), "tender_mismatch");
        check(&SALE.replace(r#""kind":"sale","#, r#""kind":"sale","colour":"red","#), "invalid_body");
        check(&SALE.replace("+01:00", ""), "invalid_occurred_at");
        check(&SALE.replace(r#""kind":"sale","#, r#""kind":"sale","event_id":"nope","#), "invalid_event_id");
        check(
            r#"{"kind":"transfer_out","direction":"in","occurred_at":"2026-11-26T15:00:00Z","other_store":"S2","transfer_id":"T","lines":[{"sku":"A","qty":1}]}"#,
            "kind_mismatch",
        );
        let long = format!(r#"{{"kind":"sale","customer_id":"{}"}}"#, "x".repeat(MAX_RECORD_BYTES));
        check(&long, "record_too_large");
    }

    #[test]
    fn a_refused_line_does_not_stop_the_lines_after_it() {
        let items = read(&format!("{SALE}\nnot json\n{SALE}\n"));
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[1], Ok(Item::Refused(r)) if r.place.line == Some(2)));
        assert_eq!(record(&items[2]).place.line, Some(3));
    }
}
