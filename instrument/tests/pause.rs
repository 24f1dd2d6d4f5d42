//! console-api Pause/Resume and WatchState.

mod support;

use std::time::Duration;

use console_api as capi;
use support::*;

#[test]
fn pause_stops_updates_until_resume() {
    let guard = taskscope::Builder::default()
        .bind("127.0.0.1:0")
        .publish_interval(Duration::from_millis(50))
        .init();
    let addr = guard.local_addr().expect("listening");
    let rt = runtime();
    rt.block_on(async {
        tokio::task::Builder::new()
            .name("pz-busy")
            .spawn(async {
                loop {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .expect("spawn");
        let mut client = console_client(addr).await;
        let mut state = client
            .watch_state(capi::instrument::StateRequest {})
            .await
            .expect("watch_state")
            .into_inner();
        let first = state.message().await.expect("state").expect("one state");
        assert_eq!(
            first.temporality,
            capi::instrument::Temporality::Live as i32
        );

        let mut updates = client
            .watch_updates(capi::instrument::InstrumentRequest {})
            .await
            .expect("watch")
            .into_inner();
        let mut view = ConsoleView::default();
        assert!(
            console_until(&mut updates, &mut view, Duration::from_secs(5), |v| v
                .polls("pz-busy")
                > 0)
            .await
        );

        client
            .pause(capi::instrument::PauseRequest {})
            .await
            .expect("pause");
        let s = state.message().await.expect("state").expect("paused state");
        assert_eq!(s.temporality, capi::instrument::Temporality::Paused as i32);
        // Drain what was in flight, then expect silence.
        let _ = tokio::time::timeout(Duration::from_millis(150), async {
            loop {
                if updates.message().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let quiet = tokio::time::timeout(Duration::from_millis(500), updates.message()).await;
        assert!(quiet.is_err(), "no updates while paused");

        let polls_paused = view.polls("pz-busy");
        client
            .resume(capi::instrument::ResumeRequest {})
            .await
            .expect("resume");
        let s = state.message().await.expect("state").expect("live state");
        assert_eq!(s.temporality, capi::instrument::Temporality::Live as i32);
        assert!(
            console_until(&mut updates, &mut view, Duration::from_secs(5), |v| v
                .polls("pz-busy")
                > polls_paused + 20)
            .await,
            "updates resume, with what happened during the pause"
        );
    });
    drop(guard);
}
