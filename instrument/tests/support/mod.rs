//! Helpers shared by the integration tests: gRPC clients over loopback and
//! small accumulators that rebuild what a client sees from raw messages.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use console_api as capi;
use taskscope_wire::model;
use taskscope_wire::proto;
use taskscope_wire::proto::taskscope_client::TaskscopeClient;
use tonic::transport::Channel;

pub type ConsoleClient = capi::instrument::instrument_client::InstrumentClient<Channel>;

/// A multi-thread tokio runtime with two workers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

pub async fn console_client(addr: SocketAddr) -> ConsoleClient {
    ConsoleClient::connect(format!("http://{addr}"))
        .await
        .expect("console-api client connects")
}

pub async fn taskscope_client(addr: SocketAddr) -> TaskscopeClient<Channel> {
    TaskscopeClient::connect(format!("http://{addr}"))
        .await
        .expect("taskscope client connects")
        .max_decoding_message_size(16 << 20)
}

/// What the stock console CLI would know, rebuilt from raw console-api
/// updates.
#[derive(Default, Debug)]
pub struct ConsoleView {
    pub metadata: HashMap<u64, capi::Metadata>,
    pub tasks: HashMap<u64, capi::tasks::Task>,
    pub stats: HashMap<u64, capi::tasks::Stats>,
    pub resources: HashMap<u64, capi::resources::Resource>,
    pub messages: usize,
    pub first_had_metadata: Option<bool>,
    pub max_message_bytes: usize,
    pub dropped_events: Option<u64>,
    /// Tasks whose stats arrived before (or without) the task itself.
    pub orphan_stats: usize,
}

pub fn field_value(t: &capi::tasks::Task, name: &str) -> Option<capi::field::Value> {
    t.fields.iter().find_map(|f| match &f.name {
        Some(capi::field::Name::StrName(n)) if n == name => f.value.clone(),
        _ => None,
    })
}

impl ConsoleView {
    pub fn apply(&mut self, u: capi::instrument::Update) {
        use prost::Message;
        self.max_message_bytes = self.max_message_bytes.max(u.encoded_len());
        if self.first_had_metadata.is_none() {
            self.first_had_metadata = Some(u.new_metadata.is_some());
        }
        self.messages += 1;
        if let Some(m) = u.new_metadata {
            for nm in m.metadata {
                if let (Some(id), Some(meta)) = (nm.id, nm.metadata) {
                    self.metadata.insert(id.id, meta);
                }
            }
        }
        if let Some(tu) = u.task_update {
            for t in tu.new_tasks {
                if let Some(id) = t.id {
                    self.tasks.insert(id.id, t);
                }
            }
            for (id, s) in tu.stats_update {
                if !self.tasks.contains_key(&id) {
                    self.orphan_stats += 1;
                }
                self.stats.insert(id, s);
            }
            self.dropped_events = Some(tu.dropped_events);
        }
        if let Some(ru) = u.resource_update {
            for r in ru.new_resources {
                if let Some(id) = r.id {
                    self.resources.insert(id.id, r);
                }
            }
        }
    }

    /// The task whose `task.name` field is `name`.
    pub fn task_named(
        &self,
        name: &str,
    ) -> Option<(u64, &capi::tasks::Task, Option<&capi::tasks::Stats>)> {
        self.tasks
            .iter()
            .find_map(|(id, t)| match field_value(t, "task.name") {
                Some(capi::field::Value::StrVal(n)) if n == name => {
                    Some((*id, t, self.stats.get(id)))
                }
                _ => None,
            })
    }

    pub fn polls(&self, name: &str) -> u64 {
        self.task_named(name)
            .and_then(|(_, _, s)| s.and_then(|s| s.poll_stats.as_ref()).map(|p| p.polls))
            .unwrap_or(0)
    }
}

/// Reads console updates into `view` until `done(view)` or `timeout`.
pub async fn console_until(
    stream: &mut tonic::Streaming<capi::instrument::Update>,
    view: &mut ConsoleView,
    timeout: Duration,
    done: impl Fn(&ConsoleView) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while !done(view) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(u))) => view.apply(u),
            _ => return done(view),
        }
    }
    true
}

/// A state rebuilt from `taskscope.v1` updates.
#[derive(Default, Debug)]
pub struct TaskscopeView {
    pub tasks: BTreeMap<u64, model::Task>,
    pub resources: BTreeMap<u64, model::Resource>,
    pub edges: Vec<model::WaitEdge>,
    pub process: Option<model::ProcessInfo>,
    pub dropped: Option<model::DropCounters>,
    pub updates: usize,
    pub full_chunks: usize,
    pub max_update_bytes: usize,
    pub hazards: Vec<model::Hazard>,
}

impl TaskscopeView {
    pub fn apply(&mut self, u: proto::Update) {
        use prost::Message;
        self.max_update_bytes = self.max_update_bytes.max(u.encoded_len());
        self.updates += 1;
        if u.full {
            self.full_chunks += 1;
        }
        if let Some(p) = u.process {
            self.process = Some(p.into());
        }
        for t in u.tasks {
            let t: model::Task = t.into();
            self.tasks.insert(t.id, t);
        }
        for id in u.evicted_task_ids {
            self.tasks.remove(&id);
        }
        for r in u.resources {
            let r: model::Resource = r.into();
            self.resources.insert(r.id, r);
        }
        for id in u.evicted_resource_ids {
            self.resources.remove(&id);
        }
        if u.edges_replaced {
            self.edges = u.edges.into_iter().map(Into::into).collect();
        }
        for h in u.hazards {
            self.hazards.push(h.into());
        }
        if let Some(d) = u.dropped {
            self.dropped = Some(d.into());
        }
    }

    pub fn task_named(&self, name: &str) -> Option<&model::Task> {
        self.tasks
            .values()
            .find(|t| t.name.as_deref() == Some(name))
    }
}

/// Reads a whole `Snapshot`.
pub async fn snapshot(
    client: &mut TaskscopeClient<Channel>,
    include_completed: bool,
) -> TaskscopeView {
    let mut s = client
        .snapshot(proto::SnapshotRequest {
            max_chunk_bytes: 0,
            include_completed,
        })
        .await
        .expect("snapshot starts")
        .into_inner();
    let mut view = TaskscopeView::default();
    while let Some(u) = s.message().await.expect("snapshot chunk") {
        view.apply(u);
    }
    view
}

/// Polls `Snapshot` until `done` or `timeout`.
pub async fn snapshot_until(
    client: &mut TaskscopeClient<Channel>,
    timeout: Duration,
    done: impl Fn(&TaskscopeView) -> bool,
) -> TaskscopeView {
    let deadline = Instant::now() + timeout;
    loop {
        let v = snapshot(client, true).await;
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
