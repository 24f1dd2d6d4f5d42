//! JSON (`taskscope.report/1`), for scripts.
//!
//! ```json
//! {"schema": "taskscope.report/1", "tool": {"name", "version"}, "root": "/repo",
//!  "fail_on": "error", "failed": false,
//!  "totals": {"errors", "warnings", "infos", "suppressed", "failing"},
//!  "sources": [{"name", "kind", "warnings": [..], "findings": [{
//!      "kind", "severity", "task_ids", "resource_ids", "location", "await_point",
//!      "summary", "evidence", "advice", "doc_anchor", "detected_at", "fingerprint",
//!      "task_names", "suppressed": {"reason", "rule"}?, "snippet"?}]}]}
//! ```

use serde_json::json;

use super::Report;

/// Schema id of the document.
pub const SCHEMA: &str = "taskscope.report/1";

/// The JSON document.
pub fn render(report: &Report) -> String {
    let doc = json!({
        "schema": SCHEMA,
        "tool": { "name": "taskscope", "version": env!("CARGO_PKG_VERSION") },
        "root": report.root.to_string_lossy(),
        "fail_on": report.fail_on,
        "failed": report.failed(),
        "totals": report.totals(),
        "sources": report.sources,
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}
