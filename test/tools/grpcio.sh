#!/usr/bin/env bash
# A Python with grpcio at a pinned version (PyPI), in a venv cached by version; prints the
# path of its interpreter:
#
#   py="$(test/tools/grpcio.sh)"        # -> $HULL_TOOLS_CACHE/grpcio-1.85.1/bin/python
#
# grpcio is the gRPC C-core's Python binding. From 1.57 on it sends a unix socket's path
# (percent-encoded) as the HTTP/2 :authority, which hulld must accept (issue 15); the
# client test server/tests/clients.rs runs test/clients/grpcio_client.py with it.
#
# Environment: HULL_TOOLS_CACHE (default /var/cache/hull/tools), GRPCIO_VERSION.
set -euo pipefail
ver="${GRPCIO_VERSION:-1.85.1}"
log() { printf '[grpcio %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
venv="${HULL_TOOLS_CACHE:-/var/cache/hull/tools}/grpcio-$ver"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if "$venv/bin/python" -c "import grpc, sys; sys.exit(grpc.__version__ != '$ver')" 2>/dev/null; then
    log "grpcio $ver cached in $venv"
    echo "$venv/bin/python"
    exit 0
fi
rm -rf "$venv"
start=$SECONDS
if ! python3 -m venv "$venv" 2>/dev/null; then
    log "python3 has no venv module: installing Debian's python3-venv"
    rm -rf "$venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$venv"
fi
log "installing grpcio==$ver from PyPI into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: "grpcio==$ver"
log "grpcio $ver ready in $((SECONDS - start))s"
echo "$venv/bin/python"
