#!/usr/bin/env bash
# CI check of the eviction-benchmark tools of issue #23 (python3 standard library only):
#   - every trace.py mode in --smoke runs twice and gives byte-identical output (determinism);
#   - every line parses: a tile-proxy path with 0 <= x, y < 2^z, a size in [5120, 61440] bytes,
#     a third column `scan` on sweep lines only (and only in scan modes, which must have some);
#   - belady.py --self-test and belady.py --smoke pass.
# Exits non-zero on the first failure. Usage: bench/trace-check.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

fail() {
    echo "trace-check: FAIL: $*" >&2
    exit 1
}

check_lines() { # file, expect_scan (0 or 1)
    awk -F '\t' -v want_scan="$2" '
        BEGIN { re = "^/here-proxy/mc/[0-9]+/[0-9]+/[0-9]+/png[?]indice=bench&style=explore[.]day&size=512$" }
        {
            if ($1 !~ re) { print "line " NR ": bad path: " $1; bad++; next }
            split($1, p, "/")
            z = p[4] + 0; x = p[5] + 0; y = p[6] + 0
            if (z > 30 || x >= 2 ^ z || y >= 2 ^ z) { print "line " NR ": tile out of range: " $1; bad++ }
            if ($2 !~ /^[0-9]+$/ || $2 + 0 < 5120 || $2 + 0 > 61440) { print "line " NR ": bad size: " $2; bad++ }
            if (NF == 3 && $3 == "scan") scan++
            else if (NF != 2) { print "line " NR ": expected 2 columns or a third `scan`"; bad++ }
        }
        END {
            if (NR == 0) { print "empty trace"; bad++ }
            if (want_scan && scan == 0) { print "no scan lines in a scan trace"; bad++ }
            if (!want_scan && scan > 0) { print scan " scan lines in a base trace"; bad++ }
            exit bad > 0
        }' "$1"
}

start=$SECONDS
modes=("zipf" "viewport" "scan --base zipf" "scan --base viewport")
for mode in "${modes[@]}"; do
    read -r -a argv <<<"$mode"
    name="${mode// /_}"
    for run in 1 2; do
        "$py" "$here/trace.py" "${argv[@]}" --smoke --out "$tmp/$name.$run" 2>"$tmp/$name.$run.err" ||
            fail "trace.py $mode --smoke: $(cat "$tmp/$name.$run.err")"
    done
    cmp -s "$tmp/$name.1" "$tmp/$name.2" || fail "trace.py $mode --smoke is not deterministic"
    cmp -s "$tmp/$name.1.err" "$tmp/$name.2.err" || fail "trace.py $mode --smoke: summaries differ"
    want_scan=0
    [[ "$mode" == scan* ]] && want_scan=1
    check_lines "$tmp/$name.1" "$want_scan" || fail "trace.py $mode --smoke: bad lines (above)"
    echo "trace-check: trace.py $mode --smoke: deterministic, $(wc -l <"$tmp/$name.1") valid lines; $(cat "$tmp/$name.1.err")"
done

# A different seed must give a different trace (the seed is used).
"$py" "$here/trace.py" zipf --smoke --seed 2 --out "$tmp/seed2" 2>/dev/null
if cmp -s "$tmp/zipf.1" "$tmp/seed2"; then fail "trace.py zipf --smoke --seed 2 equals seed 1"; fi

"$py" "$here/belady.py" --self-test || fail "belady.py --self-test"
"$py" "$here/belady.py" --smoke >"$tmp/smoke.out" || { cat "$tmp/smoke.out"; fail "belady.py --smoke"; }
tail -n 1 "$tmp/smoke.out"
echo "trace-check: ok in $((SECONDS - start)) s"
