# Functions of test/critest/run.sh (sourced): registry, hulld, progress, summary, cleanup.
# They use run.sh's globals: HERE REPO WORK STATE SOCK LOG_DIR BRIDGE CNI_NET and the PIDs.
# shellcheck shell=bash

# start_registry: docker-registry on 127.0.0.1:5000, or the next free port up to 5099.
start_registry() {
    local port
    for port in $(seq 5000 5099); do
        [[ -z $(ss -Hltn "sport = :$port") ]] && break
    done
    [[ -z $(ss -Hltn "sport = :$port") ]] || die "no free port in 5000-5099 for the registry"
    [[ $port == 5000 ]] || log "127.0.0.1:5000 is taken: the registry uses port $port"
    REGISTRY_ADDR=127.0.0.1:$port
    mkdir -p "$WORK/registry"
    cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
    setsid /usr/bin/docker-registry serve "$WORK/registry.yml" >"$LOG_DIR/registry.log" 2>&1 &
    REGISTRY_PID=$!
    local _
    for _ in $(seq 50); do
        curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1 && { log "registry on $REGISTRY_ADDR"; return; }
        kill -0 "$REGISTRY_PID" 2>/dev/null || break
        sleep 0.2
    done
    die "docker-registry did not start; see $LOG_DIR/registry.log"
}

# find_hulld: $HULLD, or `cargo build -p hulld -p hull-agent` into $CARGO_TARGET_DIR
# (default target/). hull-agent (host-isolation pods): $HULL_AGENT, else beside hulld.
find_hulld() {
    if [[ -n ${HULLD:-} ]]; then
        [[ -x $HULLD ]] || die "HULLD=$HULLD is not an executable"
        HULLD_BIN=$HULLD
    else
        log "cargo build -p hulld -p hull-agent (log: $LOG_DIR/build.log)"
        (cd "$REPO" && cargo build -p hulld -p hull-agent -j2) >"$LOG_DIR/build.log" 2>&1 ||
            die "cargo build -p hulld failed; see $LOG_DIR/build.log"
        HULLD_BIN=${CARGO_TARGET_DIR:-$REPO/target}/debug/hulld
    fi
    AGENT_BIN=${HULL_AGENT:-$(dirname "$HULLD_BIN")/hull-agent}
    [[ -x $AGENT_BIN ]] || die "no hull-agent at $AGENT_BIN (set HULL_AGENT): host-isolation pods need it"
    log "hulld: $HULLD_BIN, hull-agent: $AGENT_BIN"
}

# write_config: hulld's config and the CNI network (bridge $BRIDGE, 10.99.0.0/16).
write_config() {
    local subnet=10.99.0.0/16 mirror="[{ endpoint = \"http://$REGISTRY_ADDR\" }]" host
    if ip -4 route show | grep -q '^10\.99\.'; then
        die "10.99.0.0/16 is already routed on this host: $(ip -4 route show | grep '^10\.99\.')"
    fi
    ip link show "$BRIDGE" >/dev/null 2>&1 &&
        die "bridge $BRIDGE exists: another critest run is going on (or remove it: ip link del $BRIDGE)"
    mkdir -p "$WORK/cni" "$WORK/root"
    jq --arg name "$CNI_NET" --arg br "$BRIDGE" --arg subnet "$subnet" --arg ipam "$WORK/cni-ipam" '
        .name = $name
        | .plugins[0].bridge = $br
        | .plugins[0].ipam.ranges = [[{subnet: $subnet}]]
        | .plugins[0].ipam.dataDir = $ipam' \
        "$REPO/packaging/cni/10-hull-bridge.conflist" >"$WORK/cni/10-hullcrit.conflist" ||
        die "cannot write the CNI config"
    {
        echo "root_dir = \"$WORK/root\""
        echo "state_dir = \"$STATE\""
        echo "socket = \"$SOCK\""
        echo "log_level = \"${HULL_LOG_LEVEL:-info}\""
        echo
        if [[ -n ${HULL_KERNEL:-}${HULL_INITRAMFS:-} ]]; then
            echo "[vm]"
            [[ -n ${HULL_KERNEL:-} ]] && echo "kernel = \"$HULL_KERNEL\""
            [[ -n ${HULL_INITRAMFS:-} ]] && echo "initramfs = \"$HULL_INITRAMFS\""
            echo
        fi
        echo "[cni]"
        echo "conf_dir = \"$WORK/cni\""
        echo
        echo "[streaming]"
        echo "address = \"127.0.0.1:0\""
        echo
        # critest's pods live in namespaces named cri-test-namespace<uuid>: allow all.
        echo "[host_isolation]"
        echo "allowed_namespaces = [\"*\"]"
        echo "agent = \"$AGENT_BIN\""
        for host in registry.k8s.io k8s.gcr.io gcr.io; do
            echo
            echo "[registry.hosts.\"$host\"]"
            echo "mirrors = $mirror"
            echo "upstream = false"
        done
    } >"$WORK/config.toml"
    cp "$WORK/config.toml" "$WORK/cni/10-hullcrit.conflist" "$LOG_DIR/"
    "$HULLD_BIN" --config "$WORK/config.toml" --print-config >"$LOG_DIR/effective-config.toml" 2>&1 ||
        die "hulld rejects the config: $(cat "$LOG_DIR/effective-config.toml")"
    local kernel initramfs
    kernel=$(sed -n 's/^kernel = "\(.*\)"$/\1/p' "$LOG_DIR/effective-config.toml")
    initramfs=$(sed -n 's/^initramfs = "\(.*\)"$/\1/p' "$LOG_DIR/effective-config.toml")
    for f in $kernel $initramfs; do
        [[ -f $f ]] || log "WARNING: guest file $f (hulld's config) is missing: pods cannot" \
            "start. Run packaging/guest/build.sh all, or set HULL_KERNEL / HULL_INITRAMFS."
    done
}

start_hulld() {
    setsid "$HULLD_BIN" --config "$WORK/config.toml" >"$LOG_DIR/hulld.log" 2>&1 &
    HULLD_PID=$!
    local _
    for _ in $(seq 300); do
        if [[ -S $SOCK ]]; then
            if ! command -v crictl >/dev/null ||
                crictl -r "unix://$SOCK" -i "unix://$SOCK" version >/dev/null 2>&1; then
                log "hulld (pid $HULLD_PID) serving on $SOCK"
                return
            fi
        fi
        kill -0 "$HULLD_PID" 2>/dev/null || die "hulld exited; see $LOG_DIR/hulld.log"
        sleep 0.2
    done
    die "hulld did not serve $SOCK within 60s; see $LOG_DIR/hulld.log"
}

# progress <log> <pid>: one line per minute with the number of specs finished so far.
progress() {
    local logf=$1 pid=$2 n=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep 2
        ((++n % 30 == 0)) || continue
        log "$(grep -c '^• ' "$logf") specs finished, $(grep -c '^• \[\(FAILED\|PANICKED\|TIMEDOUT\)\]' "$logf") failed"
    done
}

# summarize <log dir>: counts, failed specs with their first error line, failures grouped
# by (normalised) first error line with a rough category, skip reasons.
summarize() {
    local report=$1/${2:-report.json}
    [[ -s $report ]] || { echo "no report.json: critest did not finish; see $1/critest.log"; return; }
    # shellcheck disable=SC2016
    jq -r '
      def norm: gsub("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"; "<uuid>")
        | gsub("[0-9a-f]{32,64}"; "<id>") | gsub("0x[0-9a-f]+"; "0x…")
        | gsub("\\b[0-9]+(\\.[0-9]+)?(ms|s|µs)\\b"; "<t>");
      def name: ((.ContainerHierarchyTexts // []) + [.LeafNodeText]) | join(" ");
      def cause: (.Failure.Message // .State) | split("\n")
        | map(select(test("^\\s*$|^Unexpected error:|^\\s*<[^>]*>") | not)) | (.[0] // "")
        | sub("^\\s+"; "");
      def category: if test("code = Unimplemented") then "not implemented"
        elif test("test-image-digest@sha256") then "environment"
        elif test("hostNetwork pods are not supported") then "by design"
        else "investigate" end;
      def failed: .State | IN("passed", "skipped", "pending") | not;
      [.[].SpecReports[]? | select(.LeafNodeType == "It")] as $specs
      | ($specs | map(select(failed))) as $fails
      | ($specs | map(select(.State | IN("skipped", "pending")))) as $skips
      | ($specs | map(select(.State == "passed")) | length) as $p
      | "critest summary (\($specs | length) specs)",
        "",
        "Failed specs:",
        ($fails[] | "  - \(name)\n      \(.State): \(cause | .[0:240])"),
        "",
        "Failures by cause (count, category, first error line normalised):",
        ($fails | map(cause | norm | .[0:200]) | group_by(.)
           | map({n: length, m: .[0], c: (.[0] | category)}) | sort_by(-.n)[]
           | "  \(.n)\t\(.c)\t\(.m)"),
        "",
        "Skipped (count, reason):",
        ($skips | map((.Failure.Message // "" | split("\n")[0]) // "" | if . == "" then "(not selected: critest skips benchmarks, or --focus/--skip)" else . end)
           | group_by(.) | map("  \(length)\t\(.[0])")[]),
        "",
        "critest: \($p) passed, \($fails | length) failed, \($skips | length) skipped"' "$report"
}

# stop_pid <what> <pid>: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
    local what=$1 pid=$2 _
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.2
    done
    log "$what (pid $pid) ignored SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

# Pod ids hulld knows, and those with a dir in its state dir.
pod_ids() {
    if [[ -n ${HULLD_PID:-} ]] && kill -0 "$HULLD_PID" 2>/dev/null && command -v crictl >/dev/null; then
        timeout 30 crictl -r "unix://$SOCK" -i "unix://$SOCK" pods -q 2>/dev/null
    fi
    [[ -d $STATE/sandboxes ]] && ls "$STATE/sandboxes"
}

remove_pods() {
    command -v crictl >/dev/null && [[ -n ${HULLD_PID:-} ]] && kill -0 "$HULLD_PID" 2>/dev/null || return 0
    local id cr=(crictl -r "unix://$SOCK" -i "unix://$SOCK" --timeout 60s)
    for id in $(timeout 30 "${cr[@]}" pods -q 2>/dev/null); do
        log "removing pod $id left behind"
        timeout 90 "${cr[@]}" stopp "$id" >/dev/null 2>&1
        timeout 90 "${cr[@]}" rmp -f "$id" >/dev/null 2>&1 || log "crictl rmp $id failed"
    done
}

# Processes whose command line names our temp dirs (VMMs, virtiofsd) outlive hulld by
# design: end them by pid.
kill_leftovers() {
    local sig dir pid pids
    for sig in TERM KILL; do
        pids=()
        for dir in /proc/[0-9]*; do
            pid=${dir#/proc/}
            [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
            { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -e "$STATE" -e "$WORK" && pids+=("$pid")
        done
        [[ ${#pids[@]} -eq 0 ]] && return 0
        log "SIG$sig to processes left behind: ${pids[*]}"
        kill -"$sig" "${pids[@]}" 2>/dev/null
        sleep 2
    done
}

cleanup() {
    local rc=$? id ids mnt
    # Ctrl-C may have ended a `| tee` reading our output: never die of SIGPIPE here.
    trap '' INT TERM HUP PIPE
    set +e
    case $rc in
        129 | 130 | 143) log "cleaning up after signal $((rc - 128))" ;;
        *) log "cleaning up" ;;
    esac
    [[ -n ${CRITEST_PID:-} ]] && stop_pid critest "$CRITEST_PID"
    ids=$(pod_ids | sort -u)
    remove_pods
    stop_pid hulld "${HULLD_PID:-}"
    stop_pid registry "${REGISTRY_PID:-}"
    kill_leftovers
    for id in $ids; do
        [[ -e /run/netns/hull-$id ]] && { log "removing netns hull-$id"; ip netns del "hull-$id"; }
    done
    for mnt in $(findmnt -rn -o TARGET | grep -E "^($WORK|$STATE)(/|$)" | sort -r); do
        umount -l "$mnt" || log "cannot unmount $mnt"
    done
    ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
    if [[ ${CRITEST_KEEP:-0} == 1 ]]; then
        log "kept $WORK and $STATE (CRITEST_KEEP=1)"
    else
        rm -rf --one-file-system "$WORK" "$STATE"
    fi
    log "done (logs: $LOG_DIR)"
    exit "$rc"
}

# check_expected <report.json> <expected list> <non-empty when --focus/--skip narrowed the
# run>: compares the failed specs with the list (`<full spec name> | <reason>` a line).
# Prints what differs and returns 1 on an unexpected failure, a listed spec that passed, or
# (full runs only) a listed spec that did not run; 2 when the list is malformed.
check_expected() {
    local report=$1 list=$2 narrowed=$3 states rc
    states=$(mktemp) || return 2
    # name <TAB> state <TAB> attempts, for every It spec critest reported.
    jq -r '.[].SpecReports[]? | select(.LeafNodeType == "It")
        | [(((.ContainerHierarchyTexts // []) + [.LeafNodeText]) | join(" ")),
           .State, (.NumAttempts // 1)] | @tsv' "$report" >"$states" || { rm -f "$states"; return 2; }
    awk -F'\t' -v narrowed="$narrowed" '
        FNR == NR { state[$1] = $2; attempts[$1] = $3; next }
        /^[[:space:]]*(#|$)/ { next }
        {
            i = index($0, " | ")
            name = substr($0, 1, i - 1); reason = substr($0, i + 3)
            gsub(/^[[:space:]]+|[[:space:]]+$/, "", name); gsub(/^[[:space:]]+|[[:space:]]+$/, "", reason)
            if (i == 0 || name == "" || reason == "") {
                printf "expected list line %d: want \"<full spec name> | <reason>\": %s\n", FNR, $0
                bad = 1; next
            }
            listed[name] = reason
        }
        END {
            if (bad) exit 2
            for (n in state) {
                failed = state[n] !~ /^(passed|skipped|pending)$/
                if (failed && !(n in listed)) { unexpected_fail[++nf] = n " (" state[n] ")"; errors++ }
                if (state[n] == "passed" && attempts[n] > 1) flaky[++nk] = n " (passed on try " attempts[n] ")"
            }
            for (n in listed) {
                if (!(n in state) || state[n] ~ /^(skipped|pending)$/) {
                    if (narrowed == "") { not_run[++nr] = n; errors++ }
                } else if (state[n] == "passed") { unexpected_pass[++np] = n; errors++ }
                else expected_fail++
            }
            printf "Expected failures seen: %d of %d listed\n", expected_fail, length(listed)
            if (nf) { print "UNEXPECTED FAILURES (fix hulld, or list them with a reason):"; for (i = 1; i <= nf; i++) print "  - " unexpected_fail[i] }
            if (np) { print "UNEXPECTED PASSES (remove them from the list):"; for (i = 1; i <= np; i++) print "  - " unexpected_pass[i] }
            if (nr) { print "LISTED BUT NOT RUN (renamed or skipped now: update the list):"; for (i = 1; i <= nr; i++) print "  - " not_run[i] }
            if (nk) { print "Flaky (passed on a later try; not failures):"; for (i = 1; i <= nk; i++) print "  - " flaky[i] }
            print (errors ? "critest: the results differ from the expected list" : "critest: the results match the expected list")
            exit (errors ? 1 : 0)
        }' "$states" "$list"
    rc=$?
    rm -f "$states"
    return "$rc"
}
