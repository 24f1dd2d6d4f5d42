//! The task table: one row per task of the filtered, sorted row list. Only
//! the rows that fit are built, whatever the number of tasks.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row, Table, Widget};
use taskscope_wire::hazards::fmt_ns;
use taskscope_wire::model::{Task, TaskState, Timestamp};

use super::{list_frame, selected_style, severity_style, state_style};
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
    let (inner, offset, visible) = list_frame(
        title,
        state.filter().text(),
        "",
        state.task_selected(),
        rows,
        area,
        buf,
    );
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
        TaskColumn::State => Constraint::Length(14),
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

/// The state with its history: the share of the task's life spent in the
/// activity it is in now (`running 97%` is a task that hardly ever yields,
/// `idle 100%` one that has been parked nearly all its life).
fn state_with_history(task: &Task, now: Timestamp) -> String {
    let total = task.total_ns(now);
    let spent = match task.state {
        // Busy time counts finished polls; add the one in progress.
        TaskState::Running => match (task.last_poll_started, task.last_poll_ended) {
            (Some(s), e) if e.is_none_or(|e| e < s) => task.busy_ns + now.since(s),
            _ => task.busy_ns,
        },
        TaskState::Scheduled => task.scheduled_ns,
        TaskState::Idle => task.idle_ns_at(now),
        _ => return task.state.as_str().to_string(),
    };
    if total == 0 {
        return task.state.as_str().to_string();
    }
    let pct = (spent as f64 * 100.0 / total as f64).round().min(100.0);
    format!("{} {pct:.0}%", task.state.as_str())
}

fn task_row<'a>(state: &'a ConsoleState, task: &'a Task, now: Timestamp) -> Row<'a> {
    let worst = state.hazards_of(task.id).map(|h| h.severity).max();
    let count = state.hazards_of(task.id).count();
    let cells = TaskColumn::ALL.map(|c| match c {
        TaskColumn::Id => Cell::from(task.display_id()),
        TaskColumn::State => {
            Cell::from(state_with_history(task, now)).style(state_style(task.state))
        }
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
