#!/usr/bin/env python3
"""Load generator of bench/fleet.sh (standard library only).

  fleet-load.py trace --tiles N --requests R --seed S --out FILE
      writes a deterministic trace: R tile paths drawn from N distinct tiles with a Zipf law
      (s = 1.0) over a popularity ranking in which a few city areas are hot (the tiles of a rank
      cluster around one of 6 city centres, more spread at lower zooms).
  fleet-load.py run --url URL --trace FILE --start A --count C --phase NAME --conns K
                    --out FILE [--mark-at M --mark-file F]
      replays trace lines [A, A+C) over K keep-alive HTTP/1.1 connections (threads); appends one
      line per request to --out: phase, start time (s), latency (ms), status (0: connection
      error), X-Cache, X-Cache-Tier. After M requests it creates --mark-file (fleet.sh waits for
      it to fire an event while requests are in flight).
  fleet-load.py report --log FILE --events FILE --window S
      prints the per-phase table; an error within S seconds after a SIGKILL (events file:
      `kill TIME`) is counted apart as in flight on the killed pod.
Every loop is bounded: each request has a 10 s timeout, each connection is retried at most once
per request.
"""
import argparse
import bisect
import http.client
import math
import os
import random
import sys
import threading
import time
import urllib.parse

CITIES = [(52.52, 13.40), (48.86, 2.35), (40.71, -74.0), (35.68, 139.69), (-23.55, -46.63), (51.51, -0.13)]


def tile_of(lat, lon, z):
    n = 2**z
    x = int((lon + 180.0) / 360.0 * n)
    r = math.radians(lat)
    y = int((1.0 - math.asinh(math.tan(r)) / math.pi) / 2.0 * n)
    return min(max(x, 0), n - 1), min(max(y, 0), n - 1)


def make_trace(tiles, requests, seed):
    rng = random.Random(seed)
    ranked, seen = [], set()
    zooms = [10, 11, 12, 13, 14, 15, 16]
    zweights = [1, 2, 4, 6, 8, 6, 4]
    bound = tiles * 50
    i = 0
    while len(ranked) < tiles and i < bound:
        i += 1
        lat, lon = CITIES[rng.randrange(len(CITIES))]
        z = rng.choices(zooms, zweights)[0]
        cx, cy = tile_of(lat, lon, z)
        # More distinct tiles further from the centre: the spread grows with the rank.
        spread = 1.0 + 6.0 * len(ranked) / tiles * 2 ** (z - 10) ** 0.5
        x = int(cx + rng.gauss(0, spread)) % 2**z
        y = int(cy + rng.gauss(0, spread)) % 2**z
        if (z, x, y) not in seen:
            seen.add((z, x, y))
            ranked.append((z, x, y))
    if len(ranked) < tiles:
        sys.exit(f"fleet-load: only {len(ranked)} distinct tiles drawn")
    cum, total = [], 0.0
    for r in range(1, tiles + 1):
        total += 1.0 / r
        cum.append(total)
    out = []
    for _ in range(requests):
        k = bisect.bisect_left(cum, rng.random() * total)
        z, x, y = ranked[min(k, tiles - 1)]
        out.append(f"/v3/base/mc/{z}/{x}/{y}/png")
    return out


def run(args):
    with open(args.trace) as f:
        lines = f.read().split()
    work = lines[args.start:args.start + args.count]
    u = urllib.parse.urlparse(args.url)
    lock = threading.Lock()
    nxt = [0]
    done = [0]
    results = []

    def worker():
        conn = None
        while True:
            with lock:
                i = nxt[0]
                if i >= len(work):
                    break
                nxt[0] += 1
            path = work[i]
            t0 = time.time()
            status, xc, tier = 0, "", ""
            for attempt in range(2):
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                    xc = resp.getheader("X-Cache", "") or ""
                    tier = resp.getheader("X-Cache-Tier", "") or ""
                    if resp.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                    break
                except (OSError, http.client.HTTPException):
                    if conn is not None:
                        conn.close()
                    conn = None
                    # A keep-alive connection nginx closed between two requests is not an
                    # error (any client reconnects): retry once on a new one. An error on the
                    # new connection is.
                    if attempt == 1:
                        status = 0
            ms = (time.time() - t0) * 1000.0
            with lock:
                results.append((args.phase, t0, ms, status, xc, tier, path))
                done[0] += 1
                if args.mark_at and done[0] == args.mark_at:
                    open(args.mark_file, "w").close()
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(args.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(args.out, "a") as f:
        for p, t0, ms, st, xc, tier, path in results:
            f.write(f"{p}\t{t0:.6f}\t{ms:.3f}\t{st}\t{xc or '-'}\t{tier or '-'}\t{path}\n")


def pct(sorted_ms, q):
    if not sorted_ms:
        return 0.0
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def report(args):
    kills = []
    if os.path.exists(args.events):
        with open(args.events) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] == "kill":
                    kills.append(float(parts[1]))
    upstream, prev = {}, 0
    if args.upstream and os.path.exists(args.upstream):
        with open(args.upstream) as f:
            for line in f:
                name, total = line.rstrip("\n").split("\t")
                upstream[name] = int(total) - prev
                prev = int(total)
    phases, rows, new, seen = [], {}, {}, set()
    with open(args.log) as f:
        for line in f:
            p, t0, ms, st, xc, tier, path = line.rstrip("\n").split("\t")
            if p not in rows:
                phases.append(p)
                rows[p] = []
                new[p] = 0
            if path not in seen:
                seen.add(path)
                new[p] += 1
            rows[p].append((float(t0), float(ms), int(st), xc, tier))
    print(f"{'phase':<24} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'killed':>6} "
          f"{'hit %':>6} {'memory':>7} {'disk':>6} {'redis':>6} {'miss':>6} {'new tiles':>9} {'upstream':>8}")
    tot_err = tot_killed = 0
    for p in phases:
        rs = rows[p]
        lat = sorted(r[1] for r in rs)
        err = killed = 0
        tiers = {"memory": 0, "disk": 0, "redis": 0}
        hits = 0
        for t0, ms, st, xc, tier in rs:
            if st != 200:
                if any(k - 10.0 <= t0 <= k + args.window for k in kills) and (st == 0 or st >= 500):
                    killed += 1
                else:
                    err += 1
                continue
            if xc.upper().startswith("HIT") or xc.upper() == "STALE":
                hits += 1
                if tier in tiers:
                    tiers[tier] += 1
        n = len(rs)
        tot_err += err
        tot_killed += killed

        def share(k):
            return 100.0 * k / n if n else 0.0
        print(f"{p:<24} {n:>8} {pct(lat, 0.5):>8.1f} {pct(lat, 0.99):>8.1f} {err:>6} {killed:>6} "
              f"{share(hits):>6.1f} {share(tiers['memory']):>7.1f} {share(tiers['disk']):>6.1f} "
              f"{share(tiers['redis']):>6.1f} {share(n - hits - err - killed):>6.1f} {new[p]:>9} {upstream.get(p, 0):>8}")
    print(f"client errors: {tot_err} (plus {tot_killed} in flight on the killed pod)")
    if upstream:
        first = phases[:3]
        up3, new3 = sum(upstream.get(p, 0) for p in first), sum(new[p] for p in first)
        print(f"upstream requests per new tile while scaling 2 -> 4 -> 2 (phases 1-3): "
              f"{up3}/{new3} = {up3 / max(new3, 1):.3f}")
        first = phases[:4]
        up4, new4 = sum(upstream.get(p, 0) for p in first), sum(new[p] for p in first)
        print(f"upstream requests per new tile, phases 1-4 (all but the Redis primary outage): "
              f"{up4}/{new4} = {up4 / max(new4, 1):.3f}")
        if args.ratio_out:
            with open(args.ratio_out, "w") as f:
                f.write(f"{up4 / max(new4, 1):.4f}\n")
        if len(phases) > 4:
            p5 = phases[4]
            why = " (re-fetches while a primary's slots were unreachable)" if "Redis primary" in p5 else ""
            print(f"phase {p5}: {upstream.get(p5, 0) - new[p5]} upstream requests beyond its "
                  f"{new[p5]} new tiles{why}")
    return tot_err


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trace")
    t.add_argument("--tiles", type=int, required=True)
    t.add_argument("--requests", type=int, required=True)
    t.add_argument("--seed", type=int, default=22)
    t.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--url", required=True)
    r.add_argument("--trace", required=True)
    r.add_argument("--start", type=int, required=True)
    r.add_argument("--count", type=int, required=True)
    r.add_argument("--phase", required=True)
    r.add_argument("--conns", type=int, default=32)
    r.add_argument("--out", required=True)
    r.add_argument("--mark-at", type=int, default=0)
    r.add_argument("--mark-file", default="")
    p = sub.add_parser("report")
    p.add_argument("--log", required=True)
    p.add_argument("--events", required=True)
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--upstream", default="")
    p.add_argument("--ratio-out", default="")
    a = ap.parse_args()
    if a.cmd == "trace":
        tr = make_trace(a.tiles, a.requests, a.seed)
        with open(a.out, "w") as f:
            f.write("\n".join(tr) + "\n")
        print(len(set(tr)))
    elif a.cmd == "run":
        run(a)
    else:
        errors = report(a)
        sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
