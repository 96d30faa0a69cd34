#!/usr/bin/env python3
"""Deterministic tile request traces for cache-eviction benchmarks (issue #23; standard library only).

  trace.py zipf --alpha A --distinct N --requests R [--seed S] [--out FILE]
      R requests drawn with a Zipf(A) popularity law over N distinct tiles (rank k has weight
      1/k^A; a precomputed CDF + bisect per draw). Ranks are mapped to tiles around the cities
      of bench/cities.csv: each rank picks a city by population weight and a zoom in 10..16
      (weights 1 2 4 6 8 6 4), then a tile near the city's centre tile; the spread grows with the
      number of tiles that city and zoom already have, so the hottest ranks are city centres of
      big cities and the tail spreads into suburbs and smaller towns.
  trace.py viewport --sessions K [--requests R] [--concurrent C] [--seed S] [--out FILE]
      K map sessions, C (8) of them active at once (each step picks one at random, so their
      requests interleave like users of one proxy). A session opens at a city chosen by
      population weight (centre jittered by about a zoom-12 tile), zoom 10..14, then makes 3..12
      moves: pan (shift the viewport by 0.3..0.7 of its width or height) or zoom in/out by one
      (zoom kept in 3..17). Every viewport emits its 5x4 tile block around the centre tile, row
      by row, all 20 tiles (no client-side cache is modelled: a tile seen in the previous
      viewport is requested again). Stops after R requests if given, else when K sessions ended.
  trace.py scan --base {zipf|viewport} <the base mode's options> --scan-bytes B
                [--scan-share 0.10] [--scan-start 0.25]
      the base trace with a sequential sweep interleaved (like a seed job or a crawler): once
      a fraction --scan-start of the base requests has been written, sweep lines are spread
      evenly so that they are --scan-share of the requests, until the sweep has covered B bytes
      (the caller passes B, e.g. 5x the memory tier). The sweep walks zoom-18 tiles row-major
      (512 tiles a row) from the tile of 23N 10E (Sahara); base traces never use zoom 18, so no
      sweep tile is ever hot and no sweep tile repeats. If the base trace ends first, the sweep
      stops there (a warning on stderr says how many bytes it covered).
  --smoke (any mode): a tiny deterministic run for CI, for options not given: zipf alpha 1.0,
      500 distinct, 2,000 requests; viewport 40 sessions, 2,000 requests; scan: base zipf smoke
      with --scan-bytes 2,000,000.
  --seed defaults to 1; the same arguments and seed give byte-identical output.

Output, one request a line (UTF-8, '\\n'):
    /here-proxy/mc/{z}/{x}/{y}/png?indice=bench&style=explore.day&size=512<TAB><size_bytes>
and sweep lines of `scan` carry a third column: `<path><TAB><size_bytes><TAB>scan`.
z/x/y are valid web-mercator tiles (0 <= x, y < 2^z).

Tile body size: a deterministic function of (z, x, y) only (the same tile always has the same
size, in every mode): blake2b of "z/x/y" gives three uniforms; 15 % of tiles (by hash) are
"empty" (sea, desert, forest) with a log-normal of median 7 KiB, sigma 0.2; the others a
log-normal of median 18 KiB, sigma 0.45 (about 3/4 of them between 10 and 30 KB); both clipped
to [5 KiB, 60 KiB] = [5120, 61440] bytes.

A one-line summary goes to stderr: requests, distinct tiles, total bytes, distinct bytes (and
sweep requests and bytes for `scan`).
"""
import argparse
import bisect
import csv
import hashlib
import itertools
import math
import os
import random
import sys

PATH_FMT = "/here-proxy/mc/{}/{}/{}/png?indice=bench&style=explore.day&size=512"
CITIES_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cities.csv")
MIN_SIZE, MAX_SIZE = 5120, 61440
EMPTY_SHARE = 0.15
ZIPF_ZOOMS = [10, 11, 12, 13, 14, 15, 16]
ZIPF_ZOOM_WEIGHTS = [1, 2, 4, 6, 8, 6, 4]
VIEW_W, VIEW_H = 5, 4
VIEW_MIN_Z, VIEW_MAX_Z = 3, 17
SCAN_ZOOM, SCAN_ROW = 18, 512
SCAN_ORIGIN = (23.0, 10.0)


def tile_size(z, x, y):
    """Body size in bytes of tile z/x/y: deterministic, see the module docstring."""
    h = hashlib.blake2b(b"%d/%d/%d" % (z, x, y), digest_size=12).digest()
    u1 = (int.from_bytes(h[0:4], "big") + 0.5) / 2**32
    u2 = (int.from_bytes(h[4:8], "big") + 0.5) / 2**32
    u3 = int.from_bytes(h[8:12], "big") / 2**32
    normal = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
    if u3 < EMPTY_SHARE:
        size = 7168.0 * math.exp(0.2 * normal)
    else:
        size = 18432.0 * math.exp(0.45 * normal)
    return min(MAX_SIZE, max(MIN_SIZE, int(round(size))))


def tile_of(lat, lon, z):
    """Web-mercator tile of a point (clamped to the valid range)."""
    n = 2**z
    fx, fy = world_xy(lat, lon)
    return min(max(int(fx * n), 0), n - 1), min(max(int(fy * n), 0), n - 1)


def world_xy(lat, lon):
    """Normalised web-mercator coordinates in [0, 1) (latitude clamped to +-85.05)."""
    lat = max(-85.05, min(85.05, lat))
    r = math.radians(lat)
    return (lon + 180.0) / 360.0 % 1.0, (1.0 - math.asinh(math.tan(r)) / math.pi) / 2.0


def load_cities(path=CITIES_CSV):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"no cities in {path}")
    cities = [(r["name"], float(r["lat"]), float(r["lon"]), int(r["population"])) for r in rows]
    cum = list(itertools.accumulate(c[3] for c in cities))
    return cities, cum


def pick(rng, cum):
    return bisect.bisect_right(cum, rng.random() * cum[-1])


class Writer:
    """Writes lines and keeps the summary counts."""

    def __init__(self, out):
        self.out = out
        self.requests = 0
        self.total_bytes = 0
        self.seen = {}
        self.scan_requests = 0
        self.scan_bytes = 0
        self.lines = {}

    def emit(self, tile, scan=False):
        line = self.lines.get(tile)
        if line is None:
            size = tile_size(*tile)
            line = (PATH_FMT.format(*tile) + "\t" + str(size)).encode()
            self.lines[tile] = line
            self.seen[tile] = size
        size = self.seen[tile]
        self.requests += 1
        self.total_bytes += size
        if scan:
            self.scan_requests += 1
            self.scan_bytes += size
            self.out.write(line + b"\tscan\n")
        else:
            self.out.write(line + b"\n")

    def summary(self):
        s = (f"requests={self.requests} distinct_tiles={len(self.seen)} "
             f"total_bytes={self.total_bytes} distinct_bytes={sum(self.seen.values())}")
        if self.scan_requests:
            s += f" scan_requests={self.scan_requests} scan_bytes={self.scan_bytes}"
        return s


def zipf_ranking(rng, distinct, cities, cum):
    """The N distinct tiles in popularity order (rank 0 hottest)."""
    ranked, seen, taken = [], set(), {}
    bound = distinct * 60 + 1000
    tries = 0
    while len(ranked) < distinct:
        tries += 1
        if tries > bound:
            raise SystemExit(f"could not place {distinct} distinct tiles in {bound} tries")
        _, lat, lon, _ = cities[pick(rng, cum)]
        z = rng.choices(ZIPF_ZOOMS, ZIPF_ZOOM_WEIGHTS)[0]
        n = 2**z
        cx, cy = tile_of(lat, lon, z)
        key = (cx, cy, z)
        count = taken.get(key, 0)
        # The area already taken around this centre grows with count: keep the draw's spread
        # a little wider than it, so new tiles ring the hot core instead of colliding forever.
        spread = 0.6 + 0.7 * math.sqrt(count)
        x = (cx + int(round(rng.gauss(0.0, spread)))) % n
        y = cy + int(round(rng.gauss(0.0, spread)))
        if y < 0 or y >= n or (z, x, y) in seen:
            taken[key] = count + 1
            continue
        taken[key] = count + 1
        seen.add((z, x, y))
        ranked.append((z, x, y))
    return ranked


def gen_zipf(rng, args, cities, cum):
    ranked = zipf_ranking(rng, args.distinct, cities, cum)
    cdf = list(itertools.accumulate(1.0 / (k**args.alpha) for k in range(1, args.distinct + 1)))
    total = cdf[-1]
    last = args.distinct - 1
    rand = rng.random
    for _ in range(args.requests):
        i = bisect.bisect_right(cdf, rand() * total)
        yield ranked[i if i <= last else last]


class Session:
    def __init__(self, rng, cities, cum):
        _, lat, lon, _ = cities[pick(rng, cum)]
        fx, fy = world_xy(lat, lon)
        jitter = 1.0 / 2**12
        self.fx = (fx + rng.gauss(0.0, jitter)) % 1.0
        self.fy = min(max(fy + rng.gauss(0.0, jitter), 0.0), 1.0 - 1e-12)
        self.z = rng.randint(10, 14)
        self.moves_left = rng.randint(3, 12)
        self.opened = False

    def next_viewport(self, rng):
        """Applies the next move (none for the first viewport); the 5x4 tiles to show."""
        if self.opened:
            self.moves_left -= 1
            if rng.random() < 0.35:
                step = 1 if rng.random() < 0.6 else -1
                self.z = min(VIEW_MAX_Z, max(VIEW_MIN_Z, self.z + step))
            else:
                n = 2**self.z
                frac = rng.uniform(0.3, 0.7)
                direction = rng.randrange(4)
                if direction == 0:
                    self.fx += frac * VIEW_W / n
                elif direction == 1:
                    self.fx -= frac * VIEW_W / n
                elif direction == 2:
                    self.fy += frac * VIEW_H / n
                else:
                    self.fy -= frac * VIEW_H / n
                self.fx %= 1.0
                self.fy = min(max(self.fy, 0.0), 1.0 - 1e-12)
        self.opened = True
        n = 2**self.z
        cx, cy = int(self.fx * n), int(self.fy * n)
        tiles = []
        for dy in range(-(VIEW_H // 2), VIEW_H - VIEW_H // 2):
            y = cy + dy
            if 0 <= y < n:
                for dx in range(-(VIEW_W // 2), VIEW_W - VIEW_W // 2):
                    tiles.append((self.z, (cx + dx) % n, y))
        return tiles

    def done(self):
        return self.opened and self.moves_left <= 0


def gen_viewport(rng, args, cities, cum):
    limit = args.requests
    started, emitted = 0, 0
    active = []
    # Bounded: every step either ends a viewport of >= 1 tile or is the last one.
    max_steps = args.sessions * 14 + 1
    for _ in range(max_steps):
        while len(active) < args.concurrent and started < args.sessions:
            active.append(Session(rng, cities, cum))
            started += 1
        if not active:
            return
        s = active[rng.randrange(len(active))]
        for tile in s.next_viewport(rng):
            if limit is not None and emitted >= limit:
                return
            emitted += 1
            yield tile
        if s.done():
            active.remove(s)


def gen_scan_tiles(limit_bytes):
    """The sweep: zoom-18 tiles row-major from the Sahara; stops once limit_bytes are covered."""
    x0, y0 = tile_of(SCAN_ORIGIN[0], SCAN_ORIGIN[1], SCAN_ZOOM)
    covered = 0
    max_tiles = limit_bytes // MIN_SIZE + 1
    for i in range(max_tiles):
        if covered >= limit_bytes:
            return
        tile = (SCAN_ZOOM, x0 + i % SCAN_ROW, y0 + i // SCAN_ROW)
        covered += tile_size(*tile)
        yield tile


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)

    def common(p):
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--out", help="output file (default stdout)")
        p.add_argument("--smoke", action="store_true", help="tiny deterministic run for CI")
        p.add_argument("--cities", default=CITIES_CSV)

    def zipf_opts(p):
        p.add_argument("--alpha", type=float)
        p.add_argument("--distinct", type=int)

    def viewport_opts(p):
        p.add_argument("--sessions", type=int)
        p.add_argument("--concurrent", type=int, default=8)

    pz = sub.add_parser("zipf")
    zipf_opts(pz)
    pz.add_argument("--requests", type=int)
    common(pz)
    pv = sub.add_parser("viewport")
    viewport_opts(pv)
    pv.add_argument("--requests", type=int)
    common(pv)
    ps = sub.add_parser("scan")
    ps.add_argument("--base", choices=["zipf", "viewport"], required=True)
    zipf_opts(ps)
    viewport_opts(ps)
    ps.add_argument("--requests", type=int)
    ps.add_argument("--scan-bytes", type=int)
    ps.add_argument("--scan-share", type=float, default=0.10)
    ps.add_argument("--scan-start", type=float, default=0.25,
                    help="fraction of the base requests written before the sweep starts")
    common(ps)
    args = ap.parse_args(argv)
    base = args.base if args.mode == "scan" else args.mode

    if args.smoke:
        if base == "zipf":
            defaults = {"alpha": 1.0, "distinct": 500, "requests": 2000}
        else:
            defaults = {"sessions": 40, "requests": 2000}
        if args.mode == "scan":
            defaults["scan_bytes"] = 2_000_000
        for k, v in defaults.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
    need = ["alpha", "distinct", "requests"] if base == "zipf" else ["sessions"]
    if args.mode == "scan":
        need.append("scan_bytes")
    missing = [n for n in need if getattr(args, n) is None]
    if missing:
        ap.error("missing: " + ", ".join("--" + m.replace("_", "-") for m in missing))
    if base == "zipf" and (args.distinct < 1 or args.requests < 0 or args.alpha <= 0):
        ap.error("--distinct >= 1, --requests >= 0, --alpha > 0")
    if base == "viewport" and (args.sessions < 1 or args.concurrent < 1):
        ap.error("--sessions and --concurrent >= 1")
    if args.mode == "scan" and not (0.0 < args.scan_share < 1.0 and 0.0 <= args.scan_start <= 1.0):
        ap.error("--scan-share in (0, 1), --scan-start in [0, 1]")

    rng = random.Random(args.seed)
    cities, cum = load_cities(args.cities)
    out = open(args.out, "wb") if args.out else sys.stdout.buffer
    w = Writer(out)
    try:
        if base == "zipf":
            gen = gen_zipf(rng, args, cities, cum)
        else:
            gen = gen_viewport(rng, args, cities, cum)
        if args.mode != "scan":
            for tile in gen:
                w.emit(tile)
        else:
            # The base is materialised first (its length decides where the sweep starts).
            base_tiles = list(gen)
            start = int(len(base_tiles) * args.scan_start)
            sweep = gen_scan_tiles(args.scan_bytes)
            ratio = args.scan_share / (1.0 - args.scan_share)
            credit = 0.0
            sweeping = True
            for i, tile in enumerate(base_tiles):
                w.emit(tile)
                if sweeping and i >= start:
                    credit += ratio
                    while credit >= 1.0:
                        credit -= 1.0
                        nxt = next(sweep, None)
                        if nxt is None:
                            sweeping = False
                            break
                        w.emit(nxt, scan=True)
            if sweeping and w.scan_bytes < args.scan_bytes:
                print(f"warning: the base trace ended before the sweep covered --scan-bytes "
                      f"({w.scan_bytes} of {args.scan_bytes})", file=sys.stderr)
    finally:
        out.flush()
        if args.out:
            out.close()
    print(w.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. `trace.py ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
