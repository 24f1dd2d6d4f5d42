//! Logical async backtraces from live tracing spans.
//!
//! A `#[tracing::instrument]`ed async fn creates its span when it is called
//! and keeps it until its future is dropped; between polls the span is not
//! entered, but it is alive. So the live user spans created inside a task
//! form a tree rooted at the task, and the chain from the root to the span
//! entered most recently is where the task is parked right now: its logical
//! backtrace, outermost first.
//!
//! Only tasks that have such spans pay: the tree is allocated at the first
//! user span (8 bytes per task otherwise).

use std::sync::{Mutex, OnceLock};

use taskscope_wire::model::{Frame, Location};

/// One live user span inside a task.
pub(crate) struct SpanNode {
    pub span_id: u64,
    /// The parent user span, or 0 when the parent is the task itself.
    pub parent: u64,
    pub name: &'static str,
    pub file: Option<&'static str>,
    pub line: u32,
    pub module_path: Option<&'static str>,
    pub fields: String,
    /// Monotonic sequence of the last enter (creation counts as one).
    pub last_entered: u64,
}

/// The live user spans of one task.
#[derive(Default)]
pub(crate) struct SpanTree {
    nodes: OnceLock<Box<Mutex<Vec<SpanNode>>>>,
}

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_seq() -> u64 {
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Spans kept per task; deeper trees keep their oldest spans and count the
/// rest in the `backtrace_frames` drop counter.
const MAX_SPANS_PER_TASK: usize = 256;

pub(crate) static DROPPED_FRAMES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

impl SpanTree {
    fn with<R>(&self, f: impl FnOnce(&mut Vec<SpanNode>) -> R) -> Option<R> {
        let m = self.nodes.get()?;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        Some(f(&mut g))
    }

    pub(crate) fn add(&self, mut node: SpanNode) {
        node.last_entered = next_seq();
        let m = self.nodes.get_or_init(Default::default);
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() >= MAX_SPANS_PER_TASK {
            DROPPED_FRAMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        g.push(node);
    }

    pub(crate) fn entered(&self, span_id: u64) {
        self.with(|v| {
            if let Some(n) = v.iter_mut().find(|n| n.span_id == span_id) {
                n.last_entered = next_seq();
            }
        });
    }

    pub(crate) fn remove(&self, span_id: u64) {
        self.with(|v| v.retain(|n| n.span_id != span_id));
    }

    /// The chain from the task down to the most recently entered live span.
    pub(crate) fn backtrace(&self) -> Vec<Frame> {
        self.with(|v| {
            let Some(leaf) = v.iter().max_by_key(|n| n.last_entered) else {
                return Vec::new();
            };
            let mut chain = Vec::new();
            let mut cur = Some(leaf);
            while let Some(n) = cur {
                if chain.len() > v.len() {
                    break; // a cycle cannot happen, but never loop forever
                }
                chain.push(Frame {
                    name: n.name.to_string(),
                    location: n.file.map(|f| Location {
                        file: f.to_string(),
                        line: n.line,
                        column: 0,
                        module_path: n.module_path.unwrap_or_default().to_string(),
                    }),
                    detail: n.fields.clone(),
                });
                cur = if n.parent == 0 {
                    None
                } else {
                    v.iter().find(|p| p.span_id == n.parent)
                };
            }
            chain.reverse();
            chain
        })
        .unwrap_or_default()
    }

    pub(crate) fn innermost_location(&self) -> Option<Location> {
        self.with(|v| {
            v.iter()
                .max_by_key(|n| n.last_entered)
                .and_then(|n| n.file.map(|f| Location::new(f, n.line, 0)))
        })
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, parent: u64, name: &'static str) -> SpanNode {
        SpanNode {
            span_id: id,
            parent,
            name,
            file: Some("src/main.rs"),
            line: id as u32,
            module_path: None,
            fields: String::new(),
            last_entered: 0,
        }
    }

    #[test]
    fn the_chain_follows_the_latest_entered_leaf() {
        let t = SpanTree::default();
        assert!(t.backtrace().is_empty());
        t.add(node(1, 0, "handle"));
        t.add(node(2, 1, "load"));
        t.add(node(3, 1, "save"));
        t.entered(2);
        let names: Vec<_> = t.backtrace().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["handle", "load"]);
        t.remove(2);
        let names: Vec<_> = t.backtrace().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["handle", "save"]);
    }
}
