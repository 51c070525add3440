#!/usr/bin/env bash
# Build Kubernetes' node and control-plane binaries at a pinned version from the Go module
# proxy, cached by version, and print the directory that holds them:
#
#   bin="$(test/k8s/build.sh)"           # -> $HULL_TOOLS_CACHE/kubernetes/v1.36.3/bin
#   bin="$(test/k8s/build.sh 1.37.2)"    # another served version
#
# Builds kubelet, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and
# kubectl in one `go build` (one build cache, one link per binary), with
# -X k8s.io/component-base/version.{gitVersion,gitMajor,gitMinor} as upstream's
# hack/lib/version.sh sets them, so `kubelet --version` and the node's kubeletVersion
# are right.
#
# The published k8s.io/kubernetes module has no staging/ tree: its go.mod points every
# k8s.io/<name> it develops in-tree at ./staging/src/k8s.io/<name>. A throw-away wrapper
# module in the cache dir requires k8s.io/kubernetes vX.Y.Z and replaces each of those
# (read from that go.mod, not written by hand) with the published k8s.io/<name> v0.Y.Z.
# Nothing is vendored or committed.
#
# Why v1.36.3 by default: the newest patch of the release whose cri-tools (1.36) the
# project's critest runs; it speaks CRI v1 and needs nothing hull lacks (RuntimeConfig
# for the cgroup driver, which hull answers); its staging modules v0.36.3 are served.
# Like 1.35+, it refuses a cgroup v1 host unless the kubelet config says
# failCgroupV1: false (the harness's does; see test/k8s/README.md).
#
# Environment: HULL_TOOLS_CACHE (default /var/cache/hull/tools), GOFLAGS/GOPROXY as usual.
set -euo pipefail
ver="${1:-1.36.3}"
ver="${ver#v}"
log() { printf '[k8s-build %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
command -v go >/dev/null || { log "error: no Go toolchain on PATH (needed to build Kubernetes v$ver)"; exit 1; }
[[ $ver =~ ^1\.([0-9]+)\.([0-9]+)$ ]] || { log "error: version $ver is not 1.MINOR.PATCH"; exit 1; }
minor="${BASH_REMATCH[1]}"
staging="v0.$minor.${BASH_REMATCH[2]}"
cmds=(kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl)
cache="${HULL_TOOLS_CACHE:-/var/cache/hull/tools}/kubernetes/v$ver"
bin="$cache/bin"
cached=1
for c in "${cmds[@]}"; do [[ -x "$bin/$c" ]] || cached=0; done
if ((cached)); then
    log "Kubernetes v$ver cached in $bin"
    echo "$bin"
    exit 0
fi

start=$SECONDS
mod="$cache/mod"
rm -rf "$mod" "$bin.tmp"
mkdir -p "$mod" "$bin.tmp"
log "fetching k8s.io/kubernetes v$ver's go.mod from the Go module proxy"
gomod="$(cd "$mod" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v$ver" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
[[ -f $gomod ]] || { log "error: no go.mod for k8s.io/kubernetes v$ver"; exit 1; }

# The staging modules: `k8s.io/<name> => ./staging/src/k8s.io/<name>` lines.
mapfile -t names < <(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/\1[[:space:]]*$#\1#p' "$gomod")
((${#names[@]} > 10)) || { log "error: found only ${#names[@]} staging replaces in $gomod"; exit 1; }
gover="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")"
godebug="$(sed -n 's/^godebug .*$/&/p' "$gomod")"
{
    echo "module hull.test/kubernetes"
    echo
    echo "go $gover"
    [[ -z $godebug ]] || { echo; echo "$godebug"; }
    echo
    echo "require k8s.io/kubernetes v$ver"
    echo
    echo "replace ("
    for n in "${names[@]}"; do echo "	$n => $n $staging"; done
    echo ")"
} >"$mod/go.mod"
{
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    for c in "${cmds[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
    echo ")"
} >"$mod/tools.go"
log "${#names[@]} staging modules replaced by their published $staging"

ld="-s -w"
ld+=" -X k8s.io/component-base/version.gitVersion=v$ver"
ld+=" -X k8s.io/component-base/version.gitMajor=1"
ld+=" -X k8s.io/component-base/version.gitMinor=$minor"
ld+=" -X k8s.io/component-base/version.gitTreeState=clean"
ld+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
pkgs=()
for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
log "building ${cmds[*]} v$ver (cold: tens of minutes on 2 cores)"
(cd "$mod" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$bin.tmp/" "${pkgs[@]}")
for c in "${cmds[@]}"; do [[ -x "$bin.tmp/$c" ]] || { log "error: $c was not built"; exit 1; }; done
"$bin.tmp/kubelet" --version | grep -qx "Kubernetes v$ver" ||
    { log "error: kubelet says $("$bin.tmp/kubelet" --version), not Kubernetes v$ver"; exit 1; }
rm -rf "$bin"
mv "$bin.tmp" "$bin"
log "Kubernetes v$ver built in $((SECONDS - start))s into $bin"
echo "$bin"
