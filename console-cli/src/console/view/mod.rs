//! Drawing the console: pure functions from [`ConsoleState`] to a ratatui
//! [`Buffer`]. Nothing here reads a clock, the terminal or the network, so a
//! `TestBackend` frame after a scripted key sequence is a faithful
//! screenshot (the snapshot tests rely on that).
//!
//! # Layout, top to bottom
//! * the deadlock banner, when a cycle exists;
//! * the runtime selector, when several runtimes exist;
//! * the current screen ([`tasks`], [`task`], [`resources`], [`hazards`]);
//! * the filter / message / error line, when there is one;
//! * the replay timeline, when replaying;
//! * the status line (target, protocol, connection, counts, dropped events).
//!
//! The `?` overlay is drawn last, over everything.
//!
//! Callers run [`ConsoleState::refresh`] before drawing so the cached row
//! lists are current; drawing itself touches only the visible rows.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget, Wrap};
use taskscope_wire::hazards::fmt_ns;
use taskscope_wire::model::{Severity, TaskState};

use super::input::{HELP, REPLAY_HELP};
use super::state::{Connection, ConsoleState, Screen, DEADLOCK_CYCLE};

pub mod hazards;
pub mod resources;
pub mod task;
pub mod tasks;

/// Draws the whole screen into `buf` over `area`.
pub fn draw(state: &ConsoleState, area: Rect, buf: &mut Buffer) {
    let banner = state.deadlock().is_some();
    let runtimes = state.runtimes().len() > 1;
    let note = state.filter().editing.is_some()
        || state.filter().error.is_some()
        || connection_error(state).is_some()
        || state.error().is_some()
        || state.message().is_some();
    let replay = state.timeline().is_some();
    let [banner_area, runtime_area, main, note_area, timeline_area, status_area] =
        Layout::vertical([
            Constraint::Length(u16::from(banner)),
            Constraint::Length(u16::from(runtimes)),
            Constraint::Min(3),
            Constraint::Length(u16::from(note)),
            Constraint::Length(u16::from(replay)),
            Constraint::Length(1),
        ])
        .areas(area);
    if banner {
        draw_banner(state, banner_area, buf);
    }
    if runtimes {
        draw_runtimes(state, runtime_area, buf);
    }
    match state.screen() {
        Screen::Tasks => tasks::render(state, main, buf),
        Screen::Task { id, selected } => task::render(state, id, selected, main, buf),
        Screen::Resources => resources::render_list(state, main, buf),
        Screen::Resource { id, selected } => {
            resources::render_details(state, id, selected, main, buf)
        }
        Screen::Hazards => hazards::render(state, main, buf),
    }
    if note {
        draw_note(state, note_area, buf);
    }
    if replay {
        draw_timeline(state, timeline_area, buf);
    }
    draw_status(state, status_area, buf);
    if state.help_open() {
        draw_help(state, area, buf);
    }
}

fn draw_banner(state: &ConsoleState, area: Rect, buf: &mut Buffer) {
    let Some(cycle) = state.deadlock() else {
        return;
    };
    let model = state.model();
    let names: Vec<String> = cycle
        .task_ids
        .iter()
        .map(|id| {
            model
                .tasks
                .get(id)
                .map_or_else(|| format!("task {id}"), |t| t.display_name())
        })
        .collect();
    let mut chain = names.join(" → ");
    if let Some(first) = names.first() {
        chain.push_str(" → ");
        chain.push_str(first);
    }
    let more = state
        .hazards()
        .iter()
        .filter(|h| h.kind == DEADLOCK_CYCLE)
        .count()
        .saturating_sub(1);
    let more = if more > 0 {
        format!(" (+{more} more)")
    } else {
        String::new()
    };
    let line = Line::from(vec![
        Span::styled(
            " DEADLOCK ",
            Style::new()
                .bg(Color::Red)
                .fg(Color::White)
                .add_modifier(Modifier::BOLD),
        ),
        Span::styled(
            format!(" {chain}{more}  ·  P: problems  D: write .dot "),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
    ]);
    Paragraph::new(line).render(area, buf);
}

fn draw_runtimes(state: &ConsoleState, area: Rect, buf: &mut Buffer) {
    let mut spans = vec![Span::raw(" runtime (R): ")];
    let selected = state.runtime();
    let mut push = |label: String, on: bool| {
        let style = if on {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        spans.push(Span::styled(format!(" {label} "), style));
        spans.push(Span::raw(" "));
    };
    push("all".into(), selected.is_none());
    for (id, name) in state.runtimes().iter() {
        let label = if name.is_empty() {
            format!("#{id}")
        } else {
            format!("{name} #{id}")
        };
        push(label, selected == Some(*id));
    }
    Paragraph::new(Line::from(spans)).render(area, buf);
}

fn draw_note(state: &ConsoleState, area: Rect, buf: &mut Buffer) {
    let filter = state.filter();
    let line = if let Some(text) = &filter.editing {
        Line::from(vec![
            Span::styled("/", Style::new().fg(Color::Yellow)),
            Span::raw(text.clone()),
            Span::styled("▏", Style::new().fg(Color::Yellow)),
            Span::styled(
                "   regex over name, location, fields · Enter apply · Esc cancel",
                Style::new().fg(Color::DarkGray),
            ),
        ])
    } else if let Some(e) = filter
        .error
        .as_deref()
        .or(state.error())
        .or(connection_error(state))
    {
        Line::styled(format!("error: {e}"), Style::new().fg(Color::Red))
    } else {
        Line::styled(
            state.message().unwrap_or_default().to_string(),
            Style::new().fg(Color::Cyan),
        )
    };
    Paragraph::new(line).render(area, buf);
}

/// Why the last connection attempt failed, while reconnecting.
fn connection_error(state: &ConsoleState) -> Option<&str> {
    match state.connection() {
        Connection::Reconnecting { error, .. } => Some(error),
        _ => None,
    }
}

/// `mm:ss.d` of recorded time.
fn clock(ns: u64) -> String {
    let tenths = ns / 100_000_000;
    format!(
        "{:02}:{:02}.{}",
        tenths / 600,
        (tenths / 10) % 60,
        tenths % 10
    )
}

fn draw_timeline(state: &ConsoleState, area: Rect, buf: &mut Buffer) {
    let Some(t) = state.timeline() else {
        return;
    };
    let icon = if t.is_playing() {
        "▶ playing"
    } else {
        "⏸ paused "
    };
    let speed = t.speed();
    let speed = if speed >= 1.0 {
        format!("{speed:.0}×")
    } else {
        format!("{speed}×")
    };
    let head = format!(
        " {icon} {speed:>6}  {} / {}  update {}/{} ",
        clock(t.position_ns()),
        clock(t.duration_ns()),
        t.applied(),
        t.len()
    );
    let tail = " ←/→ seek  ,/. step  +/- speed ";
    let bar_width = (area.width as usize).saturating_sub(head.chars().count() + tail.len() + 2);
    let filled = if t.duration_ns() == 0 {
        bar_width
    } else {
        (bar_width as u128 * u128::from(t.position_ns()) / u128::from(t.duration_ns())) as usize
    };
    let line = Line::from(vec![
        Span::styled(head, Style::new().fg(Color::Black).bg(Color::Cyan)),
        Span::raw("["),
        Span::styled("━".repeat(filled), Style::new().fg(Color::Cyan)),
        Span::styled(
            "─".repeat(bar_width.saturating_sub(filled)),
            Style::new().fg(Color::DarkGray),
        ),
        Span::raw("]"),
        Span::styled(tail, Style::new().fg(Color::DarkGray)),
    ]);
    Paragraph::new(line).render(area, buf);
}

fn draw_status(state: &ConsoleState, area: Rect, buf: &mut Buffer) {
    let model = state.model();
    let (conn, conn_style) = match state.connection() {
        Connection::Connecting { attempt } if *attempt <= 1 => {
            ("connecting…".to_string(), Style::new().fg(Color::Yellow))
        }
        Connection::Connecting { attempt } => (
            format!("reconnecting (attempt {attempt})…"),
            Style::new().fg(Color::Yellow),
        ),
        Connection::Connected { protocol } => (
            format!("{protocol} · connected"),
            Style::new().fg(Color::Green),
        ),
        Connection::Reconnecting {
            attempt, retry_in, ..
        } => (
            format!(
                "disconnected, retry {attempt} in {}",
                fmt_ns(retry_in.as_nanos() as u64)
            ),
            Style::new().fg(Color::Red),
        ),
        Connection::Replay => ("recording".to_string(), Style::new().fg(Color::Cyan)),
    };
    let (live, live_resources) = state.live_counts();
    let mut spans = vec![
        Span::styled(" taskscope ", Style::new().bg(Color::Blue).fg(Color::White)),
        Span::raw(format!(" {} ", state.target())),
        Span::styled(conn, conn_style),
    ];
    if state.timeline().is_none() && state.is_paused() {
        spans.push(Span::raw(" "));
        spans.push(Span::styled(
            format!(" PAUSED ({} updates held) ", state.held_events()),
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    spans.extend([Span::raw(format!(
        " │ {live} live tasks, {live_resources} resources, {} hazards",
        state.hazards().len()
    ))]);
    let dropped = model.dropped.total();
    if dropped > 0 {
        spans.push(Span::styled(
            format!(" │ dropped {dropped} events"),
            Style::new().fg(Color::Yellow),
        ));
    } else {
        spans.push(Span::raw(" │ dropped 0"));
    }
    spans.push(Span::styled(" │ ? help", Style::new().fg(Color::DarkGray)));
    Paragraph::new(Line::from(spans)).render(area, buf);
}

/// What each screen is, for the help overlay.
fn screen_help(screen: Screen) -> &'static str {
    match screen {
        Screen::Tasks => "Tasks: every task of the target. STATE is what it does now; BUSY is time inside poll, SCHED time woken but not yet polled, IDLE time waiting for a wake. WAKERS counts live waker clones (0 on an idle task: nothing can wake it). WARN counts hazard findings.",
        Screen::Task { .. } => "Task: one task's statistics, poll- and scheduled-time distributions, its logical backtrace (where it awaits), and the resources it waits on, holds or must free. Enter follows the selected link.",
        Screen::Resources => "Resources: tokio's synchronisation primitives, timers and I/O resources, with the tasks holding them and waiting on them. Enter opens one.",
        Screen::Resource { .. } => "Resource: who holds it, who waits on it, and who can free it. Enter opens the selected task.",
        Screen::Hazards => "Problems: every hazard finding with its evidence, the advice for it and where the catalogue documents it. Enter opens the first task involved; D writes a deadlock cycle as Graphviz .dot.",
    }
}

fn draw_help(state: &ConsoleState, area: Rect, buf: &mut Buffer) {
    let mut lines = vec![
        Line::styled(
            screen_help(state.screen()).to_string(),
            Style::new().fg(Color::Cyan),
        ),
        Line::raw(""),
    ];
    let keys = HELP.iter().chain(if state.timeline().is_some() {
        REPLAY_HELP
    } else {
        &[]
    });
    for (k, what) in keys {
        lines.push(Line::from(vec![
            Span::styled(
                format!("{k:>30}  "),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw(*what),
        ]));
    }
    let height = (lines.len() as u16 + 6).min(area.height);
    let width = 96.min(area.width);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    Clear.render(popup, buf);
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" help — ? or Esc closes "),
        )
        .render(popup, buf);
}

// ---- shared bits ----

pub(crate) fn state_style(state: TaskState) -> Style {
    match state {
        TaskState::Running => Style::new().fg(Color::Green),
        TaskState::Scheduled => Style::new().fg(Color::Cyan),
        TaskState::Idle | TaskState::Unknown => Style::new(),
        TaskState::Completed => Style::new().fg(Color::DarkGray),
        TaskState::Cancelled | TaskState::Panicked => Style::new().fg(Color::Red),
    }
}

pub(crate) fn severity_style(s: Severity) -> Style {
    match s {
        Severity::Error => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Severity::Warning => Style::new().fg(Color::Yellow),
        Severity::Info => Style::new().fg(Color::Cyan),
    }
}

pub(crate) fn selected_style() -> Style {
    Style::new().add_modifier(Modifier::REVERSED)
}

/// Draws a list's frame: its title, then the active filter (with `hint`,
/// e.g. how to clear it). Returns the area inside the frame and the rows
/// that fit under the list's header line, scrolled to keep `selected` shown,
/// with the index of the first of them.
pub(crate) fn list_frame<'r, T>(
    mut title: Vec<Span<'_>>,
    filter: &str,
    hint: &str,
    selected: usize,
    rows: &'r [T],
    area: Rect,
    buf: &mut Buffer,
) -> (Rect, usize, &'r [T]) {
    if !filter.is_empty() {
        title.push(Span::styled(
            format!("filter /{filter}/{hint} "),
            Style::new().fg(Color::Yellow),
        ));
    }
    let block = Block::default()
        .borders(Borders::TOP)
        .title(Line::from(title));
    let inner = block.inner(area);
    block.render(area, buf);
    let height = inner.height.saturating_sub(1) as usize;
    let offset = scroll_offset(selected, height);
    let visible = &rows[offset.min(rows.len())..(offset + height).min(rows.len())];
    (inner, offset, visible)
}

/// The first row to show so that `selected` is visible in `height` rows.
pub(crate) fn scroll_offset(selected: usize, height: usize) -> usize {
    if height == 0 || selected < height {
        0
    } else {
        selected + 1 - height
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_clock_reads_minutes_seconds_tenths() {
        assert_eq!(clock(0), "00:00.0");
        assert_eq!(clock(65_400_000_000), "01:05.4");
    }

    #[test]
    fn scrolling_keeps_the_selection_visible() {
        assert_eq!(scroll_offset(3, 10), 0);
        assert_eq!(scroll_offset(10, 10), 1);
        assert_eq!(scroll_offset(99, 10), 90);
    }
}
