#!/usr/bin/env bash
# Builds the images critest pulls, from local files only, and pushes them to a plain-http
# registry under the repository paths critest uses, so that a runtime mirroring
# registry.k8s.io, k8s.gcr.io and gcr.io to that registry (keeping the repository path)
# finds them:
#
#   test/critest/images.sh 127.0.0.1:5000
#
# Every image is busybox-static's /bin/busybox plus what the test needs; see README.md
# ("Test images") for what each stand-in reproduces. Multi-arch images are pushed as OCI
# indexes with a linux/amd64 entry (the real image) and a linux/arm64 entry that holds
# only a marker file, so platform selection is exercised. IMAGES_SUBSET=e2e stops after
# busybox, pause, nginx and httpd (all that test/k8s needs). Needs umoci, skopeo, jq,
# busybox-static and gcc with a static libc (build-essential).
set -euo pipefail

REG=${1:?usage: $0 registry-host:port}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for tool in umoci skopeo jq gcc; do
    command -v "$tool" >/dev/null || { echo "images.sh: missing $tool" >&2; exit 1; }
done
[[ -x /bin/busybox ]] || { echo "images.sh: missing /bin/busybox: apt-get install busybox-static" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/hull-critest-images.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
OCI=$WORK/oci
umoci init --layout "$OCI"
K8S=e2e-test-images # registry.k8s.io/e2e-test-images → $REG/e2e-test-images
CRI=k8s-staging-cri-tools            # gcr.io/k8s-staging-cri-tools → $REG/k8s-staging-cri-tools

log() { printf '[images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# add_layer <from tag> <to tag> <dir>: <to> = <from> plus a layer with the files of <dir>.
add_layer() {
    local from=$1 to=$2 dir=$3 bundle=$WORK/bundle
    if [[ -n $from ]]; then
        umoci tag --image "$OCI:$from" "$to"
    else
        umoci new --image "$OCI:$to"
    fi
    rm -rf "$bundle"
    umoci unpack --image "$OCI:$to" "$bundle" >/dev/null
    cp -a "$dir/." "$bundle/rootfs/"
    umoci repack --image "$OCI:$to" "$bundle"
    rm -rf "$bundle"
}

# stage <name>: an empty staging dir for a layer.
stage() {
    rm -rf "$WORK/stage/$1"
    mkdir -p "$WORK/stage/$1"
    echo "$WORK/stage/$1"
}

descriptor() { # <tag>: the layout's descriptor of that tag
    jq -c --arg t "$1" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t)
        | del(.annotations)' "$OCI/index.json"
}

# make_index <index tag> <amd64 tag>: an OCI index of <amd64 tag> and the arm64 marker.
make_index() {
    local name=$1 amd64=$2 index digest size
    index=$(jq -cn --argjson a "$(descriptor "$amd64")" --argjson b "$(descriptor arm64-marker)" '{
        schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
        manifests: [($a + {platform: {os: "linux", architecture: "amd64"}}),
                    ($b + {platform: {os: "linux", architecture: "arm64"}})]}')
    digest=$(printf '%s' "$index" | sha256sum | cut -d' ' -f1)
    size=$(printf '%s' "$index" | wc -c)
    printf '%s' "$index" >"$OCI/blobs/sha256/$digest"
    jq --arg n "$name" --arg d "sha256:$digest" --argjson s "$size" '.manifests += [{
        mediaType: "application/vnd.oci.image.index.v1+json", digest: $d, size: $s,
        annotations: {"org.opencontainers.image.ref.name": $n}}]' \
        "$OCI/index.json" >"$WORK/index.json"
    mv "$WORK/index.json" "$OCI/index.json"
}

push() { # <layout tag> <repository:tag>
    skopeo copy --quiet --all --dest-tls-verify=false "oci:$OCI:$1" "docker://$REG/$2"
    log "pushed $REG/$2"
}

# push_multi <amd64 tag> <repository:tag>...: pushes an amd64+arm64 index under each name.
push_multi() {
    local amd64=$1 dest
    shift
    make_index "$amd64-index" "$amd64"
    for dest in "$@"; do push "$amd64-index" "$dest"; done
}

config() { # <tag> <umoci config args...>
    local tag=$1
    shift
    umoci config --image "$OCI:$tag" --os linux --architecture amd64 "$@"
}

base_layer() {
    local r
    r=$(stage base)
    mkdir -p "$r/bin" "$r/etc" "$r/root" "$r/home" "$r/var/run" "$r/var/www" "$r/usr/bin" "$r/usr/sbin"
    mkdir -m 1777 "$r/tmp"
    cp /bin/busybox "$r/bin/busybox"
    # Hard links, as in the upstream busybox image: critest masks /bin/ls (MaskedPaths)
    # and expects only ls to go; through a symlink the mask would land on busybox itself.
    local a
    for a in $(/bin/busybox --list); do
        [[ $a == busybox ]] || ln "$r/bin/busybox" "$r/bin/$a"
    done
    # busybox-static has no ipcs (the HostIpc specs run `ipcs -m`): print the kernel's
    # System V tables instead, which hold the same ids.
    printf '%s\n' '#!/bin/sh' 'case "$1" in -q) t=msg ;; -s) t=sem ;; *) t=shm ;; esac' \
        'exec cat "/proc/sysvipc/$t"' >"$r/bin/ipcs"
    # Nor pgrep (the execSync-timeout spec runs `pgrep sleep`): pids whose name matches.
    printf '%s\n' '#!/bin/sh' 'f=1' 'for d in /proc/[0-9]*; do' \
        '    read -r n <"$d/comm" 2>/dev/null || continue' \
        '    case $n in *$1*) echo "${d#/proc/}"; f=0 ;; esac' 'done' 'exit $f' >"$r/bin/pgrep"
    chmod 755 "$r/bin/ipcs" "$r/bin/pgrep"
    cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
EOF
    cat >"$r/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
www-data:x:33:
nogroup:x:65534:
EOF
    echo "$r"
}

build_base() {
    add_layer "" busybox "$(base_layer)"
    config busybox --config.cmd sh \
        --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    # The arm64 entry of every index: a marker file only, never run on this host.
    local m
    m=$(stage marker)
    echo "arm64 entry of a hull critest image; holds no binaries" >"$m/ARM64-PLACEHOLDER"
    add_layer "" arm64-marker "$m"
    umoci config --image "$OCI:arm64-marker" --os linux --architecture arm64 --config.cmd /bin/false
}

# web_server <tag> <port> <process name> <start message>: busybox httpd serving
# /usr/share/nginx/html/index.html on <port>, its executable named <process name> (so
# `pidof` finds it), its pid in /var/run/nginx.pid, "nginx: master process" in its
# cmdline (as the realm), and <start message> on stderr.
web_server() {
    local tag=$1 port=$2 name=$3 msg=$4 r
    r=$(stage "$tag")
    mkdir -p "$r/usr/sbin" "$r/usr/share/nginx/html"
    cp /bin/busybox "$r/usr/sbin/$name"
    echo "<html><body><h1>Welcome to nginx!</h1><p>hull critest stand-in (busybox httpd)</p></body></html>" \
        >"$r/usr/share/nginx/html/index.html"
    cat >"$r/usr/sbin/start-web-server" <<EOF
#!/bin/sh
echo "$msg" >&2
echo \$\$ > /var/run/nginx.pid
exec -a httpd /usr/sbin/$name -f -v -p $port -h /usr/share/nginx/html -r "nginx: master process"
EOF
    chmod 755 "$r/usr/sbin/start-web-server"
    add_layer busybox "$tag" "$r"
    config "$tag" --clear config.cmd --config.cmd /usr/sbin/start-web-server --config.exposedports "$port/tcp"
}

build_images() {
    local r
    build_base
    push_multi busybox "$K8S/busybox:1.29-2"

    # pause: a static C program (src/pause.c) that sleeps until signalled.
    r=$(stage pause)
    gcc -static -Os -o "$r/pause" "$HERE/src/pause.c"
    add_layer "" pause "$r"
    config pause --config.entrypoint /pause
    push_multi pause pause:3.9 # also k8s.gcr.io/pause:3.9: the same mirror path

    web_server nginx 80 nginx "nginx: stand-in (busybox httpd) listening on :80"
    push_multi nginx "$K8S/nginx:1.14-2"
    web_server httpd 80 httpd "httpd: stand-in for Apache httpd 2.4.39 (busybox httpd) listening on :80"
    push_multi httpd "$K8S/httpd:2.4.39-4"
    # The Kubernetes suite (test/k8s) needs only the e2e-test-images above.
    [[ ${IMAGES_SUBSET:-} == e2e ]] && return
    web_server hostnet-nginx 12003 nginx "nginx: stand-in (busybox httpd) listening on :12003"
    push hostnet-nginx "$CRI/hostnet-nginx-amd64:latest"

    # nonewprivs: a setuid-root program (src/nnp.c) printing its effective uid.
    r=$(stage nnp)
    mkdir -p "$r/usr/local/bin"
    gcc -static -Os -o "$r/usr/local/bin/nnp" "$HERE/src/nnp.c"
    chmod 4755 "$r/usr/local/bin/nnp"
    add_layer busybox nonewprivs "$r"
    config nonewprivs --clear config.cmd --config.cmd /usr/local/bin/nnp --config.user 1000
    push_multi nonewprivs "$K8S/nonewprivs:1.3"

    build_cri_tools_images
}

# The images of cri-tools' images/build, under gcr.io/k8s-staging-cri-tools.
build_cri_tools_images() {
    local user tag name r
    for user in 1002 www-data 1003:1004 www-data:1004; do
        case $user in
            1002) name=test-image-user-uid ;;
            www-data) name=test-image-user-username ;;
            1003:1004) name=test-image-user-uid-group ;;
            www-data:1004) name=test-image-user-username-group ;;
        esac
        umoci tag --image "$OCI:busybox" "$name"
        config "$name" --config.user "$user"
        push_multi "$name" "$CRI/$name:latest"
    done

    r=$(stage predefined-group)
    mkdir -p "$r/etc" "$r/home/default-user"
    cp "$WORK/stage/base/etc/passwd" "$WORK/stage/base/etc/group" "$r/etc/"
    echo "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh" >>"$r/etc/passwd"
    printf 'default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n' >>"$r/etc/group"
    add_layer busybox predefined-group "$r"
    config predefined-group --config.user 1000
    push_multi predefined-group "$CRI/test-image-predefined-group:latest"

    # Like `ADD $TEST $TEST`: one empty file named after the image or tag.
    for name in test-image-1 test-image-2 test-image-3 test-image-latest test-image-tag:test \
        test-image-tag:all test-image-tags; do
        tag=${name//:/-}
        r=$(stage "$tag")
        case $name in
            test-image-tags) touch "$r/same-image" ;;
            *:*) touch "$r/${name#*:}" ;;
            *) touch "$r/$name" ;;
        esac
        add_layer busybox "$tag" "$r"
        case $name in
            test-image-tags) push_multi "$tag" "$CRI/$name:1" "$CRI/$name:2" "$CRI/$name:3" ;;
            *:*) push_multi "$tag" "$CRI/$name" ;;
            *) push_multi "$tag" "$CRI/$name:latest" ;;
        esac
    done
}

build_images
log "all images pushed to $REG"
