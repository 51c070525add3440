#!/usr/bin/env bash
# Builds small test images from local files with Debian's umoci and pushes them with
# skopeo to a plain-http registry:
#
#   test/images/build.sh 127.0.0.1:5000
#
#   busybox:latest        busybox-static from /bin/busybox, applet links, /etc/passwd
#   busybox-user:latest   the same with USER 1000
#   whiteout:latest       busybox plus a layer deleting /etc/motd and /data/old (umoci writes
#                         .wh. whiteouts for them)
#   busybox-zstd:latest   busybox plus a zstd-compressed layer
#
# The Rust builder (image-service/examples/build-test-images.rs, also used by the
# hull-image tests) makes the full set: opaque dirs, multi-arch index, hostile layers.
# Needs: umoci, skopeo, busybox-static (all Debian packages).
set -euo pipefail

REG=${1:?usage: $0 registry-host:port}
for tool in umoci skopeo; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install $tool" >&2; exit 1; }
done
[[ -x /bin/busybox ]] || { echo "missing /bin/busybox: apt-get install busybox-static" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
OCI=$WORK/oci
umoci init --layout "$OCI"

push() { # <tag in layout> <repo:tag> [skopeo args...]
    local tag=$1 dest=$2; shift 2
    skopeo copy --quiet --dest-tls-verify=false "$@" "oci:$OCI:$tag" "docker://$REG/$dest"
    echo "pushed $REG/$dest"
}

# busybox
umoci new --image "$OCI:busybox"
umoci unpack --image "$OCI:busybox" "$WORK/bb"
R=$WORK/bb/rootfs
mkdir -p "$R/bin" "$R/etc" "$R/tmp" "$R/data"
cp /bin/busybox "$R/bin/busybox"
for a in sh ls cat echo sleep true false env id touch rm mkdir; do ln -s busybox "$R/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n' >"$R/etc/passwd"
echo "hull test image" >"$R/etc/motd"
echo old >"$R/data/old"
echo kept >"$R/data/kept"
umoci repack --image "$OCI:busybox" "$WORK/bb"
umoci config --image "$OCI:busybox" --os linux --architecture amd64 \
    --config.cmd /bin/sh --config.env PATH=/bin
push busybox busybox:latest

# busybox-user: same layers, USER 1000
umoci tag --image "$OCI:busybox" busybox-user
umoci config --image "$OCI:busybox-user" --config.user 1000
push busybox-user busybox-user:latest

# whiteout: a second layer deleting files of the first
umoci tag --image "$OCI:busybox" whiteout
rm -rf "$WORK/bb"
umoci unpack --image "$OCI:whiteout" "$WORK/bb"
rm "$WORK/bb/rootfs/etc/motd" "$WORK/bb/rootfs/data/old"
umoci repack --image "$OCI:whiteout" "$WORK/bb"
push whiteout whiteout:latest

# zstd layers. skopeo (1.9) reuses a gzip blob of the same content it has seen at the
# registry, so this image gets content of its own; and decompress first.
umoci tag --image "$OCI:busybox" zstd-src
rm -rf "$WORK/bb"
umoci unpack --image "$OCI:zstd-src" "$WORK/bb"
echo "zstd layer" >"$WORK/bb/rootfs/etc/zstd"
umoci repack --image "$OCI:zstd-src" "$WORK/bb"
skopeo copy --quiet --dest-decompress "oci:$OCI:zstd-src" "dir:$WORK/plain"
skopeo copy --quiet --dest-tls-verify=false --dest-compress --dest-compress-format zstd \
    "dir:$WORK/plain" "docker://$REG/busybox-zstd:latest"
echo "pushed $REG/busybox-zstd:latest"
