//! The file formats the inbox takes, and which reader reads each: the one place that knows all three readers.

use std::io::BufRead;

use serde::Serialize;

use super::record::{Context, Items};
use super::{csv_file, jsonl, poslog};

/// The file formats the inbox takes, by file name extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Jsonl,
    Csv,
    Poslog,
}

impl Format {
    /// The format a file name's extension names (case-insensitive): `.jsonl`, `.csv` or `.xml`.
    pub fn of(name: &str) -> Option<Format> {
        let (_, ext) = name.rsplit_once('.')?;
        match ext.to_ascii_lowercase().as_str() {
            "jsonl" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            "xml" => Some(Format::Poslog),
            _ => None,
        }
    }

    /// The reader of this format over `input`.
    pub(crate) fn records(self, input: Box<dyn BufRead + Send>, ctx: &Context) -> Items {
        match self {
            Format::Jsonl => Box::new(jsonl::Records::new(input)),
            Format::Csv => Box::new(csv_file::Records::new(input, ctx.clone())),
            Format::Poslog => Box::new(poslog::Records::new(input, ctx.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_the_extension() {
        assert_eq!(Format::of("sales.jsonl"), Some(Format::Jsonl));
        assert_eq!(Format::of("SALES.JSONL"), Some(Format::Jsonl));
        assert_eq!(Format::of("tlog-2026-11-26.xml"), Some(Format::Poslog));
        assert_eq!(Format::of("export.csv"), Some(Format::Csv));
        assert_eq!(Format::of("export.csv.tmp"), None);
        assert_eq!(Format::of("export"), None);
        assert_eq!(Format::of("export.json"), None);
    }
}
