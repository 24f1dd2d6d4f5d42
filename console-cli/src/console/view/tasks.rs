//! The task table: one row per task of the filtered, sorted row list. Only
//! the rows that fit are built, whatever the number of tasks.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Row, Table, Widget};
use taskscope_wire::hazards::fmt_ns;
use taskscope_wire::model::{Task, Timestamp};

use super::{scroll_offset, selected_style, severity_style, state_style};
use crate::console::state::{ConsoleState, TaskColumn};

pub fn render(state: &ConsoleState, area: Rect, buf: &mut Buffer) {
    let model = state.model();
    let rows = state.task_rows();
    let (sort, descending) = state.sort();
    let mut title = vec![Span::styled(
        format!(" Tasks ({} of {}) ", rows.len(), model.tasks.len()),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    title.push(Span::raw(format!(
        "sorted by {} {} (keys 1-0, l) ",
        sort.title(),
        if descending { "↓" } else { "↑" }
    )));
    let filter = state.filter().text();
    if !filter.is_empty() {
        title.push(Span::styled(
            format!("filter /{filter}/ "),
            Style::new().fg(Color::Yellow),
        ));
    }
    let block = Block::default()
        .borders(Borders::TOP)
        .title(Line::from(title));
    let inner = block.inner(area);
    block.render(area, buf);

    let height = inner.height.saturating_sub(1) as usize;
    let offset = scroll_offset(state.task_selected(), height);
    let visible = &rows[offset.min(rows.len())..(offset + height).min(rows.len())];
    let now = model.updated_at.unwrap_or(Timestamp(0));
    let id_width = visible
        .iter()
        .filter_map(|id| model.tasks.get(id))
        .map(|t| t.display_id().len())
        .max()
        .unwrap_or(2)
        .max(2) as u16;

    let header = Row::new(TaskColumn::ALL.map(|c| {
        if c == sort {
            Cell::from(format!(
                "{}{}",
                c.title(),
                if descending { "↓" } else { "↑" }
            ))
        } else {
            Cell::from(c.title())
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));

    let table_rows = visible.iter().enumerate().filter_map(|(i, id)| {
        let task = model.tasks.get(id)?;
        let row = task_row(state, task, now);
        Some(if offset + i == state.task_selected() {
            row.style(selected_style())
        } else {
            row
        })
    });
    let widths = TaskColumn::ALL.map(|c| match c {
        TaskColumn::Id => Constraint::Length(id_width + 1),
        TaskColumn::State => Constraint::Length(10),
        TaskColumn::Name => Constraint::Fill(3),
        TaskColumn::Total | TaskColumn::Busy | TaskColumn::Scheduled | TaskColumn::Idle => {
            Constraint::Length(9)
        }
        TaskColumn::Polls => Constraint::Length(8),
        TaskColumn::Wakers => Constraint::Length(7),
        TaskColumn::Warnings => Constraint::Length(5),
        TaskColumn::Location => Constraint::Fill(2),
    });
    Table::new(table_rows, widths)
        .header(header)
        .column_spacing(1)
        .render(inner, buf);
}

fn task_row<'a>(state: &'a ConsoleState, task: &'a Task, now: Timestamp) -> Row<'a> {
    let worst = state.hazards_of(task.id).map(|h| h.severity).max();
    let count = state.hazards_of(task.id).count();
    let cells = TaskColumn::ALL.map(|c| match c {
        TaskColumn::Id => Cell::from(task.display_id()),
        TaskColumn::State => Cell::from(task.state.as_str()).style(state_style(task.state)),
        TaskColumn::Name => Cell::from(task.display_name()),
        TaskColumn::Total => Cell::from(fmt_ns(task.total_ns(now))),
        TaskColumn::Busy => Cell::from(fmt_ns(task.busy_ns)),
        TaskColumn::Scheduled => Cell::from(fmt_ns(task.scheduled_ns)),
        TaskColumn::Idle => Cell::from(fmt_ns(task.idle_ns_at(now))),
        TaskColumn::Polls => Cell::from(task.polls.to_string()),
        TaskColumn::Wakers => Cell::from(match task.live_wakers() {
            n if n < 0 => "?".to_string(),
            n => n.to_string(),
        }),
        TaskColumn::Warnings => match worst {
            Some(s) => Cell::from(format!("⚠ {count}")).style(severity_style(s)),
            None => Cell::from(""),
        },
        TaskColumn::Location => Cell::from(
            task.location
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        ),
    });
    Row::new(cells)
}
