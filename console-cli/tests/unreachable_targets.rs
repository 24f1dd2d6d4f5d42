//! What a user sees when the target is not what they think: nothing
//! listening, a peer that speaks something else, a peer that never answers,
//! a typo in the target. Always exit status 2 and one line naming the target,
//! never a panic.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use taskscope_cli::client::{self, ClientError, ClientOptions, Target};

/// A TCP peer that accepts connections and handles each with `serve`.
fn peer(serve: fn(std::net::TcpStream)) -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind an ephemeral port");
    let port = listener.local_addr().expect("local address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    port
}

/// Writes junk (an HTTP/1 answer, then bytes) and hangs up.
fn junk(mut stream: std::net::TcpStream) {
    let _ = stream.write_all(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nnope!\x00\xff\xfe garbage",
    );
    let mut buf = [0_u8; 1024];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = stream.read(&mut buf);
}

/// Accepts and says nothing, keeping the connection open for a while.
fn silent(mut stream: std::net::TcpStream) {
    let mut buf = [0_u8; 4096];
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

#[test]
fn nothing_listening_says_so_and_hints_at_init() {
    let port = support::free_port();
    let out = support::taskscope(&["snapshot", &format!("127.0.0.1:{port}")]);
    let err = support::assert_one_line_failure(
        &out,
        &format!("no taskscope or console-subscriber server at http://127.0.0.1:{port}"),
    );
    assert!(err.contains("connection refused"), "{err}");
    assert!(err.contains("taskscope::init()"), "{err}");
}

#[test]
fn a_peer_sending_garbage_is_not_grpc() {
    let port = peer(junk);
    let out = support::taskscope(&["snapshot", &format!("127.0.0.1:{port}")]);
    support::assert_one_line_failure(
        &out,
        &format!("http://127.0.0.1:{port} answered, but not with gRPC"),
    );
}

#[test]
fn a_silent_peer_times_out() {
    let port = peer(silent);
    let started = std::time::Instant::now();
    let out = support::taskscope(&["snapshot", &format!("127.0.0.1:{port}"), "--timeout", "0.5"]);
    support::assert_one_line_failure(
        &out,
        &format!("http://127.0.0.1:{port} did not answer within 0.5s"),
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up in {:?}",
        started.elapsed()
    );
}

#[test]
fn a_missing_unix_socket_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nobody.sock");
    let target = format!("unix:{}", path.display());
    let out = support::taskscope(&["snapshot", &target]);
    support::assert_one_line_failure(
        &out,
        &format!("no taskscope or console-subscriber server at {target}"),
    );
}

#[test]
fn typos_in_the_target_are_explained() {
    let out = support::taskscope(&["snapshot", "https://127.0.0.1:6669"]);
    support::assert_one_line_failure(
        &out,
        "invalid target `https://127.0.0.1:6669`: TLS is not supported",
    );
    let out = support::taskscope(&["snapshot", "127.0.0.1:6669", "--timeout", "0"]);
    support::assert_one_line_failure(&out, "invalid --timeout 0");
}

#[tokio::test]
async fn library_errors_are_typed() {
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    let refused: Target = support::free_port()
        .to_string()
        .parse()
        .expect("a port is a target");
    match client::snapshot(&refused, &options).await {
        Err(ClientError::NoServer { .. }) => {}
        other => panic!("expected NoServer, got {other:?}"),
    }
    let garbage: Target = format!("127.0.0.1:{}", peer(junk)).parse().expect("target");
    match client::snapshot(&garbage, &options).await {
        Err(ClientError::NotGrpc { .. }) => {}
        other => panic!("expected NotGrpc, got {other:?}"),
    }
    let silent: Target = format!("127.0.0.1:{}", peer(silent))
        .parse()
        .expect("target");
    match client::snapshot(&silent, &options).await {
        Err(ClientError::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(500)),
        other => panic!("expected Timeout, got {other:?}"),
    }
}
