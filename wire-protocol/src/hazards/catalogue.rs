//! The hazard catalogue (`shared/HAZARDS.md`) as data: one [`HazardInfo`]
//! per stable id, read by the detectors (advice, anchors, default
//! severities), the CI reporters (SARIF rules, JUnit names) and the docs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::Severity;

/// Every hazard id of the catalogue. Serializes as its id (`"lost-waker"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HazardKind {
    LostWaker,
    WakerDroppedUnwoken,
    BlockingPoll,
    SchedulingDelay,
    NeverYielded,
    SelfWakeLoop,
    CancelledMidway,
    RuntimeDroppedWithTasks,
    LeakedTask,
    Futurelock,
    DeadlockCycle,
    NestedRuntime,
    MultipleRuntimes,
    LargeFuture,
    UnboundedGrowth,
    UnpolledFuture,
    HeldAcrossAwait,
}

impl HazardKind {
    /// Every kind, in catalogue order.
    pub const ALL: [HazardKind; 17] = [
        HazardKind::LostWaker,
        HazardKind::WakerDroppedUnwoken,
        HazardKind::BlockingPoll,
        HazardKind::SchedulingDelay,
        HazardKind::NeverYielded,
        HazardKind::SelfWakeLoop,
        HazardKind::CancelledMidway,
        HazardKind::RuntimeDroppedWithTasks,
        HazardKind::LeakedTask,
        HazardKind::Futurelock,
        HazardKind::DeadlockCycle,
        HazardKind::NestedRuntime,
        HazardKind::MultipleRuntimes,
        HazardKind::LargeFuture,
        HazardKind::UnboundedGrowth,
        HazardKind::UnpolledFuture,
        HazardKind::HeldAcrossAwait,
    ];

    /// The stable id, e.g. `"lost-waker"`.
    pub fn id(self) -> &'static str {
        self.info().id
    }

    /// The kind with this id.
    pub fn from_id(id: &str) -> Option<Self> {
        CATALOGUE.iter().find(|i| i.id == id).map(|i| i.kind)
    }

    /// This kind's catalogue entry.
    pub fn info(self) -> &'static HazardInfo {
        // CATALOGUE is in the order of ALL, which is declaration order.
        &CATALOGUE[self as usize]
    }
}

impl fmt::Display for HazardKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// Where taskscope finds a hazard today (the hazard reference's table;
/// `console-cli/tests/report_hazards.rs` checks it against the fixtures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// From a running process's live state or a recording of one
    /// (`console`, `report`, `ci`).
    pub live: bool,
    /// From a core dump, a live process read by `taskscope dump --pid`, or a
    /// debugger (`dump`, `report CORE`, `async-hazards`).
    pub core: bool,
    /// From `Cargo.lock`, without running anything (`ci`).
    #[serde(rename = "lockfile")]
    pub static_: bool,
}

/// One catalogue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HazardInfo {
    pub kind: HazardKind,
    /// Stable id, e.g. `"lost-waker"`.
    pub id: &'static str,
    pub title: &'static str,
    pub default_severity: Severity,
    /// What the trigger is, in one or two sentences.
    pub description: &'static str,
    /// What the user should do.
    pub advice: &'static str,
    /// Anchor in the hazard docs, e.g. `"#lost-waker"`.
    pub doc_anchor: &'static str,
    pub detection: Detection,
}

/// The catalogue, for callers that prefer a type to a function.
#[derive(Debug, Clone, Copy, Default)]
pub struct Catalogue;

impl Catalogue {
    /// Every entry, in catalogue order.
    pub fn all(self) -> &'static [HazardInfo] {
        catalogue()
    }

    /// The entry with this id.
    pub fn get(self, id: &str) -> Option<&'static HazardInfo> {
        HazardKind::from_id(id).map(HazardKind::info)
    }
}

/// Every hazard of `shared/HAZARDS.md`, in catalogue order.
pub fn catalogue() -> &'static [HazardInfo] {
    &CATALOGUE
}

const fn det(live: bool, core: bool, static_: bool) -> Detection {
    Detection {
        live,
        core,
        static_,
    }
}

static CATALOGUE: [HazardInfo; 17] = [
    HazardInfo {
        kind: HazardKind::LostWaker,
        id: "lost-waker",
        title: "Lost waker",
        default_severity: Severity::Error,
        description: "A task returned Pending, is not scheduled, and no clone of its waker is alive: nothing can ever wake it.",
        advice: "A hand-written future or stream returned `Poll::Pending` without storing `cx.waker()` (or a clone) where the event source can reach it. Fix that poll fn: register the waker before returning Pending.",
        doc_anchor: "#lost-waker",
        detection: det(true, true, false),
    },
    HazardInfo {
        kind: HazardKind::WakerDroppedUnwoken,
        id: "waker-dropped-unwoken",
        title: "Waker dropped without a wake",
        default_severity: Severity::Error,
        description: "The task's waker was cloned and every clone was dropped without a wake while the task stayed pending.",
        advice: "Something that held the task's waker (a resource, a channel, a hand-written future) dropped it without calling `wake()`. Make that resource wake its waiters when it is dropped or closed.",
        doc_anchor: "#waker-dropped-unwoken",
        detection: det(true, false, false),
    },
    HazardInfo {
        kind: HazardKind::BlockingPoll,
        id: "blocking-poll",
        title: "Blocking poll",
        default_severity: Severity::Warning,
        description: "One poll ran longer than the threshold, holding a runtime worker thread.",
        advice: "A blocking call (thread::sleep, a std or parking_lot lock, synchronous I/O, heavy CPU work) runs inside async code. Move it to `tokio::task::spawn_blocking` or use the async equivalent.",
        doc_anchor: "#blocking-poll",
        detection: det(true, false, false),
    },
    HazardInfo {
        kind: HazardKind::SchedulingDelay,
        id: "scheduling-delay",
        title: "Scheduling delay",
        default_severity: Severity::Warning,
        description: "A woken task waited longer than the threshold to be polled while a worker stayed inside another task's poll.",
        advice: "Another task's long poll kept the worker busy. Fix the poll that held the thread (see blocking-poll): move blocking work to `spawn_blocking` or add `.await` points.",
        doc_anchor: "#scheduling-delay",
        detection: det(true, false, false),
    },
    HazardInfo {
        kind: HazardKind::NeverYielded,
        id: "never-yielded",
        title: "Task never yielded",
        default_severity: Severity::Warning,
        description: "A task is still inside its first poll after running longer than the threshold.",
        advice: "A loop without `.await` keeps the worker thread. Add `tokio::task::yield_now().await` in the loop, or move the work to `spawn_blocking` or a dedicated thread.",
        doc_anchor: "#never-yielded",
        detection: det(true, false, false),
    },
    HazardInfo {
        kind: HazardKind::SelfWakeLoop,
        id: "self-wake-loop",
        title: "Self-wake loop",
        default_severity: Severity::Warning,
        description: "Most of a task's wakes come from the task itself, over many wakes: it is polling in a loop.",
        advice: "The task wakes itself instead of waiting for an event (busy polling). Wait on a real event: a channel, `Notify`, or the resource's own waker registration.",
        doc_anchor: "#self-wake-loop",
        detection: det(true, false, false),
    },
    HazardInfo {
        kind: HazardKind::CancelledMidway,
        id: "cancelled-midway",
        title: "Cancelled midway",
        default_severity: Severity::Info,
        description: "A task was dropped after at least one poll, before returning Ready (select!, timeout, abort).",
        advice: "Code after the await point where the task was dropped never ran. Check that the work is cancel-safe, or keep the future alive (spawn it, or do not select! over it).",
        doc_anchor: "#cancelled-midway",
        detection: det(true, false, false),
    },
    HazardInfo {
        kind: HazardKind::RuntimeDroppedWithTasks,
        id: "runtime-dropped-with-tasks",
        title: "Runtime dropped with live tasks",
        default_severity: Severity::Warning,
        description: "A runtime shut down while tasks on it were still live; they were dropped at their await points. Seen for multi-thread runtimes (their workers end at shutdown, right after dropping the tasks); a current-thread runtime's shutdown leaves no trace tokio reports, and its tasks show as cancelled-midway.",
        advice: "Keep the runtime alive until the work finishes: await the tasks' JoinHandles (or a JoinSet / TaskTracker) before returning from main or dropping the runtime.",
        doc_anchor: "#runtime-dropped-with-tasks",
        detection: det(true, false, false),
    },
    HazardInfo {
        kind: HazardKind::LeakedTask,
        id: "leaked-task",
        title: "Leaked task",
        default_severity: Severity::Warning,
        description: "A task polled at least once, never completed, idle for a long time, with no waker path that could wake it.",
        advice: "Nobody will finish this task. Find who should wake it (the holder of the resource it waits on), or give it a shutdown signal and await it.",
        doc_anchor: "#leaked-task",
        detection: det(true, true, false),
    },
    HazardInfo {
        kind: HazardKind::Futurelock,
        id: "futurelock",
        title: "Futurelock",
        default_severity: Severity::Warning,
        description: "A future holds an async lock or permit and is not being polled while other tasks wait on that resource.",
        advice: "Do not `select!` on `&mut fut` when `fut` holds a lock or permit: drop the future, or keep polling it until it releases the resource.",
        doc_anchor: "#futurelock",
        detection: det(true, false, false),
    },
    HazardInfo {
        kind: HazardKind::DeadlockCycle,
        id: "deadlock-cycle",
        title: "Deadlock cycle",
        default_severity: Severity::Error,
        description: "A cycle in the wait-for graph: each task waits on a resource that only another task of the cycle can free.",
        advice: "Break the cycle: acquire locks in one global order, do not hold a lock while awaiting a task that needs it, or use a timeout. Export the cycle as Graphviz to see it.",
        doc_anchor: "#deadlock-cycle",
        detection: det(true, true, false),
    },
    HazardInfo {
        kind: HazardKind::NestedRuntime,
        id: "nested-runtime",
        title: "Nested runtime",
        default_severity: Severity::Error,
        description: "block_on, runtime creation or a park ran while the thread was inside a task poll, or a worker of one runtime drove another.",
        advice: "This is the \"cannot start a runtime from within a runtime\" family. Hoist the synchronous call out of async code, or `.await` the async version instead of blocking on it.",
        doc_anchor: "#nested-runtime",
        detection: det(true, false, false),
    },
    HazardInfo {
        kind: HazardKind::MultipleRuntimes,
        id: "multiple-runtimes",
        title: "Multiple runtimes",
        default_severity: Severity::Info,
        description: "More than one async runtime is alive in the process (or two tokio major versions are in Cargo.lock).",
        advice: "Usually accidental, e.g. through `reqwest::blocking` or a library that builds its own runtime. Share one runtime via its `Handle` unless the split is intended.",
        doc_anchor: "#multiple-runtimes",
        detection: det(true, false, true),
    },
    HazardInfo {
        kind: HazardKind::LargeFuture,
        id: "large-future",
        title: "Large future",
        default_severity: Severity::Warning,
        description: "A spawned future is larger than the threshold (tokio boxes large futures itself; the original size is reported).",
        advice: "Box large sub-futures (`Box::pin(fut).await`) or move big buffers to the heap; large futures cost copies and risk stack overflow in debug builds.",
        doc_anchor: "#large-future",
        detection: det(true, false, false),
    },
    HazardInfo {
        kind: HazardKind::UnboundedGrowth,
        id: "unbounded-growth",
        title: "Unbounded growth",
        default_severity: Severity::Warning,
        description: "Live tasks spawned from one site keep growing over the window.",
        advice: "Work is spawned faster than it finishes. Bound the concurrency with a `Semaphore`, a bounded channel or a `JoinSet` with a limit.",
        doc_anchor: "#unbounded-growth",
        detection: det(true, false, false),
    },
    HazardInfo {
        kind: HazardKind::UnpolledFuture,
        id: "unpolled-future",
        title: "Unpolled future",
        default_severity: Severity::Warning,
        description: "An instrumented future was created and dropped, or stayed alive past the threshold, without ever being polled.",
        advice: "Futures are lazy: nothing happens until they are polled. `.await` the future or spawn it.",
        doc_anchor: "#unpolled-future",
        detection: det(true, false, false),
    },
    HazardInfo {
        kind: HazardKind::HeldAcrossAwait,
        id: "held-across-await",
        title: "Sync guard held across await",
        default_severity: Severity::Warning,
        description: "A synchronous guard (std/parking_lot lock, RefCell borrow) was alive when a poll returned Pending.",
        advice: "Drop the guard before the `.await` (end its scope or call `drop(guard)`), or use an async lock if it must be held across the await.",
        doc_anchor: "#held-across-await",
        detection: det(false, true, false),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_of_hazards_md_is_catalogued_in_order() {
        let ids: Vec<&str> = catalogue().iter().map(|i| i.id).collect();
        assert_eq!(
            ids,
            [
                "lost-waker",
                "waker-dropped-unwoken",
                "blocking-poll",
                "scheduling-delay",
                "never-yielded",
                "self-wake-loop",
                "cancelled-midway",
                "runtime-dropped-with-tasks",
                "leaked-task",
                "futurelock",
                "deadlock-cycle",
                "nested-runtime",
                "multiple-runtimes",
                "large-future",
                "unbounded-growth",
                "unpolled-future",
                "held-across-await",
            ]
        );
        for (kind, info) in HazardKind::ALL.iter().zip(catalogue()) {
            assert_eq!(*kind, info.kind, "CATALOGUE follows ALL");
            assert_eq!(info.doc_anchor, format!("#{}", info.id));
            assert_eq!(HazardKind::from_id(info.id), Some(*kind));
            // serde id == catalogue id
            assert_eq!(
                serde_json::to_string(kind).expect("serializes"),
                format!("\"{}\"", info.id)
            );
            assert!(!info.advice.is_empty() && !info.title.is_empty());
        }
        assert_eq!(
            Catalogue.get("futurelock").map(|i| i.kind),
            Some(HazardKind::Futurelock)
        );
        assert!(Catalogue.get("nope").is_none());
    }
}

/// The hazard reference page (`wire-protocol/docs/hazards.md`), rendered from
/// the catalogue so the docs that reports link to never drift from the
/// detectors' own advice. A test regenerates it and fails on any difference.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# taskscope hazard reference\n\n\
         <!-- Generated from wire-protocol/src/hazards/catalogue.rs; \
         regenerate with `TASKSCOPE_BLESS=1 cargo test -p taskscope-wire --test hazard_docs`. -->\n\n\
         Every finding of `taskscope console`, `report`, `ci` and `dump` carries one of \
         these ids. Thresholds are set in `taskscope.toml` (`[hazards]`) or with \
         `taskscope::Builder::hazard_config`.\n\n\
         | id | title | default severity | live or recorded | core dump | Cargo.lock |\n\
         |---|---|---|---|---|---|\n",
    );
    let tick = |b: bool| if b { "yes" } else { "—" };
    for info in catalogue() {
        out.push_str(&format!(
            "| [`{}`]({}) | {} | {} | {} | {} | {} |\n",
            info.id,
            info.doc_anchor,
            info.title,
            info.default_severity,
            tick(info.detection.live),
            tick(info.detection.core),
            tick(info.detection.static_),
        ));
    }
    for info in catalogue() {
        out.push_str(&format!(
            "\n## {}\n\n**{}** — default severity: {}.\n\n**Trigger.** {}\n\n**What to do.** {}\n",
            info.id, info.title, info.default_severity, info.description, info.advice
        ));
    }
    out
}

#[cfg(test)]
mod reference_tests {
    use super::*;

    #[test]
    fn every_hazard_has_a_section_its_anchor_points_to() {
        let page = reference_markdown();
        for info in catalogue() {
            assert_eq!(info.doc_anchor, format!("#{}", info.id));
            assert!(page.contains(&format!("\n## {}\n", info.id)), "{}", info.id);
            assert!(page.contains(info.advice));
        }
    }
}
