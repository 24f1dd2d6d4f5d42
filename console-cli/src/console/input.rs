//! Keys to [`Action`]s: a pure function of the key, the input mode and
//! whether a recording is replayed. The help overlay (`?`) lists the same
//! bindings from [`HELP`], so the two cannot drift apart silently: the
//! tests below check every listed key maps to something.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::state::{Action, InputMode, TaskColumn};

/// One help line: keys and what they do.
pub type HelpLine = (&'static str, &'static str);

/// Bindings valid on every screen.
pub const HELP: &[HelpLine] = &[
    ("↑ ↓ j k  PgUp PgDn  Home End", "move the selection"),
    ("Enter", "open the selected task / resource / link"),
    (
        "Esc  Backspace",
        "back to the previous screen (or clear the filter)",
    ),
    ("t  r  P", "tasks, resources, problems (hazards)"),
    (
        "/",
        "filter by regex over name, location and fields; Enter applies",
    ),
    ("1-0  l", "sort the task table by column (again: reverse)"),
    ("i", "invert the sort order"),
    ("R", "cycle the runtime shown (when several run)"),
    ("p  space", "pause / resume (replay: play / pause)"),
    ("D", "write the deadlock cycle as a Graphviz .dot file"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit"),
];

/// Extra bindings while replaying a recording.
pub const REPLAY_HELP: &[HelpLine] = &[
    ("← →", "seek 5 s back / forward in recorded time"),
    (",  .", "step one update back / forward"),
    ("+  -", "play faster / slower"),
];

/// The action for `key`, if any.
pub fn action_for(key: KeyEvent, mode: InputMode, replay: bool) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    match mode {
        InputMode::Filter => filter_key(key),
        InputMode::Help => match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            KeyCode::Char('?') => Some(Action::ToggleHelp),
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Enter => Some(Action::Back),
            _ => None,
        },
        InputMode::Normal => normal_key(key, replay),
    }
}

fn filter_key(key: KeyEvent) -> Option<Action> {
    match key.code {
        KeyCode::Enter => Some(Action::FilterCommit),
        KeyCode::Esc => Some(Action::FilterCancel),
        KeyCode::Backspace => Some(Action::FilterBackspace),
        KeyCode::Char(c) => Some(Action::FilterChar(c)),
        _ => None,
    }
}

fn normal_key(key: KeyEvent, replay: bool) -> Option<Action> {
    let action = match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Action::Top,
        KeyCode::End | KeyCode::Char('G') => Action::Bottom,
        KeyCode::Enter => Action::Enter,
        KeyCode::Esc | KeyCode::Backspace => Action::Back,
        KeyCode::Char('t') => Action::ShowTasks,
        KeyCode::Char('r') => Action::ShowResources,
        KeyCode::Char('P') => Action::ShowHazards,
        KeyCode::Char('?') => Action::ToggleHelp,
        KeyCode::Char('/') => Action::StartFilter,
        KeyCode::Char('i') => Action::InvertSort,
        KeyCode::Char('R') => Action::NextRuntime,
        KeyCode::Char('p') | KeyCode::Char(' ') => Action::TogglePause,
        KeyCode::Char('D') => Action::ExportDot,
        KeyCode::Left if replay => Action::SeekBack,
        KeyCode::Right if replay => Action::SeekForward,
        KeyCode::Char(',') if replay => Action::StepBack,
        KeyCode::Char('.') if replay => Action::StepForward,
        KeyCode::Char('+') | KeyCode::Char('=') if replay => Action::Faster,
        KeyCode::Char('-') if replay => Action::Slower,
        KeyCode::Char(c) => Action::SortBy(TaskColumn::from_key(c)?),
        _ => return None,
    };
    Some(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn typing_a_filter_does_not_trigger_commands() {
        for c in ['q', 'P', 'D', '/', '1'] {
            assert_eq!(
                action_for(key(KeyCode::Char(c)), InputMode::Filter, false),
                Some(Action::FilterChar(c))
            );
        }
        assert_eq!(
            action_for(key(KeyCode::Enter), InputMode::Filter, false),
            Some(Action::FilterCommit)
        );
    }

    #[test]
    fn seek_keys_only_in_replay() {
        assert_eq!(
            action_for(key(KeyCode::Left), InputMode::Normal, false),
            None
        );
        assert_eq!(
            action_for(key(KeyCode::Left), InputMode::Normal, true),
            Some(Action::SeekBack)
        );
    }

    #[test]
    fn every_sort_key_in_the_help_sorts() {
        for col in TaskColumn::ALL {
            assert_eq!(
                action_for(key(KeyCode::Char(col.key())), InputMode::Normal, false),
                Some(Action::SortBy(col))
            );
        }
    }

    #[test]
    fn ctrl_c_quits_in_every_mode() {
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        for mode in [InputMode::Normal, InputMode::Filter, InputMode::Help] {
            assert_eq!(action_for(ctrl_c, mode, false), Some(Action::Quit));
        }
    }
}
