#!/usr/bin/env bash
# Set up hull on a fresh Debian 12 machine (as root) and start hulld:
#
#   packaging/install.sh
#
# 1. installs build/runtime dependencies (packaging/deps.sh),
# 2. builds hulld, hull-vmm and hull-agent in release mode and installs them to /usr/local/bin,
# 3. builds the guest kernel + initramfs into /var/lib/hull/guest (cached; ~12 min the first time),
# 4. installs /etc/hull/config.toml, the pod network /etc/cni/net.d/10-hull-bridge.conflist
#    and /etc/crictl.yaml pointing crictl at hull (each only if absent),
# 5. starts hulld: with systemd when it runs, else in the background (log /var/log/hull/hulld.log).
#
# Then: crictl --runtime-endpoint unix:///run/hull/hull.sock info
#       kubelet --container-runtime-endpoint unix:///run/hull/hull.sock ...
set -euo pipefail

# cargo from rustup may not be on a non-login shell's PATH.
export HOME="${HOME:-/root}"
export PATH="$PATH:$HOME/.cargo/bin"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[install %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
[[ $EUID -eq 0 ]] || { log "run me as root"; exit 1; }

"$REPO/packaging/deps.sh"

log "building hull (release)"
(cd "$REPO" && cargo build --release --locked -p hulld -p hull-vmm -p hull-agent --bins)
install -m 0755 "$REPO/target/release/hulld" /usr/local/bin/hulld
# Next to hulld: the hull backend looks for hull-vmm there first (then on PATH).
install -m 0755 "$REPO/target/release/hull-vmm" /usr/local/bin/hull-vmm
# hull-agent in host mode runs host-isolation pods (hostNetwork/hostPID/hostIPC, or a
# handler with isolation = "host"); the config's default path.
install -m 0755 "$REPO/target/release/hull-agent" /usr/local/bin/hull-agent

log "building the guest kernel and initramfs"
"$REPO/packaging/guest/build.sh" all

install -d -m 0755 /etc/hull /etc/cni/net.d /var/log/hull /usr/local/share/doc/hull
[[ -e /etc/hull/config.toml ]] || install -m 0644 "$REPO/packaging/config.toml" /etc/hull/config.toml
if ! ls /etc/cni/net.d/*.conf* >/dev/null 2>&1; then
    install -m 0644 "$REPO/packaging/cni/10-hull-bridge.conflist" /etc/cni/net.d/
fi
install -m 0644 "$REPO/README.md" /usr/local/share/doc/hull/README.md
if [[ ! -e /etc/crictl.yaml ]]; then
    printf 'runtime-endpoint: unix:///run/hull/hull.sock\nimage-endpoint: unix:///run/hull/hull.sock\ntimeout: 60\n' >/etc/crictl.yaml
fi
/usr/local/bin/hulld --config /etc/hull/config.toml --print-config >/dev/null

if [[ -d /run/systemd/system ]]; then
    install -m 0644 "$REPO/packaging/hulld.service" /etc/systemd/system/hulld.service
    systemctl daemon-reload
    systemctl enable hulld.service >/dev/null
    systemctl restart hulld.service
else
    log "systemd is not running: starting hulld in the background"
    if [[ -f /run/hull/hulld.pid ]] && kill -0 "$(cat /run/hull/hulld.pid)" 2>/dev/null; then
        kill "$(cat /run/hull/hulld.pid)"
        for _ in $(seq 50); do kill -0 "$(cat /run/hull/hulld.pid)" 2>/dev/null || break; sleep 0.1; done
    fi
    mkdir -p /run/hull
    setsid /usr/local/bin/hulld --config /etc/hull/config.toml \
        >>/var/log/hull/hulld.log 2>&1 </dev/null &
    echo $! >/run/hull/hulld.pid
fi

for _ in $(seq 100); do
    [[ -S /run/hull/hull.sock ]] && break
    sleep 0.1
done
[[ -S /run/hull/hull.sock ]] || { log "hulld did not start; see /var/log/hull/hulld.log or journalctl -u hulld"; exit 1; }
log "hulld is serving unix:///run/hull/hull.sock"
log "  crictl --runtime-endpoint unix:///run/hull/hull.sock info"
log "  kubelet --container-runtime-endpoint unix:///run/hull/hull.sock"
