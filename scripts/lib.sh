# shellcheck shell=bash
# Helpers shared by the scripts in this folder. Source it; do not run it.

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs Debian/Ubuntu packages whose command is missing.
# Usage: ensure_cmd COMMAND PACKAGE [COMMAND PACKAGE ...]
ensure_cmd() {
  local missing=()
  while [ $# -ge 2 ]; do
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
    shift 2
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]} (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Makes sure PostgreSQL's server binaries are here (Debian keeps them off
# PATH, in /usr/lib/postgresql/<version>/bin): the tests start their own
# servers with initdb and postgres, as the `postgres` user the package
# creates when they run as root. Nothing is started here.
ensure_postgres() {
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && ! command -v postgres >/dev/null 2>&1; then
    echo "==> installing postgresql (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
}

# Makes sure a Rust toolchain with rustfmt and clippy is on PATH.
ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    ensure_cmd curl curl cc build-essential
    echo "==> installing the Rust toolchain (rustup)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  fi
}

# Builds the debug binaries and examples the stack scripts run, with the very
# command the test step uses (`cargo test --workspace`, not run), so that
# cargo resolves the same features and reuses the test build's artifacts.
# A narrower `cargo build -p X` unifies features differently and compiles the
# whole dependency graph again (twice: once for the proc-macros' host), about
# 2 GB of disk a time; CI once ran out of disk that way.
build_test_artifacts() {
  ensure_rust
  local log
  log=$(mktemp)
  if ! cargo test --workspace --locked --no-run -q >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

# Loads .env from the repository root, if there is one, without overriding
# variables already set in the environment.
load_env() {
  [ -f .env ] || return 0
  local line key
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in ''|'#'*) continue ;; esac
    key="${line%%=*}"
    [ -n "${!key+x}" ] || export "$line"
  done < .env
}

# A TCP port that is free on 127.0.0.1 right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits up to $2 seconds for URL $1 to answer 2xx.
wait_http() {
  local url=$1 deadline=$((SECONDS + ${2:-30}))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}
