//! The static check of `taskscope ci`: more than one async runtime in
//! `Cargo.lock`.
//!
//! Two semver-incompatible tokio versions (0.1, 0.2, 0.3 and 1.x are four
//! different crates as far as their runtimes are concerned) mean two
//! runtimes, two timer wheels and two reactors: a future built for one,
//! polled on the other, panics ("there is no reactor running") or hangs.
//! tokio together with async-std means two executors in one process. Both
//! usually arrive through a dependency (an old HTTP client, a
//! `reqwest::blocking`-style wrapper), so the finding names who pulls each
//! one in, and points at the `Cargo.lock` line of the odd one out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use taskscope_wire::hazards::{HazardConfig, HazardKind};
use taskscope_wire::model::{Hazard, Location, Severity};

use super::{Finding, SourceKind, SourceReport};

/// Why `Cargo.lock` could not be checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockfileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid Cargo.lock: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
}

#[derive(Deserialize)]
struct LockFile {
    #[serde(default)]
    package: Vec<Package>,
}

#[derive(Deserialize, Clone)]
struct Package {
    name: String,
    version: String,
    #[serde(default)]
    dependencies: Vec<String>,
}

/// The nearest `Cargo.lock` at or above `start`.
pub fn find_lockfile(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.is_file())
}

/// The semver-compatibility family of a version: `1` for 1.x, `0.2` for
/// 0.2.x.
fn family(version: &str) -> String {
    let mut parts = version.split('.');
    let major = parts.next().unwrap_or("0");
    if major == "0" {
        format!("0.{}", parts.next().unwrap_or("0"))
    } else {
        major.to_string()
    }
}

/// Checks `path`; `display` is how the file is named in the report
/// (relative to the repository root when possible).
pub fn check(
    path: &Path,
    display: &str,
    config: &HazardConfig,
) -> Result<SourceReport, LockfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| LockfileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut report = SourceReport::new(display, SourceKind::Lockfile);
    if let Some(h) = check_text(&text, display, config).map_err(|source| LockfileError::Parse {
        path: path.to_path_buf(),
        source,
    })? {
        report.add(Finding::new(h, Vec::new()));
    }
    Ok(report)
}

/// [`check`] on the text of a `Cargo.lock`.
pub fn check_text(
    text: &str,
    display: &str,
    config: &HazardConfig,
) -> Result<Option<Hazard>, toml::de::Error> {
    let kind = HazardKind::MultipleRuntimes;
    if !config.enabled(kind) {
        return Ok(None);
    }
    let lock: LockFile = toml::from_str(text)?;
    // family -> versions, in file order
    let mut tokio: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut async_std: Vec<String> = Vec::new();
    for p in &lock.package {
        match p.name.as_str() {
            "tokio" => tokio
                .entry(family(&p.version))
                .or_default()
                .push(p.version.clone()),
            "async-std" => async_std.push(p.version.clone()),
            _ => {}
        }
    }
    let users = |name: &str, version: &str, unique: bool| -> Vec<String> {
        let exact = format!("{name} {version}");
        lock.package
            .iter()
            .filter(|p| {
                p.dependencies.iter().any(|d| {
                    d == &exact
                        || d.starts_with(&format!("{exact} "))
                        || (unique && (d == name || d.starts_with(&format!("{name} "))))
                })
            })
            .map(|p| format!("{} {}", p.name, p.version))
            .collect()
    };
    let pulled = |name: &str, version: &str, unique: bool| {
        let u = users(name, version, unique);
        if u.is_empty() {
            format!("{name} {version} (a direct dependency of the workspace)")
        } else {
            format!("{name} {version}, pulled in by {}", u.join(", "))
        }
    };
    let mut evidence = Vec::new();
    let (summary, odd_one) = if tokio.len() > 1 {
        let all: Vec<&String> = tokio.values().flatten().collect();
        for v in &all {
            evidence.push(pulled("tokio", v, false));
        }
        // The oldest family is the odd one out (the workspace is on the newest).
        let oldest = tokio
            .values()
            .next()
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_default();
        (
            format!(
                "Cargo.lock has {} incompatible tokio versions ({}): each brings its own runtime, and a future made for one panics or hangs on the other",
                tokio.len(),
                tokio.keys().map(|f| format!("{f}.x")).collect::<Vec<_>>().join(" and ")
            ),
            ("tokio", oldest),
        )
    } else if !tokio.is_empty() && !async_std.is_empty() {
        let unique_tokio = tokio.values().flatten().count() == 1;
        for v in tokio.values().flatten() {
            evidence.push(pulled("tokio", v, unique_tokio));
        }
        for v in &async_std {
            evidence.push(pulled("async-std", v, async_std.len() == 1));
        }
        (
            "Cargo.lock has both tokio and async-std: two executors in one process (futures that need one runtime's reactor hang or panic on the other)".to_string(),
            ("async-std", async_std[0].clone()),
        )
    } else {
        return Ok(None);
    };
    let line = package_line(text, odd_one.0, &odd_one.1).unwrap_or(1);
    let info = kind.info();
    Ok(Some(Hazard {
        kind: info.id.into(),
        severity: config.severity_for(kind, Severity::Warning),
        location: Some(Location::new(display, line, 1)),
        summary,
        evidence,
        advice: format!(
            "{} Find who pulls the extra runtime in (`cargo tree -i {}@{}`) and upgrade or replace it, or enable its feature for the runtime you use.",
            info.advice, odd_one.0, odd_one.1
        ),
        doc_anchor: info.doc_anchor.into(),
        fingerprint: format!("{}:lock:{}@{}", info.id, odd_one.0, odd_one.1),
        ..Hazard::default()
    }))
}

/// The 1-based line of `name = "<name>"` of the package entry with `version`.
fn package_line(text: &str, name: &str, version: &str) -> Option<u32> {
    let lines: Vec<&str> = text.lines().collect();
    let name_line = format!("name = \"{name}\"");
    let version_line = format!("version = \"{version}\"");
    lines
        .iter()
        .enumerate()
        .find(|(i, l)| {
            l.trim() == name_line && lines.get(i + 1).is_some_and(|n| n.trim() == version_line)
        })
        .and_then(|(i, _)| u32::try_from(i + 1).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_TOKIOS: &str = r#"
version = 3

[[package]]
name = "app"
version = "0.1.0"
dependencies = [
 "old-http",
 "tokio 1.40.0",
]

[[package]]
name = "old-http"
version = "0.9.0"
dependencies = [
 "tokio 0.2.25",
]

[[package]]
name = "tokio"
version = "0.2.25"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "tokio"
version = "1.40.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
"#;

    #[test]
    fn two_tokio_families_are_found_with_who_pulls_them() {
        let h = check_text(TWO_TOKIOS, "Cargo.lock", &HazardConfig::default())
            .expect("parses")
            .expect("finding");
        assert_eq!(h.kind, "multiple-runtimes");
        assert_eq!(
            h.location,
            Some(Location::new("Cargo.lock", 20, 1)),
            "the old tokio entry"
        );
        assert!(h.summary.contains("0.2.x and 1.x"), "{}", h.summary);
        assert!(
            h.evidence
                .iter()
                .any(|e| e.contains("tokio 0.2.25, pulled in by old-http 0.9.0")),
            "{:?}",
            h.evidence
        );
    }

    #[test]
    fn one_family_is_clean_and_async_std_with_tokio_is_not() {
        let one = TWO_TOKIOS.replace("0.2.25", "1.41.0");
        assert!(check_text(&one, "Cargo.lock", &HazardConfig::default())
            .expect("parses")
            .is_none());
        let mixed = TWO_TOKIOS
            .replace(
                "name = \"tokio\"\nversion = \"0.2.25\"",
                "name = \"async-std\"\nversion = \"1.12.0\"",
            )
            .replace("\"tokio 0.2.25\"", "\"async-std\"");
        let h = check_text(&mixed, "Cargo.lock", &HazardConfig::default())
            .expect("parses")
            .expect("finding");
        assert!(h.summary.contains("async-std"), "{}", h.summary);
        assert!(
            h.evidence
                .iter()
                .any(|e| e.contains("async-std 1.12.0, pulled in by old-http")),
            "{:?}",
            h.evidence
        );
    }

    #[test]
    fn this_workspace_has_one_runtime() {
        let lock = find_lockfile(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("workspace lock");
        let r = check(&lock, "Cargo.lock", &HazardConfig::default()).expect("checks");
        assert!(r.findings.is_empty(), "{:#?}", r.findings);
    }
}
