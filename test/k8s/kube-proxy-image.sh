#!/usr/bin/env bash
# The kube-proxy image of the cluster scenario, from local files only:
#
#   test/k8s/kube-proxy-image.sh REGISTRY KUBE_PROXY_BINARY
#
# pushes REGISTRY/kube-proxy:<version> (what registry.k8s.io/kube-proxy is mirrored to):
# the suite's kube-proxy (a static Go binary) and this machine's iptables (Debian's
# xtables-nft-multi, the node's own backend, with its libraries and the iptables,
# ip6tables, -save and -restore names kube-proxy calls). The suite runs it as a
# hostNetwork DaemonSet, which hull runs with host isolation. Needs umoci and skopeo.
set -euo pipefail
REG=${1:?usage: $0 registry kube-proxy-binary}
PROXY=${2:?usage: $0 registry kube-proxy-binary}
XT=/usr/sbin/xtables-nft-multi
[[ -x $PROXY && -x $XT ]] || { echo "kube-proxy-image.sh: need $PROXY and $XT (iptables)" >&2; exit 1; }
VERSION=$("$PROXY" --version | awk '{print $2}')

WORK=$(mktemp -d /var/tmp/hull-k8s-proxy-image.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
OCI=$WORK/oci
umoci init --layout "$OCI"
umoci new --image "$OCI:proxy"
umoci unpack --image "$OCI:proxy" "$WORK/b" >/dev/null
R=$WORK/b/rootfs
mkdir -p "$R/usr/local/bin" "$R/usr/sbin" "$R/etc" "$R/run" "$R/tmp" "$R/lib/modules"
install -m 0755 "$PROXY" "$R/usr/local/bin/kube-proxy"
install -m 0755 "$XT" "$R/usr/sbin/xtables-nft-multi"
for name in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -s xtables-nft-multi "$R/usr/sbin/$name"
done
# The dynamic loader and libraries of xtables, and the extensions (matches, targets) it
# dlopens from the dir it was built with (/usr/lib/<triplet>/xtables on Debian: ldd names
# /lib/..., which only usrmerge makes the same dir), with their own libraries.
copy_libs() {
    local lib
    for lib in $(ldd "$1" 2>/dev/null | grep -o '/[^ ]*'); do
        [[ -e $R$lib ]] && continue
        mkdir -p "$R$(dirname "$lib")"
        cp -L "$lib" "$R$lib"
    done
}
copy_libs "$XT"
ext=$(realpath "$(dirname "$(ldd "$XT" | grep -o '/[^ ]*libxtables[^ ]*')")/xtables")
[[ -d $ext ]] || { echo "kube-proxy-image.sh: no xtables extensions dir $ext" >&2; exit 1; }
mkdir -p "$R$ext"
cp -a "$ext/." "$R$ext/"
for so in "$ext"/*.so; do
    copy_libs "$so"
done
cp /etc/protocols /etc/services "$R/etc/"
umoci repack --image "$OCI:proxy" "$WORK/b"
umoci config --image "$OCI:proxy" --os linux --architecture amd64 \
    --config.entrypoint /usr/local/bin/kube-proxy --config.env PATH=/usr/sbin:/usr/local/bin --config.env XTABLES_LIBDIR="$ext"
skopeo copy --quiet --dest-tls-verify=false "oci:$OCI:proxy" "docker://$REG/kube-proxy:$VERSION"
echo "pushed $REG/kube-proxy:$VERSION"
