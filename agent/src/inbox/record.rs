//! What the three format readers produce, and how a record's event id is made.
//!
//! Each reader is an iterator over one file: every item is a canonical event ready to journal, a refused record
//! (with its place in the file and why), or a skipped entry (a cancelled or training POSLog transaction). An `Err`
//! item is fatal: the rest of the file cannot be read (an XML syntax error, a CSV header that names no known
//! column, an I/O error), and the iterator ends after it.
//!
//! Every body goes through [`storesync_shared::event::parse_request_value`], the function the POS API's POST
//! handlers call, so a file record is held to exactly the rules of a POST.

use std::fmt;
use std::io::BufRead;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use storesync_shared::EventBody;
use storesync_shared::event::{BodyType, parse_request_value};
use uuid::Uuid;

/// The UUIDv5 namespace of event ids made for drop-file records (a fixed random UUID; changing it would journal
/// every file dropped again a second time).
pub(crate) const NAMESPACE: Uuid = Uuid::from_u128(0x71e2_3303_07e3_4726_9a7c_03f9_a7eb_9e17);

/// The longest line (JSON Lines) or record text the readers hold: the POS API's own body limit.
pub(crate) const MAX_RECORD_BYTES: usize = crate::api::MAX_BODY_BYTES;

/// Where a record sits in its file, for reports: a line (JSON Lines, CSV), a byte offset (POSLog) and the
/// record's own id where it has one (a CSV transaction id, a POSLog transaction's workstation/day/sequence).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Place {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub byte: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
}

impl Place {
    pub(crate) fn line(line: u64) -> Place {
        Place { line: Some(line), ..Place::default() }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(l) = self.line {
            parts.push(format!("line {l}"));
        }
        if let Some(b) = self.byte {
            parts.push(format!("byte {b}"));
        }
        if let Some(r) = &self.record {
            parts.push(format!("record {r}"));
        }
        if parts.is_empty() { f.write_str("the file") } else { f.write_str(&parts.join(", ")) }
    }
}

/// A canonical event read from a file, with the event id it is journaled under.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) place: Place,
    pub(crate) event_id: Uuid,
    pub(crate) body: EventBody,
}

/// A record that cannot be journaled (or, as an `Err` item, a file that cannot be read further), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    #[serde(flatten)]
    pub place: Place,
    pub code: &'static str,
    pub detail: String,
}

impl Refusal {
    pub(crate) fn new(place: Place, code: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal { place, code, detail: detail.into() }
    }
}

/// One entry of a file.
#[derive(Debug)]
pub(crate) enum Item {
    Record(Record),
    Refused(Refusal),
    /// Read and deliberately not journaled (a cancelled or training-mode POSLog transaction, a control
    /// transaction); listed in the log, never an error.
    Skipped {
        place: Place,
        why: String,
    },
}

/// A reader over one file. An `Err` is fatal and the last item.
pub(crate) type Items = Box<dyn Iterator<Item = Result<Item, Refusal>> + Send>;

/// What the readers need besides the bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Context {
    /// The currency of CSV and POSLog files that name none (`inbox_currency`).
    pub(crate) currency: Option<String>,
}

/// The event id of a record that carries none of its own: UUIDv5 of [`NAMESPACE`] and `parts` (joined by U+001F,
/// which no part may hold unnoticed: it is a control character every id and SKU refuses).
pub(crate) fn derived_id(parts: &[&str]) -> Uuid {
    Uuid::new_v5(&NAMESPACE, parts.join("\u{1f}").as_bytes())
}

/// SHA-256 of a body's canonical JSON, in hex: the content half of a derived id.
pub(crate) fn body_digest(body: &EventBody) -> String {
    hex::encode(Sha256::digest(body.canonical()))
}

/// Validates a POST-shaped body exactly as the POS API does (`event_id` taken out, unknown fields refused, every
/// rule checked) and names its event: its own `event_id`, or the one `derive` makes from the valid body.
pub(crate) fn checked(ty: BodyType, value: Value, place: Place, derive: impl FnOnce(&EventBody) -> Uuid) -> Item {
    match parse_request_value(ty, value) {
        Ok((own, body)) => {
            let event_id = own.unwrap_or_else(|| derive(&body));
            Item::Record(Record { place, event_id, body })
        }
        Err(e) => Item::Refused(Refusal::new(place, e.code, e.detail)),
    }
}

/// Reads one line of at most `limit` bytes into `buf` (without its `\n` or `\r\n`). A longer line is consumed to
/// its end but not kept: the answer is then `Ok(Some(true))` ("too long") and `buf` holds its first `limit`
/// bytes. `Ok(None)` at the end of the input. Memory stays bounded whatever the file holds.
pub(crate) fn read_line_bounded(
    input: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        read_any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = limit.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        too_long |= take > room;
        input.consume(if done { take + 1 } else { take });
        if done {
            break;
        }
    }
    if !read_any {
        return Ok(None);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(too_long))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_split_on_newlines() {
        let mut input: &[u8] = b"ab\r\ncdefgh\n\nlast";
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(long) = read_line_bounded(&mut input, &mut buf, 4).unwrap() {
            got.push((String::from_utf8(buf.clone()).unwrap(), long));
        }
        assert_eq!(got, [("ab".into(), false), ("cdef".into(), true), (String::new(), false), ("last".into(), false)]);
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(derived_id(&["jsonl", "1", "x"]), derived_id(&["jsonl", "1", "x"]));
        assert_ne!(derived_id(&["jsonl", "1", "x"]), derived_id(&["jsonl", "2", "x"]));
        assert_ne!(derived_id(&["a", "bc"]), derived_id(&["ab", "c"]));
        // Pinned: a changed derivation would journal every file dropped again a second time.
        assert_eq!(derived_id(&["jsonl", "1", "x"]).to_string(), "6b6d22bc-9a4c-51f6-ad12-111da6d6c35f");
    }
}
