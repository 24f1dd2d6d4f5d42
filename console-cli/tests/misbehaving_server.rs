//! A real gRPC peer that serves taskscope.v1 badly: its snapshot stream ends
//! before the last chunk, or it rejects requests. The client must say so in
//! one line and never panic.

mod support;

use std::pin::Pin;

use futures::Stream;
use taskscope_cli::client::{self, ClientError, ClientOptions, Protocol, Target};
use taskscope_wire::proto::taskscope_server::{Taskscope, TaskscopeServer};
use taskscope_wire::proto::{self, Update};
use tonic::{Request, Response, Status};

/// Serves a hello, then a "full" snapshot whose last chunk never comes.
struct TruncatedSnapshots;

type Updates = Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send>>;
type Hazards = Pin<Box<dyn Stream<Item = Result<proto::Hazard, Status>> + Send>>;

#[tonic::async_trait]
impl Taskscope for TruncatedSnapshots {
    async fn hello(
        &self,
        _: Request<proto::HelloRequest>,
    ) -> Result<Response<proto::ProcessInfo>, Status> {
        Ok(Response::new(proto::ProcessInfo {
            pid: 1,
            ..Default::default()
        }))
    }

    type SnapshotStream = Updates;
    async fn snapshot(
        &self,
        _: Request<proto::SnapshotRequest>,
    ) -> Result<Response<Updates>, Status> {
        let first = Update {
            full: true,
            last_chunk: false,
            tasks: vec![proto::Task {
                id: 1,
                name: "half-sent".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(first)]))))
    }

    type WatchStream = Updates;
    async fn watch(&self, _: Request<proto::WatchRequest>) -> Result<Response<Updates>, Status> {
        Err(Status::permission_denied(
            "watching is disabled in this build",
        ))
    }

    type WatchHazardsStream = Hazards;
    async fn watch_hazards(
        &self,
        _: Request<proto::WatchHazardsRequest>,
    ) -> Result<Response<Hazards>, Status> {
        Err(Status::unimplemented("no hazards here"))
    }
}

/// Starts the server on an ephemeral port, on its own thread and runtime.
fn serve() -> String {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("local address");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let incoming = futures::stream::unfold(listener, |l| async move {
                let accepted = l.accept().await.map(|(s, _)| s);
                Some((accepted, l))
            });
            let _ = tonic::transport::Server::builder()
                .add_service(TaskscopeServer::new(TruncatedSnapshots))
                .serve_with_incoming(incoming)
                .await;
        });
    });
    support::wait_for_tcp(addr);
    addr.to_string()
}

#[test]
fn a_snapshot_that_stops_early_is_reported() {
    let addr = serve();
    let out = support::taskscope(&["snapshot", &addr]);
    support::assert_one_line_failure(
        &out,
        &format!("http://{addr} closed the taskscope.v1 stream before sending the last chunk of the snapshot"),
    );
}

#[tokio::test]
async fn library_reports_early_ends_and_rejections() {
    let target: Target = serve().parse().expect("target");
    match client::snapshot(&target, &ClientOptions::default()).await {
        Err(ClientError::StreamEnded {
            protocol: Protocol::Taskscope,
            ..
        }) => {}
        other => panic!("expected StreamEnded, got {other:?}"),
    }

    use futures::StreamExt;
    let mut events = Box::pin(client::watch(target.clone(), ClientOptions::default()));
    match events.next().await {
        Some(Err(ClientError::Rejected { code, message, .. })) => {
            assert_eq!(code, tonic::Code::PermissionDenied);
            assert!(message.contains("watching is disabled"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(
        events.next().await.is_none(),
        "the stream ends after its error"
    );
}
