//! The problem view (`P`): every hazard finding, and for the selected one
//! its evidence, the catalogue's advice and where it is documented.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget, Wrap};
use taskscope_wire::hazards::HazardKind;

use super::{scroll_offset, selected_style, severity_style};
use crate::console::state::{ConsoleState, DEADLOCK_CYCLE};

/// Where the catalogue lives; anchors are appended.
pub const DOCS: &str = "wire-protocol/docs/hazards.md";

pub fn render(state: &ConsoleState, area: Rect, buf: &mut Buffer) {
    let found = state.hazards();
    let block = Block::default()
        .borders(Borders::TOP)
        .title(Line::from(vec![
            Span::styled(
                format!(" Problems ({}) ", found.len()),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw("Enter: first task · D: cycle as .dot · Esc back "),
        ]));
    let inner = block.inner(area);
    block.render(area, buf);
    if found.is_empty() {
        Paragraph::new(Line::styled(
            "  no hazards found so far",
            Style::new().fg(Color::Green),
        ))
        .render(inner, buf);
        return;
    }
    let list_height = (found.len() as u16 + 1).min(inner.height / 2).max(3);
    let [list, details] =
        Layout::vertical([Constraint::Length(list_height), Constraint::Min(1)]).areas(inner);

    let selected = state.hazard_selected();
    let offset = scroll_offset(selected, list.height as usize);
    let lines: Vec<Line> = found
        .iter()
        .enumerate()
        .skip(offset)
        .take(list.height as usize)
        .map(|(i, h)| {
            let line = Line::from(vec![
                Span::styled(
                    format!(" {:<7} ", h.severity.as_str()),
                    severity_style(h.severity),
                ),
                Span::styled(
                    format!("{:<24} ", h.kind),
                    Style::new().add_modifier(Modifier::BOLD),
                ),
                Span::raw(h.summary.clone()),
            ]);
            if i == selected {
                line.style(selected_style())
            } else {
                line
            }
        })
        .collect();
    Paragraph::new(lines).render(list, buf);

    let Some(h) = found.get(selected) else {
        return;
    };
    let model = state.model();
    let dim = Style::new().fg(Color::DarkGray);
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let info = HazardKind::from_id(&h.kind).map(HazardKind::info);
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("{} ", h.kind), severity_style(h.severity)),
        Span::styled(info.map_or("", |i| i.title).to_string(), bold),
    ])];
    if let Some(l) = &h.location {
        lines.push(Line::from(vec![
            Span::styled("  at ", dim),
            Span::styled(l.to_string(), Style::new().fg(Color::Cyan)),
        ]));
    }
    if let Some(l) = &h.await_point {
        lines.push(Line::from(vec![
            Span::styled("  parked at ", dim),
            Span::styled(l.to_string(), Style::new().fg(Color::Cyan)),
        ]));
    }
    if !h.task_ids.is_empty() {
        let names: Vec<String> = h
            .task_ids
            .iter()
            .map(|id| {
                model.tasks.get(id).map_or_else(
                    || format!("id {id}"),
                    |t| format!("{} (id {id})", t.display_name()),
                )
            })
            .collect();
        lines.push(Line::from(vec![
            Span::styled("  tasks ", dim),
            Span::raw(names.join(", ")),
        ]));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled("Evidence", bold));
    for e in &h.evidence {
        lines.push(Line::raw(format!("  • {e}")));
    }
    if h.evidence.is_empty() {
        lines.push(Line::styled("  • (none recorded)", dim));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled("Advice", bold));
    let advice = if h.advice.is_empty() {
        info.map_or("", |i| i.advice)
    } else {
        &h.advice
    };
    lines.push(Line::raw(format!("  {advice}")));
    let anchor = if h.doc_anchor.is_empty() {
        info.map_or(String::new(), |i| i.doc_anchor.to_string())
    } else {
        h.doc_anchor.clone()
    };
    lines.push(Line::from(vec![
        Span::styled("  docs: ", dim),
        Span::styled(format!("{DOCS}{anchor}"), Style::new().fg(Color::Blue)),
    ]));
    if h.kind == DEADLOCK_CYCLE {
        lines.push(Line::styled(
            "  D writes this cycle as a Graphviz .dot file",
            Style::new().fg(Color::Yellow),
        ));
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .render(details, buf);
}
