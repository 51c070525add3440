#!/usr/bin/env bash
# Build hull's guest: the microVM kernel and the initramfs (hull-agent as /init).
#
#   packaging/guest/build.sh [kernel|initramfs|all]     (default: all)
#
# Outputs (in $HULL_GUEST_DIR, default /var/lib/hull/guest):
#   vmlinux        uncompressed ELF kernel with a PVH entry (fastest boot: no decompression)
#   bzImage        the same kernel, compressed (bzImage boot protocol)
#   initramfs.img  uncompressed newc cpio: /init = hull-agent (static), /dev/console, empty mount
#                  points (uncompressed: 6 MB instead of 2.4, but the guest skips inflating it,
#                  ~10% of boot-to-agent-ready under TCG: 900 vs 1000 ms p50, vm/examples/boot_bench)
#   *.hash         the input hash each output was built from
#
# Each step is cached by a hash of its inputs and only rebuilt when they change:
#   kernel:    kernel source tarball + kernel.config + KERNEL_RECIPE below
#   initramfs: hull-agent binary + INITRAMFS_RECIPE below (cargo decides whether to rebuild the agent)
#
# Environment:
#   HULL_GUEST_DIR        output dir (default /var/lib/hull/guest)
#   HULL_GUEST_BUILD_DIR  kernel build tree (default /var/cache/hull/guest-build)
#   HULL_KERNEL_SOURCE    kernel source tarball (default /usr/src/linux-source-6.1.tar.xz)
#   HULL_GUEST_JOBS       make -j (default: nproc)
#   CARGO_TARGET_DIR      where cargo builds hull-agent (default <repo>/target)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${HULL_GUEST_DIR:-/var/lib/hull/guest}"
BUILD="${HULL_GUEST_BUILD_DIR:-/var/cache/hull/guest-build}"
SRC_TAR="${HULL_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}"
JOBS="${HULL_GUEST_JOBS:-$(nproc)}"
TARGET_TRIPLE=x86_64-unknown-linux-gnu
# Bump these when the steps below change in a way that changes their output.
KERNEL_RECIPE=1
INITRAMFS_RECIPE=3

log() { printf '[guest-build %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
sha() { sha256sum | cut -d' ' -f1; }

kernel_hash() {
    { echo "recipe=$KERNEL_RECIPE"; stat -c '%n %s %Y' "$SRC_TAR"; cat "$HERE/kernel.config"; } | sha
}

build_kernel() {
    [[ -f "$SRC_TAR" ]] || die "kernel source $SRC_TAR not found (apt-get install linux-source-6.1)"
    local want; want="$(kernel_hash)"
    if [[ -f "$OUT/vmlinux" && -f "$OUT/bzImage" && "$(cat "$OUT/kernel.hash" 2>/dev/null)" == "$want" ]]; then
        log "kernel up to date ($OUT/bzImage, hash ${want:0:12})"
        return
    fi
    mkdir -p "$BUILD" "$OUT"
    local src="$BUILD/src" obj="$BUILD/obj" tar_id
    tar_id="$(stat -c '%n %s %Y' "$SRC_TAR")"
    if [[ "$(cat "$BUILD/src.id" 2>/dev/null)" != "$tar_id" ]]; then
        log "extracting $SRC_TAR into $src (about a minute)"
        rm -rf "$src" "$obj" "$BUILD/src.id"
        mkdir -p "$src"
        tar -xf "$SRC_TAR" -C "$src" --strip-components=1
        echo "$tar_id" >"$BUILD/src.id"
    fi
    mkdir -p "$obj"
    log "configuring: tinyconfig + $HERE/kernel.config"
    make -s -C "$src" O="$obj" tinyconfig >/dev/null
    (cd "$src" && KCONFIG_CONFIG="$obj/.config" scripts/kconfig/merge_config.sh -m -O "$obj" "$obj/.config" "$HERE/kernel.config" >/dev/null)
    make -s -C "$src" O="$obj" olddefconfig >/dev/null
    check_config "$obj/.config"
    log "building bzImage with -j$JOBS (about 12 minutes on 2 cores; log: $BUILD/make.log)"
    local start=$SECONDS
    if ! nice make -C "$src" O="$obj" -j"$JOBS" bzImage >"$BUILD/make.log" 2>&1; then
        tail -n 30 "$BUILD/make.log" >&2
        die "kernel build failed (full log: $BUILD/make.log)"
    fi
    install -m 0644 "$obj/arch/x86/boot/bzImage" "$OUT/bzImage.tmp"
    objcopy --strip-debug "$obj/vmlinux" "$OUT/vmlinux.tmp"
    mv "$OUT/bzImage.tmp" "$OUT/bzImage"
    mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
    cp "$obj/.config" "$OUT/kernel.config"
    echo "$want" >"$OUT/kernel.hash"
    log "kernel built in $((SECONDS - start))s: $(du -h "$OUT/bzImage" | cut -f1) bzImage, $(du -h "$OUT/vmlinux" | cut -f1) vmlinux"
}

# Warn about every fragment line Kconfig did not honour (a missing dependency).
check_config() {
    local cfg="$1" line key bad=0
    while IFS= read -r line; do
        [[ "$line" =~ ^(CONFIG_[A-Z0-9_]+)=(.*)$ ]] || continue
        key="${BASH_REMATCH[1]}"
        if [[ "${BASH_REMATCH[2]}" == "n" ]]; then
            grep -q "^$key=" "$cfg" && { log "warning: $key should be off"; bad=1; }
        else
            grep -qxF "$line" "$cfg" || { log "warning: $line not honoured (got: $(grep "^$key=" "$cfg" || echo unset))"; bad=1; }
        fi
    done <"$HERE/kernel.config"
    [[ $bad == 0 ]] && log "config: every fragment option honoured"
    return 0
}

build_initramfs() {
    local target_dir="${CARGO_TARGET_DIR:-$REPO/target}"
    log "building hull-agent (release, static glibc)"
    # --target keeps RUSTFLAGS away from build scripts and proc macros.
    (cd "$REPO" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --locked -p hull-agent --target "$TARGET_TRIPLE" -j"$JOBS")
    local agent="$target_dir/$TARGET_TRIPLE/release/hull-agent"
    [[ -x "$agent" ]] || die "hull-agent binary missing at $agent"
    if ldd "$agent" 2>/dev/null | grep -q '=>'; then die "$agent is dynamically linked"; fi
    local want; want="$({ echo "recipe=$INITRAMFS_RECIPE"; sha256sum <"$agent"; } | sha)"
    mkdir -p "$OUT"
    if [[ -f "$OUT/initramfs.img" && "$(cat "$OUT/initramfs.hash" 2>/dev/null)" == "$want" ]]; then
        log "initramfs up to date ($OUT/initramfs.img, hash ${want:0:12})"
        return
    fi
    local stage; stage="$(mktemp -d)"
    trap 'rm -rf "$stage"' RETURN
    mkdir -p "$stage"/{dev,proc,sys,run,tmp,etc,mnt,sbin,var}
    chmod 1777 "$stage/tmp"
    # Without its symbol table (-s): 20% smaller, and every byte of /init is unpacked into
    # guest RAM at each boot and carried in every VM template.
    install -m 0755 -s "$agent" "$stage/init"
    ln -s /init "$stage/sbin/init"
    # The kernel's built-in initramfs already has /dev/console; add it when we can (root).
    mknod -m 0600 "$stage/dev/console" c 5 1 2>/dev/null || true
    (cd "$stage" && find . -print0 | LC_ALL=C sort -z \
        | cpio --null -o -H newc --owner=0:0 --reproducible --quiet) >"$OUT/initramfs.img.tmp"
    mv "$OUT/initramfs.img.tmp" "$OUT/initramfs.img"
    echo "$want" >"$OUT/initramfs.hash"
    log "initramfs built: $(du -h "$OUT/initramfs.img" | cut -f1) ($OUT/initramfs.img)"
}

case "${1:-all}" in
    kernel) build_kernel ;;
    initramfs) build_initramfs ;;
    all) build_kernel; build_initramfs ;;
    *) die "usage: $0 [kernel|initramfs|all]" ;;
esac
