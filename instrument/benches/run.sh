#!/usr/bin/env bash
# Runs the overhead benchmark with one extra column: `none` built WITHOUT
# `--cfg tokio_unstable`, i.e. tokio with no instrumentation callsites
# compiled in at all (the workspace itself always builds with the flag, so
# `cargo bench -p taskscope --bench overhead` alone cannot show this).
#
# The second copy is built into its own target directory, so it never
# invalidates the workspace's build. Every argument is passed on to the
# benchmark, e.g.:
#
#   bash instrument/benches/run.sh --quick
#   bash instrument/benches/run.sh --only spawn-storm --runs 5
set -euo pipefail
cd "$(dirname "$0")/../.."

baseline_target=target/overhead-no-tokio-unstable
# A set RUSTFLAGS (even an empty one) replaces `build.rustflags` from
# .cargo/config.toml, so this copy has no `--cfg tokio_unstable`.
echo "run.sh: building the baseline without tokio_unstable into $baseline_target" >&2
baseline_exe=$(
    RUSTFLAGS="" CARGO_TARGET_DIR="$baseline_target" \
        cargo bench -p taskscope --bench overhead --no-run --message-format=json-render-diagnostics |
        grep -o '"executable":"[^"]*"' | grep overhead | tail -n 1 |
        sed -e 's/^"executable":"//' -e 's/"$//'
)
if [ -z "$baseline_exe" ] || [ ! -x "$baseline_exe" ]; then
    echo "run.sh: could not find the baseline benchmark executable" >&2
    exit 1
fi
exec cargo bench -p taskscope --bench overhead -- --baseline-exe "$baseline_exe" "$@"
