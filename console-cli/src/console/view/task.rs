//! One task in detail: statistics, poll- and scheduled-time distributions,
//! wakers, where it was spawned and by whom, its logical backtrace (the
//! await lines), the resources it waits on / holds / must free — each a
//! link Enter follows — and the hazards naming it.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget, Wrap};
use taskscope_wire::hazards::fmt_ns;
use taskscope_wire::histogram::{bucket_lower, Histogram};
use taskscope_wire::model::{EdgeKind, Task, TaskId, Timestamp};

use super::{selected_style, severity_style, state_style};
use crate::console::state::{ConsoleState, Link};

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

pub fn render(state: &ConsoleState, id: TaskId, selected: usize, area: Rect, buf: &mut Buffer) {
    let model = state.model();
    let Some(task) = model.tasks.get(&id) else {
        Paragraph::new(format!(
            "task {id} is gone (evicted from the target's retention window). Esc: back"
        ))
        .block(Block::default().borders(Borders::TOP).title(" Task "))
        .render(area, buf);
        return;
    };
    let now = model.updated_at.unwrap_or(Timestamp(0));
    let title = Line::from(vec![
        Span::styled(
            format!(" Task {} ", task.display_name()),
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("id {} ", task.display_id())),
        Span::styled(task.state.as_str(), state_style(task.state)),
        Span::raw(" · Esc back "),
    ]);
    let block = Block::default().borders(Borders::TOP).title(title);
    let inner = block.inner(area);
    block.render(area, buf);

    let [top, bottom] = Layout::vertical([Constraint::Length(12), Constraint::Min(1)]).areas(inner);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(top);
    Paragraph::new(stats(state, task, now)).render(left, buf);
    let mut timing = histogram_lines("poll time", task.poll_histogram.as_ref(), right.width);
    timing.push(Line::raw(""));
    timing.extend(histogram_lines(
        "scheduled time",
        task.scheduled_histogram.as_ref(),
        right.width,
    ));
    Paragraph::new(timing).render(right, buf);

    let mut lines = Vec::new();
    lines.push(Line::styled(
        "Backtrace (outermost first)",
        Style::new().add_modifier(Modifier::BOLD),
    ));
    if task.backtrace.is_empty() {
        lines.push(Line::styled(
            "  none recorded (no #[tracing::instrument] spans inside, or a console-api target)",
            Style::new().fg(Color::DarkGray),
        ));
    }
    for (depth, frame) in task.backtrace.iter().enumerate() {
        let mut spans = vec![Span::raw(format!(
            "  {:indent$}{}",
            "",
            frame.name,
            indent = depth * 2
        ))];
        if let Some(l) = &frame.location {
            spans.push(Span::styled(
                format!("  at {l}"),
                Style::new().fg(Color::Cyan),
            ));
        }
        if !frame.detail.is_empty() {
            spans.push(Span::styled(
                format!("  {}", frame.detail),
                Style::new().fg(Color::DarkGray),
            ));
        }
        lines.push(Line::from(spans));
    }
    if let Some(l) = task.last_poll_location.as_ref().filter(|l| l.is_known()) {
        lines.push(Line::from(vec![
            Span::raw("  last poll at "),
            Span::styled(l.to_string(), Style::new().fg(Color::Cyan)),
        ]));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "Links (↑/↓ select, Enter open)",
        Style::new().add_modifier(Modifier::BOLD),
    ));
    let links = state.task_links(id);
    if links.is_empty() {
        lines.push(Line::styled(
            "  no parent task or resources known",
            Style::new().fg(Color::DarkGray),
        ));
    }
    for (i, link) in links.iter().enumerate() {
        let text = link_text(state, task, *link);
        let style = if i == selected {
            selected_style()
        } else {
            Style::new()
        };
        let marker = if i == selected { "▶ " } else { "  " };
        lines.push(Line::styled(format!("{marker}{text}"), style));
    }
    let found: Vec<_> = state.hazards_of(id).collect();
    if !found.is_empty() {
        lines.push(Line::raw(""));
        lines.push(Line::styled(
            "Hazards (P for the problem view)",
            Style::new().add_modifier(Modifier::BOLD),
        ));
        for h in found {
            lines.push(Line::from(vec![
                Span::styled(format!("  {} ", h.kind), severity_style(h.severity)),
                Span::raw(h.summary.clone()),
            ]));
        }
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .render(bottom, buf);
}

fn stats<'a>(state: &ConsoleState, task: &'a Task, now: Timestamp) -> Vec<Line<'a>> {
    let model = state.model();
    let kv = |k: &str, v: String| {
        Line::from(vec![
            Span::styled(format!("{k:>13} "), Style::new().fg(Color::DarkGray)),
            Span::raw(v),
        ])
    };
    let total = task.total_ns(now).max(1);
    let pct = |ns: u64| format!("{} ({:.0}%)", fmt_ns(ns), ns as f64 * 100.0 / total as f64);
    let parent = task.parent_id.map_or_else(
        || "—".to_string(),
        |p| match model.tasks.get(&p) {
            Some(t) => format!("{} (id {})", t.display_name(), t.display_id()),
            None => format!("id {p} (gone)"),
        },
    );
    let wakers = match task.live_wakers() {
        n if n < 0 => "unknown (events lost)".to_string(),
        n => n.to_string(),
    };
    let mut lines = vec![
        kv(
            "kind",
            if task.kind.is_empty() {
                "task".into()
            } else {
                task.kind.clone()
            },
        ),
        kv(
            "spawned at",
            task.location
                .as_ref()
                .map_or_else(|| "unknown".into(), ToString::to_string),
        ),
        kv("parent", parent),
        kv("total", fmt_ns(task.total_ns(now))),
        kv("busy", pct(task.busy_ns)),
        kv("scheduled", pct(task.scheduled_ns)),
        kv("idle", pct(task.idle_ns_at(now))),
        kv(
            "polls",
            format!("{} (longest {})", task.polls, fmt_ns(task.max_poll_ns)),
        ),
        kv(
            "wakes",
            format!(
                "{} ({} self-wakes, {} while scheduled)",
                task.wakes, task.self_wakes, task.wakes_while_scheduled
            ),
        ),
        kv(
            "wakers",
            format!(
                "{wakers} live ({} clones, {} drops)",
                task.waker_clones, task.waker_drops
            ),
        ),
    ];
    if let Some(size) = task.future_size {
        lines.push(kv("future size", format!("{size} bytes")));
    }
    if !task.fields.is_empty() {
        let fields: Vec<String> = task
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        lines.push(kv("fields", fields.join(" ")));
    }
    lines
}

/// Percentiles and one bar per bucket between the smallest and largest
/// non-empty ones.
pub(crate) fn histogram_lines(
    title: &str,
    histogram: Option<&Histogram>,
    width: u16,
) -> Vec<Line<'static>> {
    let mut lines = vec![Line::styled(
        title.to_string(),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    let Some(h) = histogram.filter(|h| !h.is_empty()) else {
        lines.push(Line::styled(
            "  no samples yet",
            Style::new().fg(Color::DarkGray),
        ));
        return lines;
    };
    lines.push(Line::raw(format!(
        "  p50 {}  p90 {}  p99 {}  max {}  ({} samples)",
        fmt_ns(h.quantile(0.5)),
        fmt_ns(h.quantile(0.9)),
        fmt_ns(h.quantile(0.99)),
        fmt_ns(h.max_ns),
        h.count
    )));
    let first = h.counts.iter().position(|&c| c > 0).unwrap_or(0);
    let last = h.counts.iter().rposition(|&c| c > 0).unwrap_or(first);
    let max = h.counts[first..=last]
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let cols = (last - first + 1).min(width.saturating_sub(4) as usize);
    let bars: String = h.counts[first..first + cols]
        .iter()
        .map(|&c| {
            if c == 0 {
                ' '
            } else {
                BARS[((c * 7).div_ceil(max)) as usize]
            }
        })
        .collect();
    lines.push(Line::styled(
        format!("  {bars}"),
        Style::new().fg(Color::Green),
    ));
    lines.push(Line::styled(
        format!(
            "  {} … {}",
            fmt_ns(bucket_lower(first)),
            fmt_ns(bucket_lower(last + 1).max(h.max_ns))
        ),
        Style::new().fg(Color::DarkGray),
    ));
    lines
}

fn link_text(state: &ConsoleState, task: &Task, link: Link) -> String {
    let model = state.model();
    match link {
        Link::Task(id) => match model.tasks.get(&id) {
            Some(t) => format!("parent task: {} (id {})", t.display_name(), t.display_id()),
            None => format!("parent task: id {id} (gone)"),
        },
        Link::Resource(rid) => {
            let what = model.resources.get(&rid).map_or_else(
                || format!("resource {rid}"),
                |r| {
                    let mut s = format!("{} {}", r.kind, r.concrete_type);
                    if let Some(l) = &r.location {
                        s.push_str(&format!(" created at {l}"));
                    }
                    s
                },
            );
            let mut roles: Vec<String> = Vec::new();
            for e in model
                .edges
                .iter()
                .filter(|e| e.task_id == task.id && e.resource_id == rid)
            {
                let verb = match e.kind {
                    EdgeKind::Waits => "waits on",
                    EdgeKind::Holds => "holds",
                    EdgeKind::Frees => "must act to free",
                };
                roles.push(if e.op.is_empty() {
                    verb.to_string()
                } else {
                    format!("{verb} ({})", e.op)
                });
            }
            let others: Vec<String> = state
                .resource_links(rid)
                .into_iter()
                .filter(|&(kind, t)| t != task.id && kind != EdgeKind::Waits)
                .map(|(kind, t)| {
                    let name = model
                        .tasks
                        .get(&t)
                        .map_or_else(|| format!("task {t}"), |t| t.display_name());
                    match kind {
                        EdgeKind::Holds => format!("held by {name}"),
                        _ => format!("freed by {name}"),
                    }
                })
                .collect();
            let mut text = format!("{}: {what}", roles.join(", "));
            if !others.is_empty() {
                text.push_str(&format!(" — {}", others.join(", ")));
            }
            text
        }
    }
}
