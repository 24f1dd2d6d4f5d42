//! Conversions between the domain model ([`crate::model`]) and the generated
//! wire types ([`crate::proto`]).
//!
//! Every message converts both ways: `impl From<&model::X> for proto::X` for
//! the sending side (servers, the recorder) and `impl From<proto::X> for
//! model::X` for the receiving side (clients, replay). A model value survives
//! the round trip unchanged.
//!
//! # Absent values on the wire
//! proto3 scalars have no "absent" state, so the wire uses the zero value for
//! "unknown": an id, size or count of `0` and an empty string decode to
//! `None` where the model has an `Option`. taskscope never assigns id `0`
//! (tokio's task ids, tracing span ids and runtime ids all start at 1) and a
//! future of size 0 is reported as unknown.
//!
//! # Data from the network
//! The receiving direction never panics, whatever arrives:
//! * timestamps before the Unix epoch clamp to the epoch, out-of-range
//!   nanoseconds are clamped, and times past the year 2554 saturate;
//! * enum values this version does not know map to the `Unknown` variant
//!   (edges of unknown kind and severities of unknown level are documented on
//!   [`edge_kind_from_wire`] and [`severity_from_wire`]);
//! * a histogram of a scheme this version does not know decodes to `None`
//!   inside a task, and bucket indices out of range are skipped (see
//!   [`histogram_from_wire`] for the strict form that reports why).

use std::collections::BTreeMap;

use crate::histogram::{self, Histogram};
use crate::model;
use crate::proto;

// === timestamps ===

const NANOS_PER_SEC: u64 = 1_000_000_000;

impl From<model::Timestamp> for prost_types::Timestamp {
    fn from(t: model::Timestamp) -> Self {
        prost_types::Timestamp {
            // u64::MAX / 1e9 fits an i64 easily.
            seconds: (t.0 / NANOS_PER_SEC) as i64,
            nanos: (t.0 % NANOS_PER_SEC) as i32,
        }
    }
}

impl From<prost_types::Timestamp> for model::Timestamp {
    fn from(t: prost_types::Timestamp) -> Self {
        if t.seconds < 0 {
            return model::Timestamp(0);
        }
        let nanos = t.nanos.clamp(0, NANOS_PER_SEC as i32 - 1) as u64;
        model::Timestamp(
            (t.seconds as u64)
                .saturating_mul(NANOS_PER_SEC)
                .saturating_add(nanos),
        )
    }
}

fn ts_to_wire(t: Option<model::Timestamp>) -> Option<prost_types::Timestamp> {
    t.map(Into::into)
}

fn ts_from_wire(t: Option<prost_types::Timestamp>) -> Option<model::Timestamp> {
    t.map(Into::into)
}

fn opt_from_zero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

fn opt_string(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn map_to_wire(m: &BTreeMap<String, String>) -> std::collections::HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn map_from_wire(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

// === location ===

impl From<&model::Location> for proto::Location {
    fn from(l: &model::Location) -> Self {
        proto::Location {
            file: l.file.clone(),
            line: l.line,
            column: l.column,
            module_path: l.module_path.clone(),
        }
    }
}

impl From<proto::Location> for model::Location {
    fn from(l: proto::Location) -> Self {
        model::Location {
            file: l.file,
            line: l.line,
            column: l.column,
            module_path: l.module_path,
        }
    }
}

fn loc_to_wire(l: &Option<model::Location>) -> Option<proto::Location> {
    l.as_ref().map(Into::into)
}

fn loc_from_wire(l: Option<proto::Location>) -> Option<model::Location> {
    l.map(Into::into)
}

// === histogram ===

/// Why a wire histogram could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistogramError {
    #[error("histogram uses bucket scheme {found}, this version understands scheme {supported}")]
    UnknownScheme { found: u32, supported: u32 },
    #[error(
        "histogram bucket index {index} is out of range (scheme {scheme} has {buckets} buckets)"
    )]
    BucketOutOfRange {
        index: u32,
        scheme: u32,
        buckets: usize,
    },
    #[error("histogram has {indices} bucket indices but {counts} bucket counts")]
    LengthMismatch { indices: usize, counts: usize },
}

impl From<&Histogram> for proto::Histogram {
    fn from(h: &Histogram) -> Self {
        let mut bucket_index = Vec::new();
        let mut bucket_count = Vec::new();
        for (i, c) in h.counts.iter().enumerate().take(histogram::BUCKETS) {
            if *c > 0 {
                bucket_index.push(i as u32);
                bucket_count.push(*c);
            }
        }
        proto::Histogram {
            scheme: histogram::SCHEME,
            bucket_index,
            bucket_count,
            min_ns: h.min_ns,
            max_ns: h.max_ns,
            count: h.count,
        }
    }
}

/// Strictly decodes a wire histogram, reporting the first problem found.
///
/// The total `count` is recomputed from the buckets rather than trusted.
pub fn histogram_from_wire(h: &proto::Histogram) -> Result<Histogram, HistogramError> {
    if h.scheme != histogram::SCHEME {
        return Err(HistogramError::UnknownScheme {
            found: h.scheme,
            supported: histogram::SCHEME,
        });
    }
    if h.bucket_index.len() != h.bucket_count.len() {
        return Err(HistogramError::LengthMismatch {
            indices: h.bucket_index.len(),
            counts: h.bucket_count.len(),
        });
    }
    let mut counts = vec![0u64; histogram::BUCKETS];
    for (&i, &c) in h.bucket_index.iter().zip(&h.bucket_count) {
        let slot = counts
            .get_mut(i as usize)
            .ok_or(HistogramError::BucketOutOfRange {
                index: i,
                scheme: h.scheme,
                buckets: histogram::BUCKETS,
            })?;
        *slot = slot.saturating_add(c);
    }
    Ok(Histogram {
        count: counts.iter().fold(0u64, |a, c| a.saturating_add(*c)),
        counts,
        min_ns: h.min_ns,
        max_ns: h.max_ns,
    })
}

/// Lenient decoding: buckets out of range and unpaired indices or counts are
/// skipped; a histogram of an unknown scheme decodes as empty (use
/// [`histogram_from_wire`] to tell the difference).
impl From<proto::Histogram> for Histogram {
    fn from(h: proto::Histogram) -> Self {
        if h.scheme != histogram::SCHEME {
            return Histogram::default();
        }
        let mut counts = vec![0u64; histogram::BUCKETS];
        for (&i, &c) in h.bucket_index.iter().zip(&h.bucket_count) {
            if let Some(slot) = counts.get_mut(i as usize) {
                *slot = slot.saturating_add(c);
            }
        }
        Histogram {
            count: counts.iter().fold(0u64, |a, c| a.saturating_add(*c)),
            counts,
            min_ns: h.min_ns,
            max_ns: h.max_ns,
        }
    }
}

/// Inside a task, a histogram that cannot be decoded is dropped rather than
/// shown wrong.
fn hist_from_wire(h: Option<proto::Histogram>) -> Option<Histogram> {
    h.and_then(|h| histogram_from_wire(&h).ok())
}

// === enums ===

impl From<model::TaskState> for proto::TaskState {
    fn from(s: model::TaskState) -> Self {
        match s {
            model::TaskState::Unknown => proto::TaskState::Unknown,
            model::TaskState::Idle => proto::TaskState::Idle,
            model::TaskState::Scheduled => proto::TaskState::Scheduled,
            model::TaskState::Running => proto::TaskState::Running,
            model::TaskState::Completed => proto::TaskState::Completed,
            model::TaskState::Cancelled => proto::TaskState::Cancelled,
            model::TaskState::Panicked => proto::TaskState::Panicked,
        }
    }
}

impl From<proto::TaskState> for model::TaskState {
    fn from(s: proto::TaskState) -> Self {
        match s {
            proto::TaskState::Unknown => model::TaskState::Unknown,
            proto::TaskState::Idle => model::TaskState::Idle,
            proto::TaskState::Scheduled => model::TaskState::Scheduled,
            proto::TaskState::Running => model::TaskState::Running,
            proto::TaskState::Completed => model::TaskState::Completed,
            proto::TaskState::Cancelled => model::TaskState::Cancelled,
            proto::TaskState::Panicked => model::TaskState::Panicked,
        }
    }
}

/// A task state from its wire value; values from newer versions are
/// [`model::TaskState::Unknown`].
pub fn task_state_from_wire(v: i32) -> model::TaskState {
    proto::TaskState::try_from(v)
        .map(Into::into)
        .unwrap_or(model::TaskState::Unknown)
}

impl From<model::EdgeKind> for proto::EdgeKind {
    fn from(k: model::EdgeKind) -> Self {
        match k {
            model::EdgeKind::Waits => proto::EdgeKind::Waits,
            model::EdgeKind::Holds => proto::EdgeKind::Holds,
            model::EdgeKind::Frees => proto::EdgeKind::Frees,
        }
    }
}

/// An edge kind from its wire value, `None` for `EDGE_KIND_UNKNOWN` and
/// values from newer versions. [`crate::model::State::apply`] drops such
/// edges; the plain `From<proto::WaitEdge>` conversion reads them as
/// [`model::EdgeKind::Waits`].
pub fn edge_kind_from_wire(v: i32) -> Option<model::EdgeKind> {
    match proto::EdgeKind::try_from(v).ok()? {
        proto::EdgeKind::Unknown => None,
        proto::EdgeKind::Waits => Some(model::EdgeKind::Waits),
        proto::EdgeKind::Holds => Some(model::EdgeKind::Holds),
        proto::EdgeKind::Frees => Some(model::EdgeKind::Frees),
    }
}

impl From<model::Severity> for proto::Severity {
    fn from(s: model::Severity) -> Self {
        match s {
            model::Severity::Info => proto::Severity::Info,
            model::Severity::Warning => proto::Severity::Warning,
            model::Severity::Error => proto::Severity::Error,
        }
    }
}

/// A severity from its wire value; `SEVERITY_UNKNOWN` and values from newer
/// versions read as [`model::Severity::Warning`] (the model's default).
pub fn severity_from_wire(v: i32) -> model::Severity {
    match proto::Severity::try_from(v) {
        Ok(proto::Severity::Info) => model::Severity::Info,
        Ok(proto::Severity::Error) => model::Severity::Error,
        _ => model::Severity::Warning,
    }
}

impl From<model::RuntimeFlavor> for proto::RuntimeFlavor {
    fn from(f: model::RuntimeFlavor) -> Self {
        match f {
            model::RuntimeFlavor::Unknown => proto::RuntimeFlavor::Unknown,
            model::RuntimeFlavor::CurrentThread => proto::RuntimeFlavor::CurrentThread,
            model::RuntimeFlavor::MultiThread => proto::RuntimeFlavor::MultiThread,
            model::RuntimeFlavor::Other => proto::RuntimeFlavor::Other,
        }
    }
}

/// A runtime flavor from its wire value; unknown values read as
/// [`model::RuntimeFlavor::Unknown`].
pub fn runtime_flavor_from_wire(v: i32) -> model::RuntimeFlavor {
    match proto::RuntimeFlavor::try_from(v) {
        Ok(proto::RuntimeFlavor::CurrentThread) => model::RuntimeFlavor::CurrentThread,
        Ok(proto::RuntimeFlavor::MultiThread) => model::RuntimeFlavor::MultiThread,
        Ok(proto::RuntimeFlavor::Other) => model::RuntimeFlavor::Other,
        _ => model::RuntimeFlavor::Unknown,
    }
}

// === frame ===

impl From<&model::Frame> for proto::Frame {
    fn from(f: &model::Frame) -> Self {
        proto::Frame {
            name: f.name.clone(),
            location: loc_to_wire(&f.location),
            detail: f.detail.clone(),
        }
    }
}

impl From<proto::Frame> for model::Frame {
    fn from(f: proto::Frame) -> Self {
        model::Frame {
            name: f.name,
            location: loc_from_wire(f.location),
            detail: f.detail,
        }
    }
}

// === task ===

impl From<&model::Task> for proto::Task {
    fn from(t: &model::Task) -> Self {
        proto::Task {
            id: t.id,
            tokio_id: t.tokio_id.unwrap_or(0),
            runtime_id: t.runtime_id.unwrap_or(0),
            name: t.name.clone().unwrap_or_default(),
            kind: t.kind.clone(),
            location: loc_to_wire(&t.location),
            parent_id: t.parent_id.unwrap_or(0),
            future_size: t.future_size.unwrap_or(0),
            original_future_size: t.original_future_size.unwrap_or(0),
            state: proto::TaskState::from(t.state) as i32,
            polls: t.polls,
            busy_ns: t.busy_ns,
            scheduled_ns: t.scheduled_ns,
            idle_ns: t.idle_ns,
            created_at: ts_to_wire(t.created_at),
            completed_at: ts_to_wire(t.completed_at),
            last_poll_started: ts_to_wire(t.last_poll_started),
            last_poll_ended: ts_to_wire(t.last_poll_ended),
            last_wake: ts_to_wire(t.last_wake),
            wakes: t.wakes,
            self_wakes: t.self_wakes,
            waker_clones: t.waker_clones,
            waker_drops: t.waker_drops,
            fields: map_to_wire(&t.fields),
            backtrace: t.backtrace.iter().map(Into::into).collect(),
            poll_histogram: t.poll_histogram.as_ref().map(Into::into),
            scheduled_histogram: t.scheduled_histogram.as_ref().map(Into::into),
            max_poll_ns: t.max_poll_ns,
            wakes_while_scheduled: t.wakes_while_scheduled,
            last_poll_location: loc_to_wire(&t.last_poll_location),
        }
    }
}

impl From<proto::Task> for model::Task {
    fn from(t: proto::Task) -> Self {
        model::Task {
            id: t.id,
            tokio_id: opt_from_zero(t.tokio_id),
            runtime_id: opt_from_zero(t.runtime_id),
            name: opt_string(t.name),
            kind: t.kind,
            location: loc_from_wire(t.location),
            parent_id: opt_from_zero(t.parent_id),
            future_size: opt_from_zero(t.future_size),
            original_future_size: opt_from_zero(t.original_future_size),
            state: task_state_from_wire(t.state),
            polls: t.polls,
            busy_ns: t.busy_ns,
            scheduled_ns: t.scheduled_ns,
            idle_ns: t.idle_ns,
            created_at: ts_from_wire(t.created_at),
            completed_at: ts_from_wire(t.completed_at),
            last_poll_started: ts_from_wire(t.last_poll_started),
            last_poll_ended: ts_from_wire(t.last_poll_ended),
            last_wake: ts_from_wire(t.last_wake),
            wakes: t.wakes,
            self_wakes: t.self_wakes,
            waker_clones: t.waker_clones,
            waker_drops: t.waker_drops,
            wakes_while_scheduled: t.wakes_while_scheduled,
            max_poll_ns: t.max_poll_ns,
            fields: map_from_wire(t.fields),
            backtrace: t.backtrace.into_iter().map(Into::into).collect(),
            poll_histogram: hist_from_wire(t.poll_histogram),
            scheduled_histogram: hist_from_wire(t.scheduled_histogram),
            last_poll_location: loc_from_wire(t.last_poll_location),
        }
    }
}

// === resource ===

impl From<&model::Resource> for proto::Resource {
    fn from(r: &model::Resource) -> Self {
        proto::Resource {
            id: r.id,
            kind: r.kind.clone(),
            concrete_type: r.concrete_type.clone(),
            location: loc_to_wire(&r.location),
            attributes: map_to_wire(&r.attributes),
            parent_id: r.parent_id.unwrap_or(0),
            created_at: ts_to_wire(r.created_at),
            dropped_at: ts_to_wire(r.dropped_at),
            internal: r.internal,
        }
    }
}

impl From<proto::Resource> for model::Resource {
    fn from(r: proto::Resource) -> Self {
        model::Resource {
            id: r.id,
            kind: r.kind,
            concrete_type: r.concrete_type,
            location: loc_from_wire(r.location),
            attributes: map_from_wire(r.attributes),
            parent_id: opt_from_zero(r.parent_id),
            created_at: ts_from_wire(r.created_at),
            dropped_at: ts_from_wire(r.dropped_at),
            internal: r.internal,
        }
    }
}

// === async op ===

impl From<&model::AsyncOp> for proto::AsyncOp {
    fn from(o: &model::AsyncOp) -> Self {
        proto::AsyncOp {
            id: o.id,
            resource_id: o.resource_id.unwrap_or(0),
            task_id: o.task_id.unwrap_or(0),
            source: o.source.clone(),
            polls: o.polls,
            ready: o.ready,
            created_at: ts_to_wire(o.created_at),
            dropped_at: ts_to_wire(o.dropped_at),
            attributes: map_to_wire(&o.attributes),
        }
    }
}

impl From<proto::AsyncOp> for model::AsyncOp {
    fn from(o: proto::AsyncOp) -> Self {
        model::AsyncOp {
            id: o.id,
            resource_id: opt_from_zero(o.resource_id),
            task_id: opt_from_zero(o.task_id),
            source: o.source,
            polls: o.polls,
            ready: o.ready,
            created_at: ts_from_wire(o.created_at),
            dropped_at: ts_from_wire(o.dropped_at),
            attributes: map_from_wire(o.attributes),
        }
    }
}

// === wait edge ===

impl From<&model::WaitEdge> for proto::WaitEdge {
    fn from(e: &model::WaitEdge) -> Self {
        proto::WaitEdge {
            task_id: e.task_id,
            resource_id: e.resource_id,
            kind: proto::EdgeKind::from(e.kind) as i32,
            op: e.op.clone(),
            since: ts_to_wire(e.since),
        }
    }
}

/// Edges of unknown kind read as [`model::EdgeKind::Waits`]; see
/// [`edge_kind_from_wire`] to detect them.
impl From<proto::WaitEdge> for model::WaitEdge {
    fn from(e: proto::WaitEdge) -> Self {
        model::WaitEdge {
            task_id: e.task_id,
            resource_id: e.resource_id,
            kind: edge_kind_from_wire(e.kind).unwrap_or(model::EdgeKind::Waits),
            op: e.op,
            since: ts_from_wire(e.since),
        }
    }
}

// === hazard ===

impl From<&model::Hazard> for proto::Hazard {
    fn from(h: &model::Hazard) -> Self {
        proto::Hazard {
            kind: h.kind.clone(),
            severity: proto::Severity::from(h.severity) as i32,
            task_ids: h.task_ids.clone(),
            resource_ids: h.resource_ids.clone(),
            location: loc_to_wire(&h.location),
            await_point: loc_to_wire(&h.await_point),
            summary: h.summary.clone(),
            evidence: h.evidence.clone(),
            advice: h.advice.clone(),
            doc_anchor: h.doc_anchor.clone(),
            detected_at: ts_to_wire(h.detected_at),
            fingerprint: h.fingerprint.clone(),
        }
    }
}

impl From<proto::Hazard> for model::Hazard {
    fn from(h: proto::Hazard) -> Self {
        model::Hazard {
            kind: h.kind,
            severity: severity_from_wire(h.severity),
            task_ids: h.task_ids,
            resource_ids: h.resource_ids,
            location: loc_from_wire(h.location),
            await_point: loc_from_wire(h.await_point),
            summary: h.summary,
            evidence: h.evidence,
            advice: h.advice,
            doc_anchor: h.doc_anchor,
            detected_at: ts_from_wire(h.detected_at),
            fingerprint: h.fingerprint,
        }
    }
}

// === runtime, process, drop counters ===

impl From<&model::Runtime> for proto::Runtime {
    fn from(r: &model::Runtime) -> Self {
        proto::Runtime {
            id: r.id,
            name: r.name.clone(),
            flavor: proto::RuntimeFlavor::from(r.flavor) as i32,
            workers: r.workers,
            created_at: ts_to_wire(r.created_at),
            dropped_at: ts_to_wire(r.dropped_at),
        }
    }
}

impl From<proto::Runtime> for model::Runtime {
    fn from(r: proto::Runtime) -> Self {
        model::Runtime {
            id: r.id,
            name: r.name,
            flavor: runtime_flavor_from_wire(r.flavor),
            workers: r.workers,
            created_at: ts_from_wire(r.created_at),
            dropped_at: ts_from_wire(r.dropped_at),
        }
    }
}

impl From<&model::ProcessInfo> for proto::ProcessInfo {
    fn from(p: &model::ProcessInfo) -> Self {
        proto::ProcessInfo {
            pid: p.pid,
            executable: p.executable.clone(),
            args: p.args.clone(),
            started_at: ts_to_wire(p.started_at),
            taskscope_version: p.taskscope_version.clone(),
            runtimes: p.runtimes.iter().map(Into::into).collect(),
            sources: p.sources.clone(),
        }
    }
}

impl From<proto::ProcessInfo> for model::ProcessInfo {
    fn from(p: proto::ProcessInfo) -> Self {
        model::ProcessInfo {
            pid: p.pid,
            executable: p.executable,
            args: p.args,
            started_at: ts_from_wire(p.started_at),
            taskscope_version: p.taskscope_version,
            runtimes: p.runtimes.into_iter().map(Into::into).collect(),
            sources: p.sources,
        }
    }
}

impl From<&model::DropCounters> for proto::DropCounters {
    fn from(d: &model::DropCounters) -> Self {
        proto::DropCounters {
            task_events: d.task_events,
            resource_events: d.resource_events,
            async_op_events: d.async_op_events,
            recording_frames: d.recording_frames,
            hazards: d.hazards,
            backtrace_frames: d.backtrace_frames,
        }
    }
}

impl From<proto::DropCounters> for model::DropCounters {
    fn from(d: proto::DropCounters) -> Self {
        model::DropCounters {
            task_events: d.task_events,
            resource_events: d.resource_events,
            async_op_events: d.async_op_events,
            recording_frames: d.recording_frames,
            hazards: d.hazards,
            backtrace_frames: d.backtrace_frames,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::*;
    use prost::Message;

    pub(crate) fn loc(file: &str, line: u32, column: u32) -> Location {
        Location::new(file, line, column)
    }

    /// A task with every field set to a distinct, non-default value.
    pub(crate) fn full_task(id: TaskId) -> Task {
        let mut poll = Histogram::default();
        for ns in [800, 12_000, 12_500, 3_000_000, 7_000_000_000] {
            poll.record(ns);
        }
        let mut sched = Histogram::default();
        sched.record_n(40_000, 17);
        Task {
            id,
            tokio_id: Some(id + 1000),
            runtime_id: Some(3),
            name: Some(format!("worker-{id}")),
            kind: "task".into(),
            location: Some(Location {
                module_path: "app::server".into(),
                ..loc("src/server.rs", 42, 9)
            }),
            parent_id: Some(1),
            future_size: Some(4096),
            original_future_size: Some(8192),
            state: TaskState::Scheduled,
            polls: 31,
            busy_ns: 1_234_567,
            scheduled_ns: 89_000,
            idle_ns: 5_000_000_000,
            created_at: Some(Timestamp(1_700_000_000_123_456_789)),
            completed_at: None,
            last_poll_started: Some(Timestamp(1_700_000_001_000_000_000)),
            last_poll_ended: Some(Timestamp(1_700_000_001_000_500_000)),
            last_wake: Some(Timestamp(1_700_000_001_200_000_000)),
            wakes: 30,
            self_wakes: 2,
            waker_clones: 40,
            waker_drops: 39,
            wakes_while_scheduled: 4,
            max_poll_ns: 7_000_000_000,
            fields: [("peer".to_string(), "10.0.0.1:443".to_string())].into(),
            backtrace: vec![
                Frame {
                    name: "app::serve".into(),
                    location: Some(loc("src/server.rs", 50, 0)),
                    detail: String::new(),
                },
                Frame {
                    name: "tokio::sync::Mutex::lock".into(),
                    location: None,
                    detail: "awaiting batch_semaphore::Acquire".into(),
                },
            ],
            poll_histogram: Some(poll),
            scheduled_histogram: Some(sched),
            last_poll_location: Some(loc("src/server.rs", 77, 13)),
        }
    }

    pub(crate) fn full_resource(id: ResourceId) -> Resource {
        Resource {
            id,
            kind: "Sync".into(),
            concrete_type: "Mutex".into(),
            location: Some(loc("src/db.rs", 10, 5)),
            attributes: [("locked".to_string(), "true".to_string())].into(),
            parent_id: Some(id + 1),
            created_at: Some(Timestamp(1_700_000_000_000_000_000)),
            dropped_at: Some(Timestamp(1_700_000_002_000_000_000)),
            internal: true,
        }
    }

    pub(crate) fn full_async_op(id: AsyncOpId) -> AsyncOp {
        AsyncOp {
            id,
            resource_id: Some(7),
            task_id: Some(5),
            source: "Mutex::lock".into(),
            polls: 3,
            ready: false,
            created_at: Some(Timestamp(1_700_000_000_500_000_000)),
            dropped_at: None,
            attributes: [("permits.requested".to_string(), "1".to_string())].into(),
        }
    }

    pub(crate) fn full_hazard(fp: &str) -> Hazard {
        Hazard {
            kind: "lost-waker".into(),
            severity: Severity::Error,
            task_ids: vec![5, 6],
            resource_ids: vec![7],
            location: Some(loc("src/main.rs", 3, 4)),
            await_point: Some(loc("src/main.rs", 8, 0)),
            summary: "task 5 can never be woken".into(),
            evidence: vec!["0 live wakers".into(), "idle 30s".into()],
            advice: "keep the waker".into(),
            doc_anchor: "#lost-waker".into(),
            detected_at: Some(Timestamp(1_700_000_003_000_000_000)),
            fingerprint: fp.into(),
        }
    }

    pub(crate) fn full_process() -> ProcessInfo {
        ProcessInfo {
            pid: 4242,
            executable: "/usr/bin/app".into(),
            args: vec!["--port".into(), "8080".into()],
            started_at: Some(Timestamp(1_699_999_999_000_000_000)),
            taskscope_version: "0.1.0".into(),
            runtimes: vec![
                Runtime {
                    id: 1,
                    name: "main".into(),
                    flavor: RuntimeFlavor::MultiThread,
                    workers: 8,
                    created_at: Some(Timestamp(1_699_999_999_100_000_000)),
                    dropped_at: None,
                },
                Runtime {
                    id: 2,
                    name: "io".into(),
                    flavor: RuntimeFlavor::CurrentThread,
                    workers: 1,
                    created_at: None,
                    dropped_at: Some(Timestamp(1_700_000_000_000_000_001)),
                },
            ],
            sources: vec!["tracing".into(), "hooks".into()],
        }
    }

    /// model -> proto -> bytes -> proto -> model.
    fn through_wire<M, P>(m: &M) -> M
    where
        for<'a> P: From<&'a M> + Message + Default,
        M: From<P>,
    {
        let bytes = P::from(m).encode_to_vec();
        M::from(P::decode(bytes.as_slice()).expect("our own encoding decodes"))
    }

    #[test]
    fn every_message_survives_the_wire_unchanged() {
        let task = full_task(5);
        assert_eq!(through_wire::<Task, proto::Task>(&task), task);
        let minimal = Task {
            id: 9,
            ..Task::default()
        };
        assert_eq!(through_wire::<Task, proto::Task>(&minimal), minimal);
        let r = full_resource(7);
        assert_eq!(through_wire::<Resource, proto::Resource>(&r), r);
        let o = full_async_op(11);
        assert_eq!(through_wire::<AsyncOp, proto::AsyncOp>(&o), o);
        let h = full_hazard("lost-waker:5");
        assert_eq!(through_wire::<Hazard, proto::Hazard>(&h), h);
        let p = full_process();
        assert_eq!(through_wire::<ProcessInfo, proto::ProcessInfo>(&p), p);
        for kind in [EdgeKind::Waits, EdgeKind::Holds, EdgeKind::Frees] {
            let e = WaitEdge {
                task_id: 5,
                resource_id: 7,
                kind,
                op: "acquire".into(),
                since: Some(Timestamp(17)),
            };
            assert_eq!(through_wire::<WaitEdge, proto::WaitEdge>(&e), e);
        }
        for severity in [Severity::Info, Severity::Warning, Severity::Error] {
            let h = Hazard {
                severity,
                ..full_hazard("x")
            };
            assert_eq!(through_wire::<Hazard, proto::Hazard>(&h), h);
        }
        let d = DropCounters {
            task_events: 1,
            resource_events: 2,
            async_op_events: 3,
            recording_frames: 4,
            hazards: 5,
            backtrace_frames: 6,
        };
        assert_eq!(through_wire::<DropCounters, proto::DropCounters>(&d), d);
        for state in [
            TaskState::Unknown,
            TaskState::Idle,
            TaskState::Running,
            TaskState::Completed,
            TaskState::Cancelled,
            TaskState::Panicked,
        ] {
            let t = Task {
                state,
                ..full_task(1)
            };
            assert_eq!(through_wire::<Task, proto::Task>(&t).state, state);
        }
    }

    #[test]
    fn timestamps_convert_exactly_and_clamp_garbage() {
        for ns in [
            0,
            1,
            999_999_999,
            1_000_000_000,
            1_700_000_000_123_456_789,
            u64::MAX,
        ] {
            let wire = prost_types::Timestamp::from(Timestamp(ns));
            assert_eq!(Timestamp::from(wire), Timestamp(ns));
        }
        let before_epoch = prost_types::Timestamp {
            seconds: -5,
            nanos: 0,
        };
        assert_eq!(Timestamp::from(before_epoch), Timestamp(0));
        let bad_nanos = prost_types::Timestamp {
            seconds: 1,
            nanos: -3,
        };
        assert_eq!(Timestamp::from(bad_nanos), Timestamp(1_000_000_000));
        let far_future = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: i32::MAX,
        };
        assert_eq!(Timestamp::from(far_future), Timestamp(u64::MAX));
    }

    #[test]
    fn histograms_are_sparse_on_the_wire() {
        let mut h = Histogram::default();
        h.record_n(3_000, 5);
        h.record(9_000_000);
        let wire = proto::Histogram::from(&h);
        assert_eq!(wire.scheme, histogram::SCHEME);
        assert_eq!(wire.bucket_index.len(), 2, "only non-empty buckets travel");
        assert_eq!(wire.bucket_count, vec![5, 1]);
        assert_eq!(Histogram::from(wire.clone()), h);
        assert_eq!(histogram_from_wire(&wire), Ok(h));
    }

    #[test]
    fn bad_histograms_from_the_network_do_not_panic() {
        let future_scheme = proto::Histogram {
            scheme: 99,
            bucket_index: vec![1],
            bucket_count: vec![3],
            ..Default::default()
        };
        assert_eq!(
            histogram_from_wire(&future_scheme),
            Err(HistogramError::UnknownScheme {
                found: 99,
                supported: 1
            })
        );
        assert!(Histogram::from(future_scheme.clone()).is_empty());

        let out_of_range = proto::Histogram {
            scheme: 1,
            bucket_index: vec![2, 64, u32::MAX],
            bucket_count: vec![4, 1, 1],
            min_ns: 1_500,
            max_ns: 1_600,
            count: 6,
        };
        assert!(matches!(
            histogram_from_wire(&out_of_range),
            Err(HistogramError::BucketOutOfRange { index: 64, .. })
        ));
        let lenient = Histogram::from(out_of_range.clone());
        assert_eq!(
            lenient.count, 4,
            "out-of-range buckets are skipped, count recomputed"
        );
        assert_eq!(lenient.counts[2], 4);

        let unpaired = proto::Histogram {
            scheme: 1,
            bucket_index: vec![1, 2],
            bucket_count: vec![u64::MAX],
            ..Default::default()
        };
        assert!(matches!(
            histogram_from_wire(&unpaired),
            Err(HistogramError::LengthMismatch {
                indices: 2,
                counts: 1
            })
        ));
        assert_eq!(Histogram::from(unpaired).count, u64::MAX);

        // Inside a task a bad histogram is dropped, the rest of the task kept.
        let wire_task = proto::Task {
            id: 3,
            name: "t".into(),
            poll_histogram: Some(out_of_range),
            scheduled_histogram: Some(future_scheme),
            state: 1234,
            ..Default::default()
        };
        let t = Task::from(wire_task);
        assert_eq!(t.name.as_deref(), Some("t"));
        assert_eq!(t.poll_histogram, None);
        assert_eq!(t.scheduled_histogram, None);
        assert_eq!(t.state, TaskState::Unknown);
    }

    #[test]
    fn unknown_enum_values_degrade_gracefully() {
        assert_eq!(edge_kind_from_wire(0), None);
        assert_eq!(edge_kind_from_wire(77), None);
        assert_eq!(edge_kind_from_wire(2), Some(EdgeKind::Holds));
        assert_eq!(severity_from_wire(0), Severity::Warning);
        assert_eq!(severity_from_wire(-4), Severity::Warning);
        assert_eq!(severity_from_wire(3), Severity::Error);
        assert_eq!(runtime_flavor_from_wire(9), RuntimeFlavor::Unknown);
        assert_eq!(task_state_from_wire(-1), TaskState::Unknown);
    }
}
