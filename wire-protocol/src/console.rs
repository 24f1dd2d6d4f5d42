//! Interop with tokio-console's protocol (`console-api`), both ways.
//!
//! * **Serving the stock `tokio-console` CLI** from a taskscope-instrumented
//!   app: [`task_to_console`], [`task_stats_to_console`],
//!   [`histogram_to_console`], [`resource_to_console`], … turn model values into
//!   console-api messages; [`console_update_from_state`] builds a whole first
//!   update.
//! * **Reading plain `console-subscriber` apps** from taskscope's console:
//!   [`ConsoleState`] applies the `Update`s and `TaskDetails` such an app
//!   streams and maintains a [`model::State`] from them.
//!
//! # What the stock `tokio-console` CLI (0.1.x) expects from a server
//! These facts come from reading tokio-console 0.1.14 and console-subscriber
//! 0.5 and decide whether a task shows up at all, so every server must obey
//! them (the functions here do):
//!
//! * **Ids.** `Task.id`, `Resource.id` and `AsyncOp.id` are tracing span ids.
//!   The CLI remaps them to small sequential numbers for its `ID` column; the
//!   `Tid` column shows the `task.id` *field* (tokio's own task id), which must
//!   be a `u64` value (`U64Val`) or the column stays empty.
//! * **Metadata first.** Every task, resource and async op names a `MetaId`;
//!   the CLI silently skips an entity whose metadata id is missing or was
//!   never sent in some `Update.new_metadata`. Send all metadata in the first
//!   update (see [`standard_metadata`]). The metadata's `target` is shown as
//!   the task's `target=` field and as the resource's `Target` column.
//! * **Stats in the same update.** A new task (resource, async op) is kept
//!   only if `stats_update` of the *same* update has an entry for its id;
//!   otherwise the CLI drops it for good.
//! * **Panics in the CLI.** Task, resource and async-op stats without
//!   `created_at`, task and async-op stats without `poll_stats`, a resource
//!   `Kind` whose inner `kind` is unset, negative durations, or pre-epoch
//!   timestamps make the CLI panic. The converters here always fill them.
//! * **Field names.** A `Field` name is either `StrName` (the string) or
//!   `NameIdx` (an index into the `field_names` of the metadata). With
//!   `NameIdx` the field's own `metadata_id` must equal the entity's metadata
//!   id or the CLI skips the field (and debug builds of the CLI panic on a
//!   `debug_assert`). console-subscriber always sends `StrName`; so do we.
//!   Fields whose value is an empty string are not shown.
//! * **Fields read specially** (on tasks): `task.name` becomes the `Name`
//!   column, `task.id` the `Tid` column (`U64Val` only), `kind` the `Kind`
//!   column (`"blocking"` and `"block_on"` count as blocking), `size.bytes` and
//!   `original_size.bytes` (`U64Val`) feed the "large future" and
//!   "auto-boxed future" warnings (and stay in the field list);
//!   `spawn.location` is sorted last and has its `.cargo/registry/...` prefix
//!   shortened. Every other field is listed as `name=value`.
//! * **Locations.** `Location` is shown as `module_path:line:col` when a
//!   module path is present, else `file:line:col` — so we send the file and
//!   leave the module path out. Registry paths are shortened by the CLI.
//! * **Task state** is derived by the CLI from stats alone: completed if
//!   `dropped_at` is set, running if `last_poll_started > last_poll_ended`,
//!   scheduled if `last_wake > last_poll_started`, otherwise idle. Busy time
//!   is `poll_stats.busy_time` (+ the current poll), scheduled time is
//!   `scheduled_time`; idle = total − busy − scheduled.
//! * **Counters are deltas.** `dropped_events` of each sub-update is *added*
//!   to the CLI's running total, so a server sends the number dropped since
//!   its previous update, not a cumulative count.
//! * **Histograms** (`TaskDetails`): `raw_histogram` is an HdrHistogram V2
//!   serialization (uncompressed). console-subscriber records into
//!   `Histogram::new_with_max(max, 2)` with `max` = 1 s by default, clamps
//!   longer durations to `max` and counts them in `high_outliers`, with the
//!   longest in `highest_outlier`; `max_value` is that configured `max`.
//! * **Retention.** The CLI forgets a completed task on its own, a few
//!   seconds (`--retain-for`, default 6 s) after `dropped_at`; servers need
//!   not send evictions (there is no such message).
//! * **Resources.** `Kind` is `Known(TIMER)` for timers, else `Other(name)`
//!   (tokio uses `"Sync"`, `"Net"`…). Attributes are `Field`s plus an
//!   optional `unit` appended to the value.
//!
//! # Reading console-subscriber apps
//! [`ConsoleState`] keeps the metadata table and resolves field names
//! through it; it never panics on garbage (unknown metadata ids, missing
//! fields, bad histograms): what cannot be understood is skipped. The task
//! state is derived as the CLI does (see above), except that a task never
//! polled yet counts as scheduled. Each live, not-ready async op with a task
//! and a resource becomes a [`EdgeKind::Waits`] edge.

use std::collections::HashMap;
use std::io::Cursor;

use console_api as capi;
use console_api::{async_ops, field, instrument, register_metadata, resources, tasks};
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

use crate::histogram::{self, Histogram};
use crate::model::{self, EdgeKind, Timestamp};

/// Metadata id [`standard_metadata`] registers for task spans.
pub const TASK_METADATA_ID: u64 = 1;
/// Metadata id [`standard_metadata`] registers for resource spans.
pub const RESOURCE_METADATA_ID: u64 = 2;
/// Metadata id [`standard_metadata`] registers for async-op spans.
pub const ASYNC_OP_METADATA_ID: u64 = 3;

/// The longest duration console-subscriber's histograms track by default;
/// longer ones are counted as high outliers.
pub const DEFAULT_HISTOGRAM_MAX_NS: u64 = 1_000_000_000;

/// Field names the stock CLI reads specially (see the module docs).
pub mod field_names {
    pub const TASK_NAME: &str = "task.name";
    pub const TASK_ID: &str = "task.id";
    pub const KIND: &str = "kind";
    pub const SIZE_BYTES: &str = "size.bytes";
    pub const ORIGINAL_SIZE_BYTES: &str = "original_size.bytes";
    pub const SPAWN_LOCATION: &str = "spawn.location";
}

// === model -> console-api ===

fn ts(t: Timestamp) -> prost_types::Timestamp {
    t.into()
}

fn dur(ns: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
    }
}

fn location_to_console(l: &model::Location) -> capi::Location {
    capi::Location {
        file: (!l.file.is_empty()).then(|| l.file.clone()),
        // Left out on purpose: the CLI would show it instead of the file.
        module_path: None,
        line: (l.line != 0).then_some(l.line),
        column: (l.column != 0).then_some(l.column),
    }
}

/// A field value typed the way tracing would have recorded it, so that the
/// CLI sorts and shows numbers and booleans as such.
fn typed_value(v: &str) -> field::Value {
    if let Ok(n) = v.parse::<u64>() {
        if n.to_string() == v {
            return field::Value::U64Val(n);
        }
    }
    if let Ok(n) = v.parse::<i64>() {
        if n.to_string() == v {
            return field::Value::I64Val(n);
        }
    }
    match v {
        "true" => field::Value::BoolVal(true),
        "false" => field::Value::BoolVal(false),
        _ => field::Value::StrVal(v.to_string()),
    }
}

fn str_field(name: &str, value: field::Value, metadata_id: u64) -> capi::Field {
    capi::Field {
        name: Some(field::Name::StrName(name.to_string())),
        value: Some(value),
        metadata_id: Some(capi::MetaId { id: metadata_id }),
    }
}

/// Builds tracing-like metadata for spans of `name` and `target` with the
/// given field names.
pub fn span_metadata(
    name: &str,
    target: &str,
    field_names: &[&str],
    location: Option<&model::Location>,
) -> capi::Metadata {
    capi::Metadata {
        name: name.to_string(),
        target: target.to_string(),
        module_path: location.map(|l| l.module_path.clone()).unwrap_or_default(),
        location: location.map(location_to_console),
        kind: capi::metadata::Kind::Span as i32,
        level: capi::metadata::Level::Trace as i32,
        field_names: field_names.iter().map(|n| n.to_string()).collect(),
    }
}

/// Wraps metadata with its id for `Update.new_metadata`.
pub fn new_metadata(id: u64, metadata: capi::Metadata) -> register_metadata::NewMetadata {
    register_metadata::NewMetadata {
        id: Some(capi::MetaId { id }),
        metadata: Some(metadata),
    }
}

/// The metadata for [`TASK_METADATA_ID`], [`RESOURCE_METADATA_ID`] and
/// [`ASYNC_OP_METADATA_ID`], shaped like tokio's own spans (`runtime.spawn`
/// in target `tokio::task`, …). Send it in the first update to every client.
pub fn standard_metadata() -> capi::RegisterMetadata {
    use field_names::*;
    capi::RegisterMetadata {
        metadata: vec![
            new_metadata(
                TASK_METADATA_ID,
                span_metadata(
                    "runtime.spawn",
                    "tokio::task",
                    &[KIND, TASK_NAME, TASK_ID, SIZE_BYTES, ORIGINAL_SIZE_BYTES],
                    None,
                ),
            ),
            new_metadata(
                RESOURCE_METADATA_ID,
                span_metadata(
                    "runtime.resource",
                    "tokio::sync",
                    &["concrete_type", "kind", "is_internal"],
                    None,
                ),
            ),
            new_metadata(
                ASYNC_OP_METADATA_ID,
                span_metadata(
                    "runtime.resource.async_op",
                    "tokio::sync",
                    &["source"],
                    None,
                ),
            ),
        ],
    }
}

/// The static part of a task, as the CLI wants it (see the module docs).
pub fn task_to_console(task: &model::Task, metadata_id: u64) -> tasks::Task {
    use field_names::*;
    let mut fields = Vec::new();
    if let Some(name) = task.name.as_ref().filter(|n| !n.is_empty()) {
        fields.push(str_field(
            TASK_NAME,
            field::Value::StrVal(name.clone()),
            metadata_id,
        ));
    }
    if let Some(id) = task.tokio_id {
        fields.push(str_field(TASK_ID, field::Value::U64Val(id), metadata_id));
    }
    if !task.kind.is_empty() {
        fields.push(str_field(
            KIND,
            field::Value::StrVal(task.kind.clone()),
            metadata_id,
        ));
    }
    if let Some(size) = task.future_size {
        fields.push(str_field(
            SIZE_BYTES,
            field::Value::U64Val(size),
            metadata_id,
        ));
    }
    if let Some(size) = task.original_future_size {
        fields.push(str_field(
            ORIGINAL_SIZE_BYTES,
            field::Value::U64Val(size),
            metadata_id,
        ));
    }
    let special = [TASK_NAME, TASK_ID, KIND, SIZE_BYTES, ORIGINAL_SIZE_BYTES];
    for (k, v) in &task.fields {
        if !special.contains(&k.as_str()) {
            fields.push(str_field(k, typed_value(v), metadata_id));
        }
    }
    let kind = if task.kind == "blocking" {
        tasks::task::Kind::Blocking
    } else {
        tasks::task::Kind::Spawn
    };
    tasks::Task {
        id: Some(capi::Id { id: task.id }),
        metadata: Some(capi::MetaId { id: metadata_id }),
        kind: kind as i32,
        fields,
        parents: task
            .parent_id
            .map(|p| vec![capi::SpanId { id: p }])
            .unwrap_or_default(),
        location: task.location.as_ref().map(location_to_console),
    }
}

/// The earliest timestamp we know for an entity, so that `created_at` (which
/// the CLI requires) is never missing.
fn created_or_earliest(created: Option<Timestamp>, others: &[Option<Timestamp>]) -> Timestamp {
    created
        .or_else(|| others.iter().flatten().min().copied())
        .unwrap_or(Timestamp(0))
}

/// A task's counters and timestamps, as the CLI wants them.
pub fn task_stats_to_console(task: &model::Task) -> tasks::Stats {
    let created = created_or_earliest(
        task.created_at,
        &[task.last_poll_started, task.last_wake, task.completed_at],
    );
    let dropped_at = if task.state.is_live() {
        None
    } else {
        Some(
            task.completed_at
                .or(task.last_poll_ended)
                .unwrap_or(created),
        )
    };
    tasks::Stats {
        created_at: Some(ts(created)),
        dropped_at: dropped_at.map(ts),
        wakes: task.wakes,
        waker_clones: task.waker_clones,
        waker_drops: task.waker_drops,
        last_wake: task.last_wake.map(ts),
        poll_stats: Some(capi::PollStats {
            polls: task.polls,
            first_poll: None,
            last_poll_started: task.last_poll_started.map(ts),
            last_poll_ended: task.last_poll_ended.map(ts),
            busy_time: Some(dur(task.busy_ns)),
        }),
        self_wakes: task.self_wakes,
        scheduled_time: Some(dur(task.scheduled_ns)),
    }
}

/// [`histogram_to_console_with_max`] with console-subscriber's default
/// maximum of one second.
pub fn histogram_to_console(h: &Histogram) -> tasks::DurationHistogram {
    histogram_to_console_with_max(h, DEFAULT_HISTOGRAM_MAX_NS)
}

/// Re-records a compact histogram into an HdrHistogram (2 significant
/// figures, tracking up to `max_ns`) and serializes it as V2.
///
/// Each bucket is recorded at its midpoint with its count, except that one
/// count of the lowest bucket is recorded at the exact minimum and one of the
/// highest at the exact maximum, so the CLI shows the true extremes. Values
/// above `max_ns` are clamped to it and counted in `high_outliers`, as
/// console-subscriber does.
pub fn histogram_to_console_with_max(h: &Histogram, max_ns: u64) -> tasks::DurationHistogram {
    let max_ns = max_ns.max(2);
    let mut out = tasks::DurationHistogram {
        raw_histogram: Vec::new(),
        max_value: max_ns,
        high_outliers: 0,
        highest_outlier: None,
    };
    let Ok(mut hdr) = hdrhistogram::Histogram::<u64>::new_with_bounds(1, max_ns, 2) else {
        return out;
    };
    let mut values: Vec<(u64, u64)> = h
        .counts
        .iter()
        .enumerate()
        .take(histogram::BUCKETS)
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| {
            let mid = histogram::bucket_midpoint(i);
            let mid = if h.min_ns <= h.max_ns {
                mid.clamp(h.min_ns, h.max_ns)
            } else {
                mid
            };
            (mid, *c)
        })
        .collect();
    let mut extremes = Vec::with_capacity(2);
    if let Some(first) = values.first_mut() {
        first.1 -= 1;
        extremes.push((h.min_ns, 1));
    }
    if let Some(last) = values.iter_mut().rev().find(|(_, c)| *c > 0) {
        last.1 -= 1;
        extremes.push((h.max_ns, 1));
    }
    values.extend(extremes);
    for (v, c) in values {
        if c == 0 {
            continue;
        }
        let v = if v > max_ns {
            out.high_outliers += c;
            out.highest_outlier = Some(out.highest_outlier.unwrap_or(0).max(v));
            max_ns
        } else {
            v
        };
        hdr.saturating_record_n(v, c);
    }
    if V2Serializer::new()
        .serialize(&hdr, &mut out.raw_histogram)
        .is_err()
    {
        out.raw_histogram.clear();
    }
    out
}

/// The task's details stream message: both histograms.
pub fn task_details_to_console(task: &model::Task, now: Timestamp) -> tasks::TaskDetails {
    tasks::TaskDetails {
        task_id: Some(capi::Id { id: task.id }),
        now: Some(ts(now)),
        poll_times_histogram: task
            .poll_histogram
            .as_ref()
            .map(|h| tasks::task_details::PollTimesHistogram::Histogram(histogram_to_console(h))),
        scheduled_times_histogram: task.scheduled_histogram.as_ref().map(histogram_to_console),
    }
}

fn resource_kind_to_console(kind: &str) -> resources::resource::Kind {
    use resources::resource::kind;
    let k = if kind.eq_ignore_ascii_case("timer") {
        kind::Kind::Known(kind::Known::Timer as i32)
    } else {
        kind::Kind::Other(kind.to_string())
    };
    resources::resource::Kind { kind: Some(k) }
}

/// The static part of a resource.
pub fn resource_to_console(r: &model::Resource, metadata_id: u64) -> resources::Resource {
    resources::Resource {
        id: Some(capi::Id { id: r.id }),
        metadata: Some(capi::MetaId { id: metadata_id }),
        concrete_type: r.concrete_type.clone(),
        kind: Some(resource_kind_to_console(&r.kind)),
        location: r.location.as_ref().map(location_to_console),
        parent_resource_id: r.parent_id.map(|id| capi::Id { id }),
        is_internal: r.internal,
    }
}

fn attributes_to_console(
    attrs: &std::collections::BTreeMap<String, String>,
    metadata_id: u64,
) -> Vec<capi::Attribute> {
    attrs
        .iter()
        .map(|(k, v)| capi::Attribute {
            field: Some(str_field(k, typed_value(v), metadata_id)),
            unit: None,
        })
        .collect()
}

/// A resource's lifetime and attributes.
pub fn resource_stats_to_console(r: &model::Resource, metadata_id: u64) -> resources::Stats {
    resources::Stats {
        created_at: Some(ts(created_or_earliest(r.created_at, &[r.dropped_at]))),
        dropped_at: r.dropped_at.map(ts),
        attributes: attributes_to_console(&r.attributes, metadata_id),
    }
}

/// The static part of an async op. The CLI skips async ops without a
/// resource id.
pub fn async_op_to_console(op: &model::AsyncOp, metadata_id: u64) -> async_ops::AsyncOp {
    async_ops::AsyncOp {
        id: Some(capi::Id { id: op.id }),
        metadata: Some(capi::MetaId { id: metadata_id }),
        source: op.source.clone(),
        parent_async_op_id: None,
        resource_id: op.resource_id.map(|id| capi::Id { id }),
    }
}

/// An async op's lifetime, awaiting task, polls and attributes.
pub fn async_op_stats_to_console(op: &model::AsyncOp, metadata_id: u64) -> async_ops::Stats {
    async_ops::Stats {
        created_at: Some(ts(created_or_earliest(op.created_at, &[op.dropped_at]))),
        dropped_at: op.dropped_at.map(ts),
        task_id: op.task_id.map(|id| capi::Id { id }),
        poll_stats: Some(capi::PollStats {
            polls: op.polls,
            ..Default::default()
        }),
        attributes: attributes_to_console(&op.attributes, metadata_id),
    }
}

/// One console-api update carrying everything in `state` as new entities
/// with their stats, plus [`standard_metadata`] — what a server sends first
/// to a new client. `dropped_events` carry the state's totals.
pub fn console_update_from_state(state: &model::State, now: Timestamp) -> instrument::Update {
    let task_update = tasks::TaskUpdate {
        new_tasks: state
            .tasks
            .values()
            .map(|t| task_to_console(t, TASK_METADATA_ID))
            .collect(),
        stats_update: state
            .tasks
            .values()
            .map(|t| (t.id, task_stats_to_console(t)))
            .collect(),
        dropped_events: state.dropped.task_events,
    };
    let resource_update = resources::ResourceUpdate {
        new_resources: state
            .resources
            .values()
            .map(|r| resource_to_console(r, RESOURCE_METADATA_ID))
            .collect(),
        stats_update: state
            .resources
            .values()
            .map(|r| (r.id, resource_stats_to_console(r, RESOURCE_METADATA_ID)))
            .collect(),
        new_poll_ops: Vec::new(),
        dropped_events: state.dropped.resource_events,
    };
    let async_op_update = async_ops::AsyncOpUpdate {
        new_async_ops: state
            .async_ops
            .values()
            .map(|o| async_op_to_console(o, ASYNC_OP_METADATA_ID))
            .collect(),
        stats_update: state
            .async_ops
            .values()
            .map(|o| (o.id, async_op_stats_to_console(o, ASYNC_OP_METADATA_ID)))
            .collect(),
        dropped_events: state.dropped.async_op_events,
    };
    instrument::Update {
        now: Some(ts(now)),
        task_update: Some(task_update),
        resource_update: Some(resource_update),
        async_op_update: Some(async_op_update),
        new_metadata: Some(standard_metadata()),
    }
}

// === console-api -> model ===

/// Decodes a console-api duration histogram (HdrHistogram V2) into a compact
/// histogram; `None` if the bytes are not a histogram we accept.
pub fn histogram_from_console(h: &tasks::DurationHistogram) -> Option<Histogram> {
    let mut out = histogram_from_hdr_bytes(&h.raw_histogram)?;
    if h.high_outliers > 0 {
        if let Some(highest) = h.highest_outlier {
            out.max_ns = out.max_ns.max(highest);
        }
    }
    Some(out)
}

/// Largest number of significant figures accepted in an HdrHistogram from
/// the network: bounds the memory a hostile peer can make us allocate
/// (console-subscriber uses 2).
const MAX_HDR_SIGFIG: u32 = 3;
const HDR_V2_COOKIE: u32 = 0x1c84_9303 | 0x10;

fn histogram_from_hdr_bytes(bytes: &[u8]) -> Option<Histogram> {
    // V2 header: cookie, payload length, normalizing offset, significant
    // figures (u32 big-endian each), then lowest/highest trackable (u64).
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    if word(0)? != HDR_V2_COOKIE || word(12)? > MAX_HDR_SIGFIG {
        return None;
    }
    let hdr: hdrhistogram::Histogram<u64> = Deserializer::new()
        .deserialize(&mut Cursor::new(bytes))
        .ok()?;
    let mut out = Histogram::default();
    if hdr.is_empty() {
        return Some(out);
    }
    for v in hdr.iter_recorded() {
        out.record_n(
            hdr.median_equivalent(v.value_iterated_to()),
            v.count_at_value(),
        );
    }
    out.min_ns = hdr.min();
    out.max_ns = hdr.max();
    Some(out)
}

fn location_from_console(l: capi::Location) -> Option<model::Location> {
    if l.file.is_none() && l.module_path.is_none() {
        return None;
    }
    Some(model::Location {
        file: l.file.unwrap_or_default(),
        line: l.line.unwrap_or(0),
        column: l.column.unwrap_or(0),
        module_path: l.module_path.unwrap_or_default(),
    })
}

/// Parses `file:line[:col]` as tokio's old `spawn.location` field had it.
fn parse_location(s: &str) -> Option<model::Location> {
    let mut parts = s.rsplitn(3, ':');
    let last = parts.next()?.parse::<u32>().ok()?;
    let mid = parts.next()?;
    match (mid.parse::<u32>(), parts.next()) {
        (Ok(line), Some(file)) => Some(model::Location::new(file, line, last)),
        _ => Some(model::Location::new(mid, last, 0)),
    }
}

fn value_to_string(v: &field::Value) -> String {
    v.to_string()
}

fn value_as_u64(v: &field::Value) -> Option<u64> {
    match v {
        field::Value::U64Val(n) => Some(*n),
        field::Value::I64Val(n) => u64::try_from(*n).ok(),
        field::Value::StrVal(s) | field::Value::DebugVal(s) => s.trim().parse().ok(),
        field::Value::BoolVal(_) => None,
    }
}

fn prost_dur_ns(d: &prost_types::Duration) -> u64 {
    if d.seconds < 0 || d.nanos < 0 {
        return 0;
    }
    (d.seconds as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(d.nanos as u64)
}

/// The edge's operation name from an async op's source
/// (`"Semaphore::acquire"` -> `"acquire"`).
fn op_name(source: &str) -> String {
    source.rsplit("::").next().unwrap_or(source).to_string()
}

/// A [`model::State`] maintained from the console-api stream of a plain
/// console-subscriber app (see the module docs).
#[derive(Debug, Clone)]
pub struct ConsoleState {
    state: model::State,
    metadata: HashMap<u64, capi::Metadata>,
    /// Metadata id of each resource and async op, to resolve `NameIdx`
    /// attribute names that carry no `metadata_id` of their own.
    entity_metadata: HashMap<(EntityKind, u64), u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum EntityKind {
    Resource,
    AsyncOp,
}

impl Default for ConsoleState {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleState {
    /// An empty state whose `process.sources` is `["console-api"]`.
    pub fn new() -> Self {
        let state = model::State {
            process: Some(model::ProcessInfo {
                sources: vec!["console-api".to_string()],
                ..Default::default()
            }),
            ..Default::default()
        };
        Self {
            state,
            metadata: HashMap::new(),
            entity_metadata: HashMap::new(),
        }
    }

    /// The state built so far.
    pub fn state(&self) -> &model::State {
        &self.state
    }

    pub fn into_state(self) -> model::State {
        self.state
    }

    /// Metadata registered under `id`, if it was sent.
    pub fn metadata(&self, id: u64) -> Option<&capi::Metadata> {
        self.metadata.get(&id)
    }

    /// Records the aggregator's temporality (`WatchState` stream).
    pub fn apply_instrument_state(&mut self, s: instrument::State) {
        self.state.paused = s.temporality == instrument::Temporality::Paused as i32;
    }

    /// Applies one `WatchUpdates` message.
    pub fn apply_update(&mut self, update: instrument::Update) {
        let now = update.now.map(Timestamp::from);
        if now.is_some() {
            self.state.updated_at = now;
        }
        if let Some(meta) = update.new_metadata {
            for m in meta.metadata {
                if let (Some(id), Some(metadata)) = (m.id, m.metadata) {
                    self.metadata.insert(id.id, metadata);
                }
            }
        }
        if let Some(tu) = update.task_update {
            self.apply_task_update(tu, now);
        }
        if let Some(ru) = update.resource_update {
            self.apply_resource_update(ru);
        }
        if let Some(au) = update.async_op_update {
            self.apply_async_op_update(au);
        }
        if let Some(now) = now {
            // Idle time grows for tasks whose stats did not change.
            for t in self.state.tasks.values_mut() {
                t.idle_ns = idle_ns(t, Some(now));
            }
        }
        self.rebuild_edges();
    }

    /// Applies one `WatchTaskDetails` message: the task's histograms.
    pub fn apply_task_details(&mut self, details: tasks::TaskDetails) {
        let Some(id) = details.task_id else { return };
        let Some(task) = self.state.tasks.get_mut(&id.id) else {
            return;
        };
        if let Some(poll) = details.poll_times_histogram {
            let h = match poll {
                tasks::task_details::PollTimesHistogram::Histogram(h) => histogram_from_console(&h),
                tasks::task_details::PollTimesHistogram::LegacyHistogram(bytes) => {
                    histogram_from_hdr_bytes(&bytes)
                }
            };
            if let Some(h) = h {
                task.max_poll_ns = task.max_poll_ns.max(h.max_ns);
                task.poll_histogram = Some(h);
            }
        }
        if let Some(h) = details
            .scheduled_times_histogram
            .as_ref()
            .and_then(histogram_from_console)
        {
            task.scheduled_histogram = Some(h);
        }
    }

    /// Forgets tasks, resources and async ops that ended more than `keep_ns`
    /// before `now` (the CLI does the same after `--retain-for`). Returns how
    /// many entities were removed.
    pub fn retain_completed(&mut self, now: Timestamp, keep_ns: u64) -> usize {
        let keep = |end: Option<Timestamp>| end.is_none_or(|e| now.since(e) <= keep_ns);
        let before =
            self.state.tasks.len() + self.state.resources.len() + self.state.async_ops.len();
        self.state.tasks.retain(|_, t| keep(t.completed_at));
        self.state.resources.retain(|_, r| keep(r.dropped_at));
        self.state.async_ops.retain(|_, o| keep(o.dropped_at));
        let (resources, async_ops) = (&self.state.resources, &self.state.async_ops);
        self.entity_metadata.retain(|(kind, id), _| match kind {
            EntityKind::Resource => resources.contains_key(id),
            EntityKind::AsyncOp => async_ops.contains_key(id),
        });
        self.rebuild_edges();
        before - (self.state.tasks.len() + self.state.resources.len() + self.state.async_ops.len())
    }

    /// Resolves a field's name: `StrName` directly, `NameIdx` through the
    /// metadata the field names (or the entity's own metadata).
    fn field_name(&self, f: &capi::Field, entity_meta: Option<u64>) -> Option<String> {
        match f.name.as_ref()? {
            field::Name::StrName(n) => Some(n.clone()),
            field::Name::NameIdx(idx) => {
                let meta_id = f.metadata_id.map(|m| m.id).or(entity_meta)?;
                let meta = self.metadata.get(&meta_id)?;
                meta.field_names.get(usize::try_from(*idx).ok()?).cloned()
            }
        }
    }

    fn attributes(
        &self,
        attrs: Vec<capi::Attribute>,
        entity_meta: Option<u64>,
    ) -> std::collections::BTreeMap<String, String> {
        attrs
            .into_iter()
            .filter_map(|a| {
                let f = a.field?;
                let name = self.field_name(&f, entity_meta)?;
                let mut value = value_to_string(f.value.as_ref()?);
                if let Some(unit) = a.unit.filter(|u| !u.is_empty()) {
                    value.push_str(&unit);
                }
                Some((name, value))
            })
            .collect()
    }

    fn task_from_console(&self, t: tasks::Task) -> Option<model::Task> {
        use field_names::*;
        let id = t.id?.id;
        let meta = t.metadata.map(|m| m.id);
        let mut task = model::Task {
            id,
            kind: if t.kind == tasks::task::Kind::Blocking as i32 {
                "blocking".to_string()
            } else {
                "task".to_string()
            },
            location: t.location.and_then(location_from_console),
            parent_id: t.parents.first().map(|p| p.id),
            ..Default::default()
        };
        for f in &t.fields {
            let (Some(name), Some(value)) = (self.field_name(f, meta), f.value.as_ref()) else {
                continue;
            };
            match name.as_str() {
                TASK_NAME => task.name = Some(value_to_string(value)).filter(|n| !n.is_empty()),
                TASK_ID => task.tokio_id = value_as_u64(value),
                KIND => task.kind = value_to_string(value),
                SIZE_BYTES => task.future_size = value_as_u64(value),
                ORIGINAL_SIZE_BYTES => task.original_future_size = value_as_u64(value),
                SPAWN_LOCATION if task.location.is_none() => {
                    task.location = parse_location(&value_to_string(value));
                }
                _ => {
                    task.fields.insert(name, value_to_string(value));
                }
            }
        }
        Some(task)
    }

    fn apply_task_update(&mut self, tu: tasks::TaskUpdate, now: Option<Timestamp>) {
        for t in tu.new_tasks {
            if let Some(task) = self.task_from_console(t) {
                // Keep counters if stats for this id arrived before.
                let old = self.state.tasks.remove(&task.id);
                let mut task = task;
                if let Some(old) = old {
                    copy_task_stats(&old, &mut task);
                }
                self.state.tasks.insert(task.id, task);
            }
        }
        for (id, stats) in tu.stats_update {
            if let Some(task) = self.state.tasks.get_mut(&id) {
                apply_task_stats(task, stats, now);
            }
        }
        self.state.dropped.task_events = self
            .state
            .dropped
            .task_events
            .saturating_add(tu.dropped_events);
    }

    fn apply_resource_update(&mut self, ru: resources::ResourceUpdate) {
        for r in ru.new_resources {
            let Some(id) = r.id.map(|i| i.id) else {
                continue;
            };
            let kind = match r.kind.and_then(|k| k.kind) {
                Some(resources::resource::kind::Kind::Known(k))
                    if k == resources::resource::kind::Known::Timer as i32 =>
                {
                    "Timer".to_string()
                }
                Some(resources::resource::kind::Kind::Other(s)) => s,
                _ => String::new(),
            };
            let old = self.state.resources.remove(&id).unwrap_or_default();
            let meta = r.metadata.map(|m| m.id);
            self.state.resources.insert(
                id,
                model::Resource {
                    id,
                    kind,
                    concrete_type: r.concrete_type,
                    location: r.location.and_then(location_from_console),
                    attributes: old.attributes,
                    parent_id: r.parent_resource_id.map(|p| p.id),
                    created_at: old.created_at,
                    dropped_at: old.dropped_at,
                    internal: r.is_internal,
                },
            );
            if let Some(meta) = meta {
                self.entity_metadata
                    .insert((EntityKind::Resource, id), meta);
            }
        }
        for (id, stats) in ru.stats_update {
            let meta = self
                .entity_metadata
                .get(&(EntityKind::Resource, id))
                .copied();
            let attrs = self.attributes(stats.attributes, meta);
            if let Some(r) = self.state.resources.get_mut(&id) {
                r.created_at = stats.created_at.map(Timestamp::from).or(r.created_at);
                r.dropped_at = stats.dropped_at.map(Timestamp::from);
                r.attributes = attrs;
            }
        }
        for op in ru.new_poll_ops {
            let Some(op_id) = op.async_op_id.map(|i| i.id) else {
                continue;
            };
            if let Some(o) = self.state.async_ops.get_mut(&op_id) {
                o.ready = op.is_ready;
                if o.task_id.is_none() {
                    o.task_id = op.task_id.map(|t| t.id);
                }
                if o.resource_id.is_none() {
                    o.resource_id = op.resource_id.map(|r| r.id);
                }
            }
        }
        self.state.dropped.resource_events = self
            .state
            .dropped
            .resource_events
            .saturating_add(ru.dropped_events);
    }

    fn apply_async_op_update(&mut self, au: async_ops::AsyncOpUpdate) {
        for o in au.new_async_ops {
            let Some(id) = o.id.map(|i| i.id) else {
                continue;
            };
            if let Some(meta) = o.metadata {
                self.entity_metadata
                    .insert((EntityKind::AsyncOp, id), meta.id);
            }
            let old = self.state.async_ops.remove(&id).unwrap_or_default();
            self.state.async_ops.insert(
                id,
                model::AsyncOp {
                    id,
                    resource_id: o.resource_id.map(|r| r.id).or(old.resource_id),
                    source: o.source,
                    ..old
                },
            );
        }
        for (id, stats) in au.stats_update {
            let meta = self
                .entity_metadata
                .get(&(EntityKind::AsyncOp, id))
                .copied();
            let attrs = self.attributes(stats.attributes, meta);
            if let Some(o) = self.state.async_ops.get_mut(&id) {
                o.created_at = stats.created_at.map(Timestamp::from).or(o.created_at);
                o.dropped_at = stats.dropped_at.map(Timestamp::from);
                if let Some(t) = stats.task_id {
                    o.task_id = Some(t.id);
                }
                if let Some(p) = stats.poll_stats {
                    o.polls = p.polls;
                }
                o.attributes = attrs;
            }
        }
        self.state.dropped.async_op_events = self
            .state
            .dropped
            .async_op_events
            .saturating_add(au.dropped_events);
    }

    fn rebuild_edges(&mut self) {
        self.state.edges = self
            .state
            .async_ops
            .values()
            .filter(|o| o.dropped_at.is_none() && !o.ready)
            .filter_map(|o| {
                Some(model::WaitEdge {
                    task_id: o.task_id?,
                    resource_id: o.resource_id?,
                    kind: EdgeKind::Waits,
                    op: op_name(&o.source),
                    since: o.created_at,
                })
            })
            .collect();
    }
}

fn copy_task_stats(from: &model::Task, to: &mut model::Task) {
    to.state = from.state;
    to.polls = from.polls;
    to.busy_ns = from.busy_ns;
    to.scheduled_ns = from.scheduled_ns;
    to.idle_ns = from.idle_ns;
    to.created_at = from.created_at;
    to.completed_at = from.completed_at;
    to.last_poll_started = from.last_poll_started;
    to.last_poll_ended = from.last_poll_ended;
    to.last_wake = from.last_wake;
    to.wakes = from.wakes;
    to.self_wakes = from.self_wakes;
    to.waker_clones = from.waker_clones;
    to.waker_drops = from.waker_drops;
    to.max_poll_ns = from.max_poll_ns;
    to.poll_histogram = from.poll_histogram.clone();
    to.scheduled_histogram = from.scheduled_histogram.clone();
}

fn apply_task_stats(task: &mut model::Task, s: tasks::Stats, now: Option<Timestamp>) {
    task.created_at = s.created_at.map(Timestamp::from).or(task.created_at);
    task.completed_at = s.dropped_at.map(Timestamp::from);
    task.wakes = s.wakes;
    task.waker_clones = s.waker_clones;
    task.waker_drops = s.waker_drops;
    task.self_wakes = s.self_wakes;
    task.last_wake = s.last_wake.map(Timestamp::from);
    task.scheduled_ns = s.scheduled_time.as_ref().map(prost_dur_ns).unwrap_or(0);
    if let Some(p) = s.poll_stats {
        task.polls = p.polls;
        task.last_poll_started = p.last_poll_started.map(Timestamp::from);
        task.last_poll_ended = p.last_poll_ended.map(Timestamp::from);
        task.busy_ns = p.busy_time.as_ref().map(prost_dur_ns).unwrap_or(0);
    }
    task.state = if task.completed_at.is_some() {
        model::TaskState::Completed
    } else if task.last_poll_started > task.last_poll_ended {
        model::TaskState::Running
    } else if task.polls == 0 || task.last_wake > task.last_poll_started {
        model::TaskState::Scheduled
    } else {
        model::TaskState::Idle
    };
    task.idle_ns = idle_ns(task, now);
}

/// Lifetime (to completion or `now`) minus busy and scheduled time.
fn idle_ns(task: &model::Task, now: Option<Timestamp>) -> u64 {
    match (task.created_at, task.completed_at.or(now)) {
        (Some(c), Some(e)) => e
            .since(c)
            .saturating_sub(task.busy_ns)
            .saturating_sub(task.scheduled_ns),
        _ => task.idle_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::tests::{full_async_op, full_resource, full_task};
    use crate::model::{Task, TaskState};

    fn sample_state() -> model::State {
        let mut state = model::State::default();
        let mut a = full_task(5);
        a.kind = "task".into();
        let mut b = full_task(6);
        b.name = None;
        b.kind = "blocking".into();
        b.state = TaskState::Completed;
        b.completed_at = Some(Timestamp(1_700_000_002_000_000_000));
        b.fields.insert("retries".into(), "3".into());
        let mut c = full_task(7);
        c.last_poll_started = Some(Timestamp(1_700_000_001_300_000_000));
        c.last_wake = Some(Timestamp(1_700_000_001_100_000_000));
        c.state = TaskState::Running;
        for t in [a, b, c] {
            state.tasks.insert(t.id, t);
        }
        let mut r = full_resource(7);
        r.dropped_at = None;
        state.resources.insert(7, r);
        let mut timer = full_resource(8);
        timer.kind = "Timer".into();
        timer.concrete_type = "Sleep".into();
        state.resources.insert(8, timer);
        state.async_ops.insert(11, full_async_op(11));
        state.dropped.task_events = 4;
        state
    }

    fn round_trip(state: &model::State) -> ConsoleState {
        let now = Timestamp(1_700_000_005_000_000_000);
        let mut cs = ConsoleState::new();
        // Through real bytes, as the CLI would receive them.
        let bytes = prost::Message::encode_to_vec(&console_update_from_state(state, now));
        let update: instrument::Update = prost::Message::decode(bytes.as_slice()).expect("decodes");
        cs.apply_update(update);
        for t in state.tasks.values() {
            cs.apply_task_details(task_details_to_console(t, now));
        }
        cs
    }

    #[test]
    fn tasks_survive_model_to_console_and_back() {
        let state = sample_state();
        let cs = round_trip(&state);
        let got = cs.state();
        assert_eq!(got.tasks.len(), 3);
        for (id, want) in &state.tasks {
            let t: &Task = &got.tasks[id];
            assert_eq!(t.name, want.name, "task {id}");
            assert_eq!(t.tokio_id, want.tokio_id);
            assert_eq!(t.kind, want.kind);
            assert_eq!(t.parent_id, want.parent_id);
            assert_eq!(t.future_size, want.future_size);
            assert_eq!(t.original_future_size, want.original_future_size);
            assert_eq!(t.polls, want.polls);
            assert_eq!(t.wakes, want.wakes);
            assert_eq!(t.self_wakes, want.self_wakes);
            assert_eq!(t.waker_clones, want.waker_clones);
            assert_eq!(t.waker_drops, want.waker_drops);
            assert_eq!(t.live_wakers(), 1);
            assert_eq!(t.busy_ns, want.busy_ns);
            assert_eq!(t.scheduled_ns, want.scheduled_ns);
            assert_eq!(t.last_wake, want.last_wake);
            assert_eq!(t.created_at, want.created_at);
            let loc = t.location.as_ref().expect("location");
            assert_eq!(
                (loc.file.as_str(), loc.line, loc.column),
                ("src/server.rs", 42, 9)
            );
            assert_eq!(
                t.fields.get("peer").map(String::as_str),
                Some("10.0.0.1:443")
            );
        }
        assert_eq!(got.tasks[&5].state, TaskState::Scheduled);
        assert_eq!(got.tasks[&6].state, TaskState::Completed);
        assert_eq!(
            got.tasks[&6].completed_at,
            Some(Timestamp(1_700_000_002_000_000_000))
        );
        assert_eq!(
            got.tasks[&6].fields.get("retries").map(String::as_str),
            Some("3")
        );
        assert_eq!(got.tasks[&7].state, TaskState::Running);
        // Idle = lifetime (to `now`, or to completion) - busy - scheduled.
        assert_eq!(got.tasks[&5].idle_ns, 4_876_543_211 - 1_234_567 - 89_000);
        assert_eq!(got.tasks[&6].idle_ns, 1_876_543_211 - 1_234_567 - 89_000);
        assert_eq!(got.dropped.task_events, 4);
    }

    #[test]
    fn histogram_quantiles_survive_hdr_encoding() {
        let mut h = Histogram::default();
        for i in 0..1000u64 {
            h.record(2_000 + i * 37);
        }
        h.record_n(40_000_000, 25);
        h.record(900_000_000);
        let back = histogram_from_console(&histogram_to_console(&h)).expect("decodes");
        assert_eq!(back.count, h.count);
        assert_eq!(
            back.counts, h.counts,
            "every value lands in its bucket again"
        );
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
            let (a, b) = (h.quantile(q) as f64, back.quantile(q) as f64);
            assert!((a - b).abs() / a <= 0.01, "q{q}: {a} vs {b}");
        }

        let state = sample_state();
        let cs = round_trip(&state);
        for (id, want) in &state.tasks {
            let got = &cs.state().tasks[id];
            let (wp, gp) = (
                want.poll_histogram.as_ref().expect("poll"),
                got.poll_histogram.as_ref().expect("poll histogram decoded"),
            );
            // 7 s is beyond the 1 s maximum: clamped and counted as an outlier,
            // and the exact maximum comes back through `highest_outlier`.
            assert_eq!(gp.count, wp.count);
            assert_eq!(gp.max_ns, wp.max_ns);
            assert_eq!(got.max_poll_ns, 7_000_000_000);
            for q in [0.25, 0.5, 0.75] {
                let (a, b) = (wp.quantile(q) as f64, gp.quantile(q) as f64);
                assert!((a - b).abs() / a <= 0.2, "task {id} q{q}: {a} vs {b}");
            }
            let gs = got.scheduled_histogram.as_ref().expect("scheduled");
            assert_eq!(gs.count, 17);
        }
    }

    #[test]
    fn the_cli_sees_outliers_like_console_subscriber_reports_them() {
        let mut h = Histogram::default();
        h.record_n(5_000, 10);
        h.record_n(3_000_000_000, 2);
        h.record(4_000_000_000);
        let d = histogram_to_console(&h);
        assert_eq!(d.max_value, DEFAULT_HISTOGRAM_MAX_NS);
        assert_eq!(d.high_outliers, 3);
        assert_eq!(d.highest_outlier, Some(4_000_000_000));
        let hdr: hdrhistogram::Histogram<u64> = Deserializer::new()
            .deserialize(&mut Cursor::new(&d.raw_histogram))
            .expect("the CLI can deserialize it");
        assert_eq!(hdr.len(), 13);
        assert_eq!(hdr.min(), 4_992, "the exact minimum, within hdr precision");
        assert!(hdr.max() >= DEFAULT_HISTOGRAM_MAX_NS && hdr.max() < 1_010_000_000);
        let empty = histogram_to_console(&Histogram::default());
        let back = histogram_from_console(&empty).expect("empty histogram decodes");
        assert!(back.is_empty());
    }

    #[test]
    fn fields_are_shaped_for_the_stock_cli() {
        let t = full_task(5);
        let c = task_to_console(&t, 42);
        let get = |name: &str| {
            c.fields
                .iter()
                .find(|f| matches!(&f.name, Some(field::Name::StrName(n)) if n == name))
                .and_then(|f| f.value.clone())
        };
        assert_eq!(
            get("task.name"),
            Some(field::Value::StrVal("worker-5".into()))
        );
        assert_eq!(get("task.id"), Some(field::Value::U64Val(1005)));
        assert_eq!(get("kind"), Some(field::Value::StrVal("task".into())));
        assert_eq!(get("size.bytes"), Some(field::Value::U64Val(4096)));
        assert_eq!(get("original_size.bytes"), Some(field::Value::U64Val(8192)));
        assert!(c
            .fields
            .iter()
            .all(|f| f.metadata_id == Some(capi::MetaId { id: 42 })));
        assert_eq!(c.metadata, Some(capi::MetaId { id: 42 }));
        let loc = c.location.expect("location");
        assert_eq!(
            loc.module_path, None,
            "the CLI would show it instead of the file"
        );
        assert_eq!(loc.to_string(), "src/server.rs:42:9");

        let s = task_stats_to_console(&Task {
            id: 1,
            ..Task::default()
        });
        assert!(s.created_at.is_some(), "the CLI panics without created_at");
        assert!(s.poll_stats.is_some(), "the CLI panics without poll_stats");
        let r = resource_to_console(&full_resource(3), RESOURCE_METADATA_ID);
        assert!(
            r.kind.and_then(|k| k.kind).is_some(),
            "the CLI panics without a kind"
        );
    }

    #[test]
    fn resources_async_ops_and_wait_edges_come_back() {
        let state = sample_state();
        let cs = round_trip(&state);
        let got = cs.state();
        assert_eq!(got.resources[&7].kind, "Sync");
        assert_eq!(got.resources[&7].concrete_type, "Mutex");
        assert_eq!(got.resources[&7].parent_id, Some(8));
        assert!(got.resources[&7].internal);
        assert_eq!(
            got.resources[&7]
                .attributes
                .get("locked")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(got.resources[&8].kind, "Timer");
        let op = &got.async_ops[&11];
        assert_eq!(op.source, "Mutex::lock");
        assert_eq!(
            (op.task_id, op.resource_id, op.polls),
            (Some(5), Some(7), 3)
        );
        assert_eq!(
            got.edges,
            vec![model::WaitEdge {
                task_id: 5,
                resource_id: 7,
                kind: EdgeKind::Waits,
                op: "lock".into(),
                since: op.created_at,
            }]
        );
        assert_eq!(
            got.process.as_ref().map(|p| p.sources.clone()),
            Some(vec!["console-api".to_string()])
        );
    }

    #[test]
    fn later_updates_change_state_and_remove_edges() {
        let state = sample_state();
        let mut cs = round_trip(&state);
        // The async op completes: the task stops waiting.
        let update = instrument::Update {
            now: Some(ts(Timestamp(1_700_000_006_000_000_000))),
            async_op_update: Some(async_ops::AsyncOpUpdate {
                stats_update: [(
                    11,
                    async_ops::Stats {
                        dropped_at: Some(ts(Timestamp(1_700_000_006_000_000_000))),
                        ..async_op_stats_to_console(&full_async_op(11), ASYNC_OP_METADATA_ID)
                    },
                )]
                .into(),
                dropped_events: 2,
                ..Default::default()
            }),
            task_update: Some(tasks::TaskUpdate {
                stats_update: [(
                    5,
                    tasks::Stats {
                        dropped_at: Some(ts(Timestamp(1_700_000_006_000_000_000))),
                        ..task_stats_to_console(&state.tasks[&5])
                    },
                )]
                .into(),
                dropped_events: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        cs.apply_update(update);
        assert!(cs.state().edges.is_empty());
        assert_eq!(cs.state().tasks[&5].state, TaskState::Completed);
        assert_eq!(
            cs.state().dropped.task_events,
            5,
            "dropped counts are summed"
        );
        assert_eq!(cs.state().dropped.async_op_events, 2);
        // Task 6 and resource 8 ended 5 s before `now`, task 5 and async op
        // 11 one second before: keeping 3 s forgets the first two only.
        let removed = cs.retain_completed(Timestamp(1_700_000_007_000_000_000), 3_000_000_000);
        assert_eq!(removed, 2);
        assert!(!cs.state().tasks.contains_key(&6));
        assert!(!cs.state().resources.contains_key(&8));
        assert!(cs.state().tasks.contains_key(&5));
        assert!(cs.state().async_ops.contains_key(&11));
    }

    #[test]
    fn name_indices_resolve_through_metadata() {
        let mut cs = ConsoleState::new();
        let update = instrument::Update {
            new_metadata: Some(capi::RegisterMetadata {
                metadata: vec![new_metadata(
                    77,
                    span_metadata(
                        "runtime.spawn",
                        "tokio::task",
                        &["kind", "task.name", "task.id"],
                        None,
                    ),
                )],
            }),
            task_update: Some(tasks::TaskUpdate {
                new_tasks: vec![tasks::Task {
                    id: Some(capi::Id { id: 1 }),
                    metadata: Some(capi::MetaId { id: 77 }),
                    fields: vec![
                        capi::Field {
                            name: Some(field::Name::NameIdx(1)),
                            value: Some(field::Value::DebugVal("acceptor".into())),
                            metadata_id: Some(capi::MetaId { id: 77 }),
                        },
                        capi::Field {
                            name: Some(field::Name::NameIdx(2)),
                            value: Some(field::Value::U64Val(12)),
                            metadata_id: None,
                        },
                        capi::Field {
                            name: Some(field::Name::StrName("spawn.location".into())),
                            value: Some(field::Value::DebugVal("src/main.rs:10:5".into())),
                            metadata_id: None,
                        },
                    ],
                    ..Default::default()
                }],
                stats_update: [(1, task_stats_to_console(&Task::default()))].into(),
                dropped_events: 0,
            }),
            ..Default::default()
        };
        cs.apply_update(update);
        let t = &cs.state().tasks[&1];
        assert_eq!(t.name.as_deref(), Some("acceptor"));
        assert_eq!(t.tokio_id, Some(12));
        assert_eq!(t.location, Some(model::Location::new("src/main.rs", 10, 5)));
        assert_eq!(
            t.state,
            TaskState::Scheduled,
            "never polled: waiting for its first poll"
        );
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut cs = ConsoleState::new();
        let garbage = instrument::Update {
            now: Some(prost_types::Timestamp {
                seconds: -100,
                nanos: -5,
            }),
            new_metadata: Some(capi::RegisterMetadata {
                metadata: vec![register_metadata::NewMetadata {
                    id: None,
                    metadata: None,
                }],
            }),
            task_update: Some(tasks::TaskUpdate {
                new_tasks: vec![
                    tasks::Task::default(),
                    tasks::Task {
                        id: Some(capi::Id { id: 9 }),
                        metadata: Some(capi::MetaId { id: 12345 }),
                        kind: 99,
                        fields: vec![
                            capi::Field {
                                name: Some(field::Name::NameIdx(u64::MAX)),
                                value: Some(field::Value::U64Val(1)),
                                metadata_id: Some(capi::MetaId { id: 12345 }),
                            },
                            capi::Field::default(),
                        ],
                        ..Default::default()
                    },
                ],
                stats_update: [
                    (9, tasks::Stats::default()),
                    (
                        404,
                        tasks::Stats {
                            scheduled_time: Some(prost_types::Duration {
                                seconds: -1,
                                nanos: -1,
                            }),
                            ..Default::default()
                        },
                    ),
                ]
                .into(),
                dropped_events: u64::MAX,
            }),
            resource_update: Some(resources::ResourceUpdate {
                new_resources: vec![
                    resources::Resource::default(),
                    resources::Resource {
                        id: Some(capi::Id { id: 3 }),
                        kind: Some(resources::resource::Kind {
                            kind: Some(resources::resource::kind::Kind::Known(42)),
                        }),
                        ..Default::default()
                    },
                ],
                new_poll_ops: vec![resources::PollOp::default()],
                ..Default::default()
            }),
            async_op_update: Some(async_ops::AsyncOpUpdate {
                new_async_ops: vec![async_ops::AsyncOp::default()],
                stats_update: [(1, async_ops::Stats::default())].into(),
                dropped_events: 1,
            }),
        };
        cs.apply_update(garbage.clone());
        cs.apply_update(garbage);
        assert_eq!(
            cs.state().tasks.len(),
            1,
            "only the task with an id is kept"
        );
        assert_eq!(cs.state().tasks[&9].kind, "task");
        assert_eq!(cs.state().dropped.task_events, u64::MAX, "saturates");
        assert_eq!(cs.state().resources[&3].kind, "");
        cs.apply_task_details(tasks::TaskDetails {
            task_id: Some(capi::Id { id: 9 }),
            now: None,
            poll_times_histogram: Some(tasks::task_details::PollTimesHistogram::LegacyHistogram(
                vec![0x1c, 0x84, 0x93, 0x13, 0, 0, 0, 9],
            )),
            scheduled_times_histogram: Some(tasks::DurationHistogram {
                raw_histogram: vec![1, 2, 3],
                ..Default::default()
            }),
        });
        assert_eq!(cs.state().tasks[&9].poll_histogram, None);
        cs.apply_task_details(tasks::TaskDetails::default());
    }
}
