//! `storesync-apidoc`: test support only, a dev-dependency of the agent and the hub. Pure helpers for the tests
//! that hold each binary's OpenAPI document, its router and docs/API.md together.
//!
//! The agent's and the hub's `openapi` tests ask the same questions of different documents: which endpoints the
//! document has, which endpoints the endpoint table in docs/API.md lists (the rows between
//! `<!-- endpoints: NAME -->` and `<!-- /endpoints -->`), which `` `METHOD /path` `` a section of the prose names,
//! whether every `$ref` resolves, and what concrete path to send for a templated one. The answers live here once.
//!
//! Nothing here reads a file or serves a request: callers pass docs/API.md's text (`include_str!` in their tests)
//! and the document, and drive their own router with the answers.

use std::collections::BTreeSet;

use serde_json::Value;
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::Operation;

/// An endpoint: `(METHOD, /path)`, the method upper-case and the path as the document templates it (`/v1/x/{id}`).
pub type Endpoint = (String, String);

/// The methods a router answers and the prose names; [`other_methods`] probes these, [`mentioned`] reads these.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// What [`sample_path`] puts in place of every `{param}`.
pub const SAMPLE_PARAM: &str = "SAMPLE-1";

/// The prefix of a `$ref` to a schema of the document's own components.
const SCHEMA_REF: &str = "#/components/schemas/";

/// Every operation of `doc`: its upper-case method, its templated path and the operation, in path order.
pub fn operations(doc: &OpenApi) -> Vec<(&'static str, &str, &Operation)> {
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
            ("HEAD", &item.head),
            ("OPTIONS", &item.options),
            ("TRACE", &item.trace),
        ] {
            if let Some(op) = op {
                out.push((method, path.as_str(), op));
            }
        }
    }
    out
}

/// For every path in `endpoints`, each method of [`METHODS`] that `endpoints` does not give it: what a router
/// must answer 405 if it serves exactly the documented endpoints.
pub fn other_methods(endpoints: &BTreeSet<Endpoint>) -> Vec<Endpoint> {
    let paths: BTreeSet<&String> = endpoints.iter().map(|(_, path)| path).collect();
    let mut out = Vec::new();
    for path in paths {
        for method in METHODS {
            let endpoint = (method.to_owned(), path.clone());
            if !endpoints.contains(&endpoint) {
                out.push(endpoint);
            }
        }
    }
    out
}

/// `path` with every `{param}` replaced by [`SAMPLE_PARAM`], so that it can be requested.
///
/// An unclosed `{` swallows the rest of the path: `/a/{b` becomes `/a/SAMPLE-1`.
pub fn sample_path(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        out.push_str(SAMPLE_PARAM);
        rest = rest[start..].find('}').map_or("", |end| &rest[start + end + 1..]);
    }
    out.push_str(rest);
    out
}

/// The section of a Markdown `text` whose heading line starts with `heading` (say `"## The hub API"`): from that
/// line up to the next heading of the same or a higher level, or the end of the text. Lines inside fenced code
/// blocks (a shell `# comment`) are neither headings nor ends. `None` when no heading line starts with `heading`.
pub fn section<'a>(text: &'a str, heading: &str) -> Option<&'a str> {
    let level = heading_level(heading)?;
    let mut start = None;
    let mut in_fence = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let at = offset;
        offset += line.len();
        if line.starts_with("```") || line.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        match start {
            None if line.starts_with(heading) => start = Some(at),
            Some(from) if heading_level(line).is_some_and(|l| l <= level) => return Some(&text[from..at]),
            _ => {}
        }
    }
    start.map(|from| &text[from..])
}

/// The level of a Markdown heading line (`## x` is 2), or `None` if the line is not one.
fn heading_level(line: &str) -> Option<usize> {
    let level = line.len() - line.trim_start_matches('#').len();
    let after = &line[level..];
    ((1..=6).contains(&level) && (after.starts_with(' ') || after.trim().is_empty())).then_some(level)
}

/// A row of an endpoint table in docs/API.md: `| METHOD | /path | more cells... |`, each cell trimmed of spaces
/// and of the backticks around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRow {
    /// The first cell: `GET`, `POST`, ...
    pub method: String,
    /// The second cell, templated like the document's paths: `/v1/stores/{store}`.
    pub path: String,
    /// The cells after the path (the hub's table has its auth column first).
    pub rest: Vec<String>,
}

impl TableRow {
    /// The row's `(METHOD, /path)`.
    pub fn endpoint(&self) -> Endpoint {
        (self.method.clone(), self.path.clone())
    }
}

/// Why [`endpoint_table`] read no table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The text has no `<!-- endpoints: NAME -->` line.
    #[error("there is no `<!-- endpoints: {0} -->` table")]
    Missing(String),
    /// The table never ends.
    #[error("the `<!-- endpoints: {0} -->` table has no `<!-- /endpoints -->` after it")]
    Unclosed(String),
    /// Two rows list one `(METHOD, /path)`.
    #[error("{0} {1} is listed twice")]
    Twice(String, String),
}

/// The rows of the endpoint table between `<!-- endpoints: NAME -->` and `<!-- /endpoints -->` in `text`, in
/// order. A row is a line of cells between `|`s whose second cell is a path (starts with `/`); the header and
/// the `| --- |` line are not rows. An endpoint may be listed once.
pub fn endpoint_table(text: &str, name: &str) -> Result<Vec<TableRow>, TableError> {
    let open = format!("<!-- endpoints: {name} -->");
    let start = text.find(&open).ok_or_else(|| TableError::Missing(name.to_owned()))? + open.len();
    let len = text[start..].find("<!-- /endpoints -->").ok_or_else(|| TableError::Unclosed(name.to_owned()))?;
    let mut rows = Vec::new();
    let mut seen = BTreeSet::new();
    for line in text[start..start + len].lines() {
        let Some(inner) = line.trim().strip_prefix('|') else { continue };
        let inner = inner.strip_suffix('|').unwrap_or(inner);
        let mut cells = inner.split('|').map(|cell| cell.trim().trim_matches('`').to_owned());
        let (Some(method), Some(path)) = (cells.next(), cells.next()) else { continue };
        if !path.starts_with('/') {
            continue;
        }
        let row = TableRow { method, path, rest: cells.collect() };
        if !seen.insert(row.endpoint()) {
            return Err(TableError::Twice(row.method, row.path));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Every `` `METHOD /path` `` in `text` (a code span whose method is one of [`METHODS`]), without its query
/// string or anything after a space: `` `GET /v1/x?y=1` `` names `("GET", "/v1/x")`.
pub fn mentioned(text: &str) -> BTreeSet<Endpoint> {
    let mut out = BTreeSet::new();
    for span in text.split('`').skip(1).step_by(2) {
        let Some((method, path)) = span.split_once(' ') else { continue };
        if METHODS.contains(&method) && path.starts_with('/') {
            let path = path.split(['?', ' ']).next().unwrap_or(path);
            out.insert((method.to_owned(), path.to_owned()));
        }
    }
    out
}

/// Every `$ref` anywhere in `doc` (an OpenAPI document as JSON).
pub fn refs(doc: &Value) -> BTreeSet<String> {
    fn walk(value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v.as_str()) {
                        ("$ref", Some(r)) => {
                            out.insert(r.to_owned());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(doc, &mut out);
    out
}

/// The `$ref`s of `doc` (see [`refs`]) that do not name one of its own schemas: each must be
/// `#/components/schemas/NAME` with an object at `components.schemas.NAME`. Empty when all resolve.
pub fn unresolved_refs(doc: &Value) -> Vec<String> {
    refs(doc)
        .into_iter()
        .filter(|r| {
            let schema = r.strip_prefix(SCHEMA_REF).and_then(|name| doc["components"]["schemas"].get(name));
            !schema.is_some_and(Value::is_object)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn endpoints(pairs: &[(&str, &str)]) -> BTreeSet<Endpoint> {
        pairs.iter().map(|&(m, p)| (m.to_owned(), p.to_owned())).collect()
    }

    fn row(method: &str, path: &str, rest: &[&str]) -> TableRow {
        TableRow {
            method: method.to_owned(),
            path: path.to_owned(),
            rest: rest.iter().map(|&c| c.to_owned()).collect(),
        }
    }

    #[test]
    fn the_table_parsers_read_what_they_should() {
        // A two-column table (the agent's), whose row has a stray third cell.
        let text = "x\n<!-- endpoints: t -->\n| method | path |\n| --- | --- |\n| `GET` | `/a/{b}` | y |\n\
                    <!-- /endpoints -->\nsee `POST /v1/x?y=1` and `GET /z` but not `GETTER /q` or `/p`";
        assert_eq!(endpoint_table(text, "t"), Ok(vec![row("GET", "/a/{b}", &["y"])]));
        assert_eq!(mentioned(text), endpoints(&[("POST", "/v1/x"), ("GET", "/z")]));

        // A three-column table (the hub's, with its auth column), next to another table.
        let text = "<!-- endpoints: a -->\n| `DELETE` | `/no` |\n<!-- /endpoints -->\n\
                    <!-- endpoints: hub -->\n| method | path | auth | what |\n| --- | --- | --- | --- |\n\
                    | `POST` | `/v1/enroll` | none | enrol |\n| `GET` | `/v1/sync/state` | till | where |\n\
                    not | a | row\n<!-- /endpoints -->\n| `PUT` | `/after` | x |";
        let want =
            vec![row("POST", "/v1/enroll", &["none", "enrol"]), row("GET", "/v1/sync/state", &["till", "where"])];
        assert_eq!(endpoint_table(text, "hub"), Ok(want));
        assert_eq!(endpoint_table(text, "a"), Ok(vec![row("DELETE", "/no", &[])]));
        assert_eq!(row("GET", "/x", &[]).endpoint(), ("GET".to_owned(), "/x".to_owned()));

        assert_eq!(sample_path("/v1/a/{store}/b/{sku}"), "/v1/a/SAMPLE-1/b/SAMPLE-1");
    }

    #[test]
    fn a_broken_endpoint_table_is_an_error() {
        let check = |text: &str, want: TableError| assert_eq!(endpoint_table(text, "t"), Err(want), "{text}");
        check("| `GET` | `/a` |", TableError::Missing("t".into()));
        check("<!-- endpoints: other -->\n| `GET` | `/a` |\n<!-- /endpoints -->", TableError::Missing("t".into()));
        check("<!-- endpoints: t -->\n| `GET` | `/a` |\n", TableError::Unclosed("t".into()));
        check(
            "<!-- endpoints: t -->\n| `GET` | `/a` | x |\n| `POST` | `/a` | y |\n| `GET` | `/a` | z |\n<!-- /endpoints -->",
            TableError::Twice("GET".into(), "/a".into()),
        );
        assert_eq!(TableError::Twice("GET".into(), "/a".into()).to_string(), "GET /a is listed twice");
    }

    #[test]
    fn sample_paths_fill_every_parameter() {
        let check = |path: &str, want: &str| assert_eq!(sample_path(path), want, "{path}");
        check("/", "/");
        check("/v1/sales", "/v1/sales");
        check("/v1/{a}", "/v1/SAMPLE-1");
        check("/{a}/{b}/c", "/SAMPLE-1/SAMPLE-1/c");
        check("/v1/{a", "/v1/SAMPLE-1");
        check("/v1/a}", "/v1/a}");
    }

    #[test]
    fn a_section_runs_to_the_next_heading_of_its_level() {
        let text = "# Title\n## One (`x`)\ntext `GET /a`\n### Sub\nmore\n```sh\n# a comment\n## not a heading\n```\n\
                    tail\n## Two\nnext\n# Top\nlast\n";
        assert_eq!(
            section(text, "## One"),
            Some("## One (`x`)\ntext `GET /a`\n### Sub\nmore\n```sh\n# a comment\n## not a heading\n```\ntail\n")
        );
        assert_eq!(section(text, "### Sub"), Some("### Sub\nmore\n```sh\n# a comment\n## not a heading\n```\ntail\n"));
        assert_eq!(section(text, "## Two"), Some("## Two\nnext\n"));
        assert_eq!(section(text, "# Top"), Some("# Top\nlast\n"));
        assert_eq!(section(text, "## Three"), None);
        assert_eq!(section(text, "## not a heading"), None, "a line in a code block is no heading");
        assert_eq!(section(text, "One"), None, "not a heading");
    }

    #[test]
    fn other_methods_are_the_undocumented_ones_of_documented_paths() {
        let documented = endpoints(&[("GET", "/a"), ("POST", "/a"), ("DELETE", "/b/{id}"), ("HEAD", "/b/{id}")]);
        let want = endpoints(&[
            ("PUT", "/a"),
            ("PATCH", "/a"),
            ("DELETE", "/a"),
            ("GET", "/b/{id}"),
            ("POST", "/b/{id}"),
            ("PUT", "/b/{id}"),
            ("PATCH", "/b/{id}"),
        ]);
        assert_eq!(other_methods(&documented).into_iter().collect::<BTreeSet<_>>(), want);
        assert!(other_methods(&BTreeSet::new()).is_empty());
    }

    #[test]
    fn operations_are_every_method_of_every_path() {
        let doc: OpenApi = serde_json::from_value(json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {
                "/b": {"get": {"responses": {}}, "trace": {"responses": {}}},
                "/a/{id}": {"delete": {"operationId": "gone", "responses": {}}}
            }
        }))
        .unwrap();
        let got: Vec<_> = operations(&doc).into_iter().map(|(m, p, op)| (m, p, op.operation_id.clone())).collect();
        assert_eq!(got, [("DELETE", "/a/{id}", Some("gone".to_owned())), ("GET", "/b", None), ("TRACE", "/b", None)]);
    }

    #[test]
    fn every_reference_is_found_and_the_unresolved_ones_named() {
        let doc = json!({
            "paths": {"/a": {"get": {"responses": {"200": {"content": {"application/json": {"schema": {
                "oneOf": [{"$ref": "#/components/schemas/A"}, {"$ref": "#/components/schemas/Missing"}]
            }}}}}}}},
            "components": {"schemas": {
                "A": {"properties": {"b": {"$ref": "#/components/schemas/B"}}},
                "B": {"type": "string"},
                "C": true,
                "D": {"$ref": "#/components/schemas/C"},
                "E": {"$ref": "#/components/responses/A"}
            }}
        });
        let want: BTreeSet<String> = [
            "#/components/schemas/A",
            "#/components/schemas/B",
            "#/components/schemas/C",
            "#/components/schemas/Missing",
            "#/components/responses/A",
        ]
        .map(str::to_owned)
        .into();
        assert_eq!(refs(&doc), want);
        // `C` is no object, `Missing` is absent, and a response is no schema.
        assert_eq!(
            unresolved_refs(&doc),
            ["#/components/responses/A", "#/components/schemas/C", "#/components/schemas/Missing"]
        );
        assert!(unresolved_refs(&json!({"components": {"schemas": {"A": {}}}})).is_empty());
    }
}
