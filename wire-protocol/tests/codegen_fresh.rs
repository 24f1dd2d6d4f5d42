//! The generated protobuf/gRPC code is committed so that users never need
//! `protoc`. This test regenerates it from `proto/` with a pure-Rust protobuf
//! compiler and fails on any difference.
//!
//! After changing a `.proto` file, rewrite the committed code with
//! `TASKSCOPE_BLESS=1 cargo test -p taskscope-wire --test codegen_fresh`.

use std::path::PathBuf;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn generated_code_matches_proto_files() {
    let root = workspace_root();
    let proto_dir = root.join("proto");
    let fds = protox::compile(["taskscope/v1/taskscope.proto"], [&proto_dir])
        .expect("proto/ must compile");
    let out = tempfile::tempdir().expect("temp dir");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation");
    let fresh =
        std::fs::read_to_string(out.path().join("taskscope.v1.rs")).expect("generated file");
    let committed_path = root.join("wire-protocol/src/generated/taskscope.v1.rs");
    if std::env::var_os("TASKSCOPE_BLESS").is_some() {
        std::fs::write(&committed_path, &fresh).expect("write generated code");
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale: regenerate it with TASKSCOPE_BLESS=1 cargo test -p taskscope-wire --test codegen_fresh",
        committed_path.display()
    );
}
