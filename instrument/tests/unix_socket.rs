//! Serving on a Unix socket (`unix:/path`).
#![cfg(unix)]

mod support;

use std::time::Duration;

use console_api as capi;
use hyper_util::rt::TokioIo;
use support::*;
use taskscope_wire::proto;
use tonic::transport::{Endpoint, Uri};

#[test]
fn both_services_answer_on_a_unix_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("taskscope.sock");
    let guard = taskscope::Builder::default()
        .bind(&format!("unix:{}", sock.display()))
        .publish_interval(Duration::from_millis(100))
        .init();
    assert_eq!(guard.local_addr(), None, "no TCP address");
    let rt = runtime();
    rt.block_on(async {
        tokio::task::Builder::new()
            .name("ux-task")
            .spawn(std::future::pending::<()>())
            .expect("spawn");
        let path = sock.clone();
        let channel = Endpoint::try_from("http://[::]:50051")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .expect("connect over the socket");

        let mut ts = proto::taskscope_client::TaskscopeClient::new(channel.clone());
        let hello = ts
            .hello(proto::HelloRequest {})
            .await
            .expect("hello")
            .into_inner();
        assert_eq!(hello.pid, std::process::id());

        let mut console = capi::instrument::instrument_client::InstrumentClient::new(channel);
        let mut updates = console
            .watch_updates(capi::instrument::InstrumentRequest {})
            .await
            .expect("watch")
            .into_inner();
        let mut view = ConsoleView::default();
        assert!(
            console_until(&mut updates, &mut view, Duration::from_secs(5), |v| v
                .task_named("ux-task")
                .is_some())
            .await
        );
    });
    drop(guard);
    assert!(!sock.exists(), "the socket file is removed on shutdown");
}
