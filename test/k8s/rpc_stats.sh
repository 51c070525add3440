#!/usr/bin/env bash
# Per-RPC counts and latencies from a hulld log with `hulld::rpc=debug` (one
# "CRI call rpc=<name> micros=<n> code=<grpc status>" line per call, server/src/cri/rpc_log.rs):
#
#   test/k8s/rpc_stats.sh hulld.log [FROM TO]
#
# FROM/TO (RFC 3339 UTC, as in the log: 2026-12-07T22:30:00) keep the calls in that
# window. Prints a markdown table: RPC, calls, calls per minute over the window, errors,
# p50, p99 and max in milliseconds.
set -euo pipefail
LOGF=${1:?usage: $0 hulld.log [FROM TO]}
FROM=${2:-0000} TO=${3:-9999}
sed 's/\x1b\[[0-9;]*m//g' "$LOGF" | awk -v from="$FROM" -v to="$TO" '
    / CRI call / && $1 >= from && $1 <= to {
        rpc = ""; us = ""; code = ""
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^rpc=/) rpc = substr($i, 5)
            else if ($i ~ /^micros=/) us = substr($i, 8)
            else if ($i ~ /^code=/) code = substr($i, 6)
        }
        if (rpc == "") next
        n[rpc]++; v[rpc, n[rpc]] = us; if (code != "0") err[rpc]++
        if (first == "") first = $1; last = $1
    }
    function secs(ts,   d, t) { split(ts, d, "T"); split(d[2], t, ":"); return t[1] * 3600 + t[2] * 60 + t[3] }
    END {
        span = secs(last) - secs(first); if (span < 0) span += 86400; if (span <= 0) span = 1
        printf "calls from %s to %s (%.0f s)\n\n", first, last, span
        print "| RPC | calls | per min | errors | p50 ms | p99 ms | max ms |"
        print "|---|---:|---:|---:|---:|---:|---:|"
        for (r in n) {
            m = n[r]; delete a
            for (i = 1; i <= m; i++) a[i] = v[r, i] + 0
            # insertion sort: a few thousand calls at most
            for (i = 2; i <= m; i++) { x = a[i]; j = i - 1; while (j > 0 && a[j] > x) { a[j + 1] = a[j]; j-- } a[j + 1] = x }
            p50 = a[int((m - 1) * 0.50) + 1]; p99 = a[int((m - 1) * 0.99) + 1]
            printf "| %s | %d | %.1f | %d | %.2f | %.2f | %.2f |\n", r, m, m * 60 / span, err[r] + 0, p50 / 1000, p99 / 1000, a[m] / 1000
        }
    }' | { read -r head; echo "$head"; read -r blank; echo; read -r h1; read -r h2; echo "$h1"; echo "$h2"; sort -t'|' -k3 -nr; }
