# pgrepl tasks. `just` lists them.
set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes
default:
    @just --list

# Install what a fresh machine lacks (apt packages as root, PostgreSQL binaries)
setup:
    @scripts/prereqs

# Two throwaway local servers, sample data, a live sync under a workload
demo: setup
    cargo build --bins --examples
    PGREPL_PG_BIN="$(scripts/pg-install 17)" target/debug/examples/demo

# The full test suite: 17 -> 17, 18 -> 18 and the upgrade pairs (scripts/test says what runs where)
test: setup
    scripts/test

# The container image from the Dockerfile (default tag pgrepl:latest); base images made locally where no registry answers
image tag="pgrepl:latest":
    scripts/image {{tag}}

# Release binary, shell completions (bash, zsh, fish) and man pages under target/dist
dist:
    cargo build --release --locked
    rm -rf target/dist && mkdir -p target/dist/completions target/dist/man
    cp target/release/pgrepl target/dist/
    target/release/pgrepl completions bash > target/dist/completions/pgrepl.bash
    target/release/pgrepl completions zsh > target/dist/completions/_pgrepl
    target/release/pgrepl completions fish > target/dist/completions/pgrepl.fish
    target/release/pgrepl man --dir target/dist/man
    @ls -R target/dist

# The randomized differential test, longer: `just fuzz-apply [--rounds N] [--seeds 1-50]`
fuzz-apply *ARGS: setup
    scripts/fuzz-apply {{ARGS}}

# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of `pgoutput` or `conninfo` for SECONDS
fuzz target="pgoutput" seconds="60":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O {{target}} -- -max_total_time={{seconds}}

# Formatting and lints, warnings as errors
lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings

# Print the bin dir of PostgreSQL MAJOR (12..18, or `tools` for pg_dump 18), installing it if needed
pg major:
    @scripts/pg-install {{major}}

# pgrepl side by side with pg_dump|pg_restore, native replication and pgcopydb (`--quick` for ~2 minutes)
bench *ARGS:
    @scripts/prereqs bench
    cargo build --release --bins --examples
    target/release/examples/bench {{ARGS}}
