//! `taskscope explain`: the hazard catalogue as a user reads it offline.

mod support;

use support::{assert_one_line_failure, stdout, taskscope};
use taskscope_wire::hazards::catalogue;

#[test]
fn the_list_names_every_hazard_with_where_it_is_found() {
    let out = taskscope(&["explain"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for info in catalogue() {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(info.id))
            .unwrap_or_else(|| panic!("{} missing from:\n{text}", info.id));
        assert!(line.contains(info.title), "{line}");
        assert_eq!(
            line.contains("core"),
            info.detection.core,
            "core column of {line}"
        );
    }
}

#[test]
fn one_id_tells_its_trigger_and_what_to_do() {
    let out = taskscope(&["explain", "futurelock"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let info = catalogue()
        .iter()
        .find(|i| i.id == "futurelock")
        .expect("in the catalogue");
    assert!(text.starts_with("futurelock — Futurelock"), "{text}");
    assert!(text.contains(info.description), "{text}");
    assert!(text.contains(info.advice), "{text}");

    let json = taskscope(&["explain", "futurelock", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(doc[0]["id"], "futurelock");
    assert_eq!(doc[0]["advice"], info.advice);
    assert_eq!(doc[0]["detection"]["live"], info.detection.live);
    assert_eq!(doc[0]["detection"]["lockfile"], info.detection.static_);
}

#[test]
fn an_unknown_id_is_one_clear_line() {
    let out = taskscope(&["explain", "lost-wakers"]);
    let err = assert_one_line_failure(&out, "unknown hazard id `lost-wakers`");
    assert!(err.contains("lost-waker,"), "lists the known ids: {err}");
}
