//! A misbehaving gRPC peer must not hurt the app or other clients.

mod support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use console_api as capi;
use support::*;

#[test]
fn garbage_and_vanishing_peers_do_not_hurt_the_app_or_other_clients() {
    let guard = taskscope::Builder::default()
        .bind("127.0.0.1:0")
        .publish_interval(Duration::from_millis(50))
        .init();
    let addr = guard.local_addr().expect("listening");
    let rt = runtime();
    let ticks = Arc::new(AtomicU64::new(0));
    let t2 = ticks.clone();
    rt.spawn(async move {
        loop {
            t2.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let _named = {
        let _e = rt.enter();
        tokio::task::Builder::new()
            .name("rb-ticker")
            .spawn(async {
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .expect("spawn")
    };

    // 1. Random bytes instead of HTTP/2.
    let mut garbage = std::net::TcpStream::connect(addr).expect("connect");
    garbage
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let junk: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = garbage.write_all(&junk);
    let mut sink = Vec::new();
    let _ = garbage.read_to_end(&mut sink);

    // 2. A valid preface, then garbage frames, then a hang-up.
    let mut half = std::net::TcpStream::connect(addr).expect("connect");
    let _ = half.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let _ = half.write_all(&[0xff; 4096]);
    drop(half);

    // 3. Clients that go away mid-stream, many times.
    rt.block_on(async {
        for _ in 0..20 {
            let mut c = console_client(addr).await;
            let mut s = c
                .watch_updates(capi::instrument::InstrumentRequest {})
                .await
                .expect("watch")
                .into_inner();
            let _ = s.message().await;
            drop(s);
            drop(c);
        }
        // 4. A connection that stops reading: the server must not stall.
        let stalled = std::net::TcpStream::connect(addr).expect("connect");
        let _keep = stalled;

        let before = ticks.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            ticks.load(Ordering::Relaxed) > before + 10,
            "the app keeps running"
        );

        // A well-behaved client still gets live updates.
        let mut c = console_client(addr).await;
        let mut s = c
            .watch_updates(capi::instrument::InstrumentRequest {})
            .await
            .expect("watch")
            .into_inner();
        let mut view = ConsoleView::default();
        assert!(
            console_until(&mut s, &mut view, Duration::from_secs(5), |v| v
                .polls("rb-ticker")
                > 0)
            .await
        );
        let p0 = view.polls("rb-ticker");
        assert!(
            console_until(&mut s, &mut view, Duration::from_secs(5), |v| v
                .polls("rb-ticker")
                > p0 + 5)
            .await,
            "updates keep flowing"
        );
    });
    drop(guard);
}
