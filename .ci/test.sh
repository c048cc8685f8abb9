#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs, then runs
# formatting, lints, the sans-IO gates and every test (unit, SIP conformance, store on
# SQLite and PostgreSQL, end to end against SIPp).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v sipp >/dev/null 2>&1 || need_pkgs+=(sip-tester)
# nft: the in-kernel RTP forwarding tests (they run as root, as CI does).
command -v nft >/dev/null 2>&1 || need_pkgs+=(nftables)
# tcpdump: tests/e2e_codecs.rs captures what SIPp peers receive on lo.
command -v tcpdump >/dev/null 2>&1 || need_pkgs+=(tcpdump)
# chromium: tests/e2e_agent_web.rs runs the agent demo page headless with a fake microphone.
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "==> installing ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# schemathesis (PyPI) for the OpenAPI fuzz test, tests/e2e_openapi.rs.
SWITCHYARD_SCHEMATHESIS="$(bash .ci/install-schemathesis.sh)"
export SWITCHYARD_SCHEMATHESIS

# PostgreSQL for the store tests (SWITCHYARD_TEST_PG_URL overrides).
export SWITCHYARD_TEST_PG_URL="${SWITCHYARD_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "==> starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi

# The README's run command must build on a machine with only a Rust toolchain: no
# system library found through pkg-config and no cmake. Every build below runs so.
export PKG_CONFIG=/bin/false CMAKE=/bin/false
if [ -n "$(cargo tree -q --workspace -e normal,build -i cmake 2>/dev/null)" ]; then
  echo "FAIL: a dependency builds with cmake, which a fresh machine does not have" >&2
  exit 1
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> sans-IO gate: protocol crates build without tokio"
cargo build -q -p switchyard-sip -p switchyard-media -p switchyard-dialplan --no-default-features
for crate in switchyard-sip switchyard-media switchyard-dialplan; do
  if cargo tree -q -e normal --no-default-features -p "$crate" | grep -q '^.*tokio v'; then
    echo "FAIL: $crate depends on tokio without its net feature" >&2
    exit 1
  fi
done

echo "==> cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
