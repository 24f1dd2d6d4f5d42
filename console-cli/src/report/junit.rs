//! JUnit XML, for CI servers' test tabs.
//!
//! One `<testsuite>` per source, one `<testcase>` per catalogue hazard (its
//! id is the test name, so a CI server tracks each hazard kind across
//! builds), and one `<failure>` per unsuppressed finding at or above
//! `--fail-on`. Findings below the threshold and suppressed findings are
//! listed in the testcase's `<system-out>`; hazards disabled in
//! `taskscope.toml` are `<skipped>`.

use std::fmt::Write as _;

use taskscope_wire::hazards::catalogue;

use super::{Finding, Report};

/// Escapes text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn describe(f: &Finding) -> String {
    let mut s = String::new();
    if let Some(l) = &f.hazard.location {
        let _ = writeln!(s, "at {l}");
    }
    if let Some(a) = f
        .hazard
        .await_point
        .as_ref()
        .filter(|a| f.hazard.location.as_ref() != Some(*a))
    {
        let _ = writeln!(s, "parked at {a}");
    }
    for e in &f.hazard.evidence {
        let _ = writeln!(s, "- {e}");
    }
    if !f.hazard.advice.is_empty() {
        let _ = writeln!(s, "advice: {}", f.hazard.advice);
    }
    s
}

/// The JUnit XML document.
pub fn render(report: &Report) -> String {
    let totals = report.totals();
    let cases = catalogue().len();
    let mut out = String::new();
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"taskscope\" tests=\"{}\" failures=\"{}\" errors=\"0\">",
        cases * report.sources.len(),
        totals.failing
    );
    for source in &report.sources {
        let failing: usize = source
            .findings
            .iter()
            .filter(|f| f.suppressed.is_none() && report.fail_on.fails(f.hazard.severity))
            .count();
        let skipped = catalogue()
            .iter()
            .filter(|i| report.disabled.contains(&i.kind))
            .count();
        let suite = format!("taskscope {}: {}", source.kind, source.name);
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{cases}\" failures=\"{failing}\" errors=\"0\" skipped=\"{skipped}\">",
            escape(&suite)
        );
        if !source.warnings.is_empty() {
            let _ = writeln!(
                out,
                "    <system-err>{}</system-err>",
                escape(&source.warnings.join("\n"))
            );
        }
        for info in catalogue() {
            let _ = write!(
                out,
                "    <testcase classname=\"taskscope.{}\" name=\"{}\"",
                escape(&source.kind.to_string().replace(' ', "_")),
                info.id
            );
            let mine: Vec<&Finding> = source
                .findings
                .iter()
                .filter(|f| f.hazard.kind == info.id)
                .collect();
            let disabled = report.disabled.contains(&info.kind);
            if mine.is_empty() && !disabled {
                out.push_str("/>\n");
                continue;
            }
            out.push_str(">\n");
            if disabled {
                out.push_str("      <skipped message=\"disabled in taskscope.toml\"/>\n");
            }
            let mut notes = String::new();
            for f in &mine {
                let failing = f.suppressed.is_none() && report.fail_on.fails(f.hazard.severity);
                if failing {
                    let _ = writeln!(
                        out,
                        "      <failure message=\"{}\" type=\"{}\">{}</failure>",
                        escape(&f.hazard.summary),
                        escape(f.hazard.severity.as_str()),
                        escape(&describe(f))
                    );
                } else {
                    let why = match &f.suppressed {
                        Some(s) => format!("suppressed (rule {}): {}", s.rule, s.reason),
                        None => format!(
                            "{} (below --fail-on {})",
                            f.hazard.severity.as_str(),
                            report.fail_on.as_str()
                        ),
                    };
                    let _ = writeln!(notes, "[{why}] {}\n{}", f.hazard.summary, describe(f));
                }
            }
            if !notes.is_empty() {
                let _ = writeln!(out, "      <system-out>{}</system-out>", escape(&notes));
            }
            out.push_str("    </testcase>\n");
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>\u{1}"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;\\u{1}"
        );
    }
}
