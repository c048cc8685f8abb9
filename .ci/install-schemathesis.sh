#!/usr/bin/env bash
# Installs schemathesis, the OpenAPI fuzzer that tests/e2e_openapi.rs runs against the
# switch, into a Python venv (PyPI) and prints the path of its executable on stdout.
# Reused when the pinned version is already there. The test finds it at the same path,
# or wherever SWITCHYARD_SCHEMATHESIS points.
set -euo pipefail

version="4.32.5"
dir="${SWITCHYARD_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard}/schemathesis"
bin="$dir/bin/schemathesis"

if [ "$("$bin" --version 2>/dev/null || true)" != "schemathesis, version $version" ]; then
  # A bare Debian may lack python3, and its python3 leaves venv/ensurepip to python3-venv.
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "==> installing python3 and python3-venv" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  echo "==> installing schemathesis $version into $dir" >&2
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "schemathesis==$version" >&2
fi
echo "$bin"
