//! Resources: the table of live resources (kind, type, holders, waiters,
//! attributes), and one resource with the tasks that hold it, can free it
//! and wait on it — each a link to the task.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, Widget, Wrap};
use taskscope_wire::hazards::fmt_ns;
use taskscope_wire::model::{EdgeKind, Resource, ResourceId, Timestamp};

use super::{list_frame, selected_style};
use crate::console::state::ConsoleState;

pub fn render_list(state: &ConsoleState, area: Rect, buf: &mut Buffer) {
    let model = state.model();
    let rows = state.resource_rows();
    let title = vec![
        Span::styled(
            format!(" Resources ({}) ", rows.len()),
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw("Enter: holders and waiters · t: tasks "),
    ];
    let (inner, offset, visible) = list_frame(
        title,
        state.filter().text(),
        " (Esc clears)",
        state.resource_selected(),
        rows,
        area,
        buf,
    );
    let header = Row::new([
        "ID",
        "KIND",
        "TYPE",
        "HOLDERS",
        "WAITERS",
        "LOCATION",
        "ATTRIBUTES",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let table_rows = visible.iter().enumerate().filter_map(|(i, id)| {
        let r = model.resources.get(id)?;
        let holders = model.edges_on(r.id, EdgeKind::Holds).count();
        let waiters = model.edges_on(r.id, EdgeKind::Waits).count();
        let row = Row::new([
            Cell::from(r.id.to_string()),
            Cell::from(r.kind.clone()),
            Cell::from(r.concrete_type.clone()),
            Cell::from(holders.to_string()),
            if waiters > 0 && holders > 0 {
                Cell::from(waiters.to_string()).style(Style::new().fg(Color::Yellow))
            } else {
                Cell::from(waiters.to_string())
            },
            Cell::from(
                r.location
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
            Cell::from(attributes(r)),
        ]);
        Some(if offset + i == state.resource_selected() {
            row.style(selected_style())
        } else {
            row
        })
    });
    Table::new(
        table_rows,
        [
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(18),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Fill(2),
            Constraint::Fill(2),
        ],
    )
    .header(header)
    .column_spacing(1)
    .render(inner, buf);
}

fn attributes(r: &Resource) -> String {
    r.attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn render_details(
    state: &ConsoleState,
    id: ResourceId,
    selected: usize,
    area: Rect,
    buf: &mut Buffer,
) {
    let model = state.model();
    let Some(r) = model.resources.get(&id) else {
        Paragraph::new(format!("resource {id} is gone. Esc: back"))
            .block(Block::default().borders(Borders::TOP).title(" Resource "))
            .render(area, buf);
        return;
    };
    let now = model.updated_at.unwrap_or(Timestamp(0));
    let block = Block::default()
        .borders(Borders::TOP)
        .title(Line::from(vec![
            Span::styled(
                format!(" Resource {} {} ", r.kind, r.concrete_type),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!("id {id} · Esc back ")),
        ]));
    let inner = block.inner(area);
    block.render(area, buf);

    let dim = Style::new().fg(Color::DarkGray);
    let mut lines = vec![
        Line::from(vec![
            Span::styled("   created at ", dim),
            Span::raw(
                r.location
                    .as_ref()
                    .map_or_else(|| "unknown".into(), ToString::to_string),
            ),
        ]),
        Line::from(vec![
            Span::styled("   attributes ", dim),
            Span::raw(match attributes(r) {
                a if a.is_empty() => "none".to_string(),
                a => a,
            }),
        ]),
    ];
    if let Some(p) = r.parent_id {
        lines.push(Line::from(vec![
            Span::styled("       parent ", dim),
            Span::raw(format!("resource {p}")),
        ]));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "Tasks (↑/↓ select, Enter open)",
        Style::new().add_modifier(Modifier::BOLD),
    ));
    let links = state.resource_links(id);
    if links.is_empty() {
        lines.push(Line::styled("  no task holds or waits on it", dim));
    }
    for (i, (kind, task_id)) in links.iter().enumerate() {
        let edge = model
            .edges
            .iter()
            .find(|e| e.resource_id == id && e.task_id == *task_id && e.kind == *kind);
        let role = match kind {
            EdgeKind::Holds => "held by",
            EdgeKind::Frees => "can be freed by",
            EdgeKind::Waits => "waited on by",
        };
        let mut text = match model.tasks.get(task_id) {
            Some(t) => format!("{role} {} (id {})", t.display_name(), t.display_id()),
            None => format!("{role} task {task_id} (gone)"),
        };
        if let Some(e) = edge {
            if !e.op.is_empty() {
                text.push_str(&format!(" · {}", e.op));
            }
            if let Some(since) = e.since {
                text.push_str(&format!(" · for {}", fmt_ns(now.since(since))));
            }
        }
        let marker = if i == selected { "▶ " } else { "  " };
        let style = if i == selected {
            selected_style()
        } else {
            Style::new()
        };
        lines.push(Line::styled(format!("{marker}{text}"), style));
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .render(inner, buf);
}
