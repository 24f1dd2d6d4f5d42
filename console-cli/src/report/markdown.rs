//! Markdown, for pull-request comments and job summaries.
//!
//! A verdict line, a summary table (one row per hazard kind found), then
//! one section per finding: where (with the source line), what, the
//! evidence, the advice and its documentation link. Suppressed findings keep
//! their section, marked with the reason.

use std::fmt::Write as _;

use super::{docs_url, title_of, Finding, Report, SourceReport};

/// Escapes `|` and newlines so text stays inside a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Longest run of backticks in `s`, plus one, so inline code can hold it.
fn code(s: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat(longest + 1);
    if longest > 0 {
        format!("{fence} {s} {fence}")
    } else {
        format!("{fence}{s}{fence}")
    }
}

fn section(out: &mut String, n: usize, source: &SourceReport, f: &Finding, report: &Report) {
    let h = &f.hazard;
    let status = match &f.suppressed {
        Some(s) => format!(" — suppressed: {}", s.reason),
        None if report.fail_on.fails(h.severity) => " — **fails the run**".to_string(),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "### {n}. {} `{}` ({}){status}\n",
        title_of(&h.kind),
        h.kind,
        h.severity.as_str()
    );
    if !h.summary.is_empty() {
        let _ = writeln!(out, "{}\n", h.summary);
    }
    if let Some(l) = h.location.as_ref().filter(|l| l.is_known()) {
        let _ = writeln!(out, "- **Where:** `{l}`");
        if let Some(s) = &f.snippet {
            let _ = writeln!(out, "  {}", code(s));
        }
    }
    if let Some(a) = h
        .await_point
        .as_ref()
        .filter(|a| a.is_known() && h.location.as_ref() != Some(*a))
    {
        let _ = writeln!(out, "- **Await point:** `{a}`");
    }
    for r in &f.related {
        let mut label = r.label.clone();
        if let Some(c) = label.get(..1) {
            label.replace_range(..1, &c.to_uppercase());
        }
        let _ = writeln!(out, "- **{label}:** `{}`", r.location);
    }
    if !f.task_names.is_empty() {
        let _ = writeln!(
            out,
            "- **Tasks:** {}",
            f.task_names
                .iter()
                .map(|t| code(t))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(out, "- **Source:** {} `{}`", source.kind, source.name);
    if !h.evidence.is_empty() {
        out.push_str("- **Evidence:**\n");
        for e in &h.evidence {
            let _ = writeln!(out, "  - {e}");
        }
    }
    if !h.advice.is_empty() {
        let _ = writeln!(out, "- **Advice:** {}", h.advice);
    }
    if !h.doc_anchor.is_empty() {
        let _ = writeln!(
            out,
            "- **Docs:** {} (offline: `taskscope explain {}`)",
            docs_url(&h.doc_anchor),
            h.kind
        );
    }
    out.push('\n');
}

/// The Markdown document.
pub fn render(report: &Report) -> String {
    let t = report.totals();
    let mut out = String::from("# taskscope hazard report\n\n");
    let verdict = if t.failing > 0 {
        format!(
            "**{} finding(s) at or above `{}` fail this run.**",
            t.failing,
            report.fail_on.as_str()
        )
    } else {
        format!(
            "No finding at or above `{}`: this run passes.",
            report.fail_on.as_str()
        )
    };
    let _ = writeln!(
        out,
        "{verdict} {} error(s), {} warning(s), {} info, {} suppressed, over {} source(s).\n",
        t.errors,
        t.warnings,
        t.infos,
        t.suppressed,
        report.sources.len()
    );
    let counts = report.counts_by_kind();
    if !counts.is_empty() {
        out.push_str("| hazard | id | findings | suppressed |\n|---|---|---:|---:|\n");
        for (kind, (open, suppressed)) in &counts {
            let _ = writeln!(
                out,
                "| {} | `{}` | {open} | {suppressed} |",
                cell(title_of(kind)),
                cell(kind)
            );
        }
        out.push('\n');
    }
    out.push_str("## Sources\n\n");
    for s in &report.sources {
        let _ = writeln!(
            out,
            "- {} `{}`: {} finding(s)",
            s.kind,
            s.name,
            s.findings.len()
        );
        for w in &s.warnings {
            let _ = writeln!(out, "  - warning: {w}");
        }
    }
    out.push('\n');
    if counts.is_empty() {
        return out;
    }
    out.push_str("## Findings\n\n");
    for (n, (s, f)) in report.findings().enumerate() {
        section(&mut out, n + 1, s, f, report);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_code_survives_backticks_and_cells_survive_pipes() {
        assert_eq!(code("a"), "`a`");
        assert_eq!(code("a`b"), "`` a`b ``");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
