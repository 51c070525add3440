#!/usr/bin/env bash
# Build kubernetes-sigs' cri-tools (crictl and critest) at a pinned version from the Go
# module proxy, cached by version, and print the directory that holds both binaries:
#
#   bin="$(test/tools/cri-tools.sh 1.36.0)"      # -> $HULL_TOOLS_CACHE/cri-tools/v1.36.0/bin
#
# critest is a Go test binary (`go test -c`), crictl an ordinary one. Both get
# `-X sigs.k8s.io/cri-tools/pkg/version.Version=<version>` as upstream's Makefile sets it.
# Nothing is vendored or committed: a throw-away module in the cache dir requires
# sigs.k8s.io/cri-tools at the version and builds its two commands.
#
# Environment: HULL_TOOLS_CACHE (default /var/cache/hull/tools), GOFLAGS/GOPROXY as usual.
set -euo pipefail
ver="${1:?usage: cri-tools.sh <version, e.g. 1.36.0>}"
ver="${ver#v}"
log() { printf '[cri-tools %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
command -v go >/dev/null || { log "error: no Go toolchain on PATH (needed to build cri-tools v$ver)"; exit 1; }
cache="${HULL_TOOLS_CACHE:-/var/cache/hull/tools}/cri-tools/v$ver"
bin="$cache/bin"
if [[ -x "$bin/crictl" && -x "$bin/critest" ]]; then
    log "cri-tools v$ver cached in $bin"
    echo "$bin"
    exit 0
fi
mod="$cache/mod"
rm -rf "$mod" "$bin.tmp"
mkdir -p "$mod" "$bin.tmp"
cat >"$mod/go.mod" <<MOD
module hull.test/critools

go 1.24

require sigs.k8s.io/cri-tools v$ver
MOD
cat >"$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
	_ "sigs.k8s.io/cri-tools/cmd/critest"
)
GO
ld="-X sigs.k8s.io/cri-tools/pkg/version.Version=$ver"
start=$SECONDS
log "resolving sigs.k8s.io/cri-tools v$ver from the Go module proxy"
(cd "$mod" && GOFLAGS=-mod=mod go mod tidy)
log "building crictl v$ver"
(cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$bin.tmp/crictl" sigs.k8s.io/cri-tools/cmd/crictl)
log "building critest v$ver"
(cd "$mod" && CGO_ENABLED=0 go test -c -trimpath -ldflags "$ld" -o "$bin.tmp/critest" sigs.k8s.io/cri-tools/cmd/critest)
rm -rf "$bin"
mv "$bin.tmp" "$bin"
log "cri-tools v$ver built in $((SECONDS - start))s into $bin"
echo "$bin"
