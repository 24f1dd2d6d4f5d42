//! `wire-protocol/docs/hazards.md` is what SARIF `helpUri`s, Markdown reports
//! and the console's problem view link to; it is rendered from the catalogue.
//! This test fails when the committed page differs from the catalogue
//! (regenerate with `TASKSCOPE_BLESS=1`).

#[test]
fn the_committed_hazard_reference_matches_the_catalogue() {
    let fresh = taskscope_wire::hazards::catalogue::reference_markdown();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/hazards.md");
    if std::env::var_os("TASKSCOPE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("docs dir")).expect("create docs dir");
        std::fs::write(&path, &fresh).expect("write hazard reference");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale: run `TASKSCOPE_BLESS=1 cargo test -p taskscope-wire --test hazard_docs`",
        path.display()
    );
}
