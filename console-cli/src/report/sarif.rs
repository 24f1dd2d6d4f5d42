//! SARIF 2.1.0, as GitHub code scanning and other SARIF viewers read it.
//!
//! One run for the whole report. `tool.driver.rules` lists the whole
//! catalogue (so `ruleIndex` is stable across reports): `help` is the
//! advice, `helpUri` the hazard's documentation. Each finding is a result
//! with `ruleId` = the hazard id, `level` from its severity (`info` →
//! `note`), one physical location at the user's source line (relative to
//! `%SRCROOT%`, the repository root, when inside it), the await point as a
//! related location, `partialFingerprints` from the finding's fingerprint,
//! and, when suppressed, an external suppression carrying the reason.

use serde_json::{json, Map, Value};
use taskscope_wire::hazards::{catalogue, HazardKind};
use taskscope_wire::model::{Location, Severity};

use super::{docs_url, Finding, Report, SourceReport};

/// Schema URI written into the log.
pub const SCHEMA_URI: &str = "https://json.schemastore.org/sarif-2.1.0.json";

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "note",
    }
}

/// `lost-waker` → `LostWaker`.
fn rule_name(id: &str) -> String {
    id.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn file_uri(path: &str) -> String {
    // Percent-encode what may not appear in a URI path.
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn artifact(loc: &Location) -> Value {
    let file = loc.file.replace('\\', "/");
    if file.starts_with('/') {
        json!({ "uri": format!("file://{}", file_uri(&file)) })
    } else {
        json!({ "uri": file_uri(&file), "uriBaseId": "%SRCROOT%" })
    }
}

fn region(loc: &Location, snippet: Option<&str>) -> Value {
    let mut r = Map::new();
    r.insert("startLine".into(), json!(loc.line.max(1)));
    if loc.column > 0 {
        r.insert("startColumn".into(), json!(loc.column));
    }
    if let Some(s) = snippet {
        r.insert("snippet".into(), json!({ "text": s }));
    }
    Value::Object(r)
}

fn physical(loc: &Location, snippet: Option<&str>) -> Value {
    json!({
        "physicalLocation": {
            "artifactLocation": artifact(loc),
            "region": region(loc, snippet),
        }
    })
}

fn message(f: &Finding) -> String {
    let mut text = if f.hazard.summary.is_empty() {
        super::title_of(&f.hazard.kind).to_string()
    } else {
        f.hazard.summary.clone()
    };
    if let Some(a) = &f.hazard.await_point {
        if f.hazard.location.as_ref() != Some(a) {
            text.push_str(&format!(" (parked at {a})"));
        }
    }
    text
}

fn result(source: &SourceReport, f: &Finding) -> Value {
    let mut r = Map::new();
    r.insert("ruleId".into(), json!(f.hazard.kind));
    if let Some(k) = HazardKind::from_id(&f.hazard.kind) {
        r.insert("ruleIndex".into(), json!(k as usize));
    }
    r.insert("level".into(), json!(level(f.hazard.severity)));
    r.insert("message".into(), json!({ "text": message(f) }));
    if let Some(loc) = f.hazard.location.as_ref().filter(|l| l.is_known()) {
        r.insert(
            "locations".into(),
            json!([physical(loc, f.snippet.as_deref())]),
        );
    }
    let mut related: Vec<(String, &Location)> = Vec::new();
    if let Some(a) = f
        .hazard
        .await_point
        .as_ref()
        .filter(|a| a.is_known() && f.hazard.location.as_ref() != Some(*a))
    {
        related.push(("await point".into(), a));
    }
    for rel in f.related.iter().filter(|r| r.location.is_known()) {
        related.push((rel.label.clone(), &rel.location));
    }
    if !related.is_empty() {
        let list: Vec<Value> = related
            .into_iter()
            .enumerate()
            .map(|(i, (label, loc))| {
                let mut v = physical(loc, None);
                if let Value::Object(m) = &mut v {
                    m.insert("id".into(), json!(i));
                    m.insert("message".into(), json!({ "text": label }));
                }
                v
            })
            .collect();
        r.insert("relatedLocations".into(), Value::Array(list));
    }
    if !f.hazard.fingerprint.is_empty() {
        r.insert(
            "partialFingerprints".into(),
            json!({ "taskscopeFingerprint/v1": f.hazard.fingerprint }),
        );
    }
    if let Some(s) = &f.suppressed {
        r.insert(
            "suppressions".into(),
            json!([{ "kind": "external", "status": "accepted", "justification": s.reason }]),
        );
    }
    r.insert(
        "properties".into(),
        json!({
            "source": source.name,
            "sourceKind": source.kind,
            "evidence": f.hazard.evidence,
            "taskIds": f.hazard.task_ids,
            "tasks": f.task_names,
        }),
    );
    Value::Object(r)
}

/// The SARIF log as a JSON value.
pub fn to_value(report: &Report) -> Value {
    let rules: Vec<Value> = catalogue()
        .iter()
        .map(|info| {
            json!({
                "id": info.id,
                "name": rule_name(info.id),
                "shortDescription": { "text": info.title },
                "fullDescription": { "text": info.description },
                "help": {
                    "text": info.advice,
                    "markdown": format!("{}\n\n[Documentation]({})", info.advice, docs_url(info.doc_anchor)),
                },
                "helpUri": docs_url(info.doc_anchor),
                "defaultConfiguration": { "level": level(info.default_severity) },
                "properties": { "tags": ["async", "concurrency"] },
            })
        })
        .collect();
    let results: Vec<Value> = report.findings().map(|(s, f)| result(s, f)).collect();
    let root = report.root.to_string_lossy().replace('\\', "/");
    let root = if root.ends_with('/') {
        root
    } else {
        format!("{root}/")
    };
    let notifications: Vec<Value> = report
        .sources
        .iter()
        .flat_map(|s| {
            s.warnings.iter().map(move |w| {
                json!({ "level": "warning", "message": { "text": format!("{}: {w}", s.name) } })
            })
        })
        .collect();
    json!({
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "taskscope",
                    "version": env!("CARGO_PKG_VERSION"),
                    "informationUri": env!("CARGO_PKG_REPOSITORY"),
                    "rules": rules,
                }
            },
            "originalUriBaseIds": {
                "%SRCROOT%": { "uri": format!("file://{}", file_uri(&root)) }
            },
            "invocations": [{
                "executionSuccessful": true,
                "toolExecutionNotifications": notifications,
            }],
            "results": results,
        }]
    })
}

/// The SARIF log, pretty-printed.
pub fn render(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(&to_value(report)).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uris() {
        assert_eq!(rule_name("waker-dropped-unwoken"), "WakerDroppedUnwoken");
        assert_eq!(file_uri("src/a b.rs"), "src/a%20b.rs");
        assert_eq!(
            artifact(&Location::new("/x/y.rs", 1, 0))["uri"],
            json!("file:///x/y.rs")
        );
    }
}
