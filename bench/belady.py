#!/usr/bin/env python3
"""Offline-optimal (Belady) and simple online hit ratios of a tile trace (issue #23; standard library only).

  belady.py --trace FILE [--capacity-bytes B [B2 ...]] [--capacity-percent P [P2 ...]] [--json]
      reads a trace of bench/trace.py (`<path>\\t<size_bytes>[\\tscan]` per line) and prints, for
      every capacity (bytes, or percent of the trace's distinct bytes), the hit ratios any memory
      tier of that size could reach, next to LRU and FIFO.
  belady.py --self-test     hand-made traces with known answers and property checks; exit 1 on failure
  belady.py --smoke         small traces from trace.py --smoke (zipf, viewport, scan), every policy
                            at 1 % and 5 %; a few seconds

Policies (one row each; "capacity" says how the cache is counted):
  belady       bytes    THE NUMBER PRINTED AS "belady". Under a byte capacity, on a miss the object
                        is admitted only if enough bytes can be freed by evicting cached objects
                        whose next use is further in the future than the new object's; victims go
                        furthest-next-use first; otherwise the object bypasses the cache. Unit
                        sizes make this exactly Belady's MIN. With real sizes, exact optimal
                        caching is NP-hard, so this is a heuristic: an estimate of the limit, not
                        a proven upper bound (it is usually close to, and may be below, the true
                        optimum; the self-test compares it to a brute-force optimum on tiny traces).
  belady-size  bytes    the "furthest next use x size" variant: evicts the object with the largest
                        (next use - now) x size among 64 cached objects sampled at random (seeded),
                        bypasses the new object if its own score is larger. Favours small
                        objects: tends to win on request hit ratio and lose on byte hit ratio.
  lru, fifo    bytes    evict least recently used / oldest inserted until the new object fits;
                        every object that fits is admitted.
  min          objects  Belady's classic MIN in a cache of C objects, C = capacity bytes / mean
                        size of the trace's distinct objects (at least 1): every miss is stored
                        (demand paging), evicting the object used furthest in the future;
                        provably optimal among policies that store every miss.
  min-bypass   objects  MIN where the cache may decline to store the new object (when its own next
                        use is the furthest): provably optimal for the request hit ratio of a
                        cache of C objects with admission control, >= min. With unit sizes,
                        belady (bytes) is exactly this.
  lru, fifo    objects  the same C objects (MIN >= LRU and MIN >= FIFO hold here as a theorem).
Columns: request hit ratio (hits / requests), byte hit ratio (bytes served from cache / bytes
requested), and, when the trace has sweep lines (third column `scan`), the hot-set hit ratio: the
request hit ratio of the non-scan requests only. Every policy starts cold, so the first request
of each object is a miss: `max` is the infinite cache's ratio (1 - distinct / requests).

Next uses are computed in one backward pass; MIN and belady keep a max-heap of next uses with
lazy deletion (rebuilt when stale entries pile up), so a run is O(R log C) per policy.
"""
import argparse
import collections
import heapq
import importlib.util
import itertools
import json
import os
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = 64


class Trace:
    """keys[i]: object id of request i; size[k]: bytes of object k; scan[i]: 1 for sweep lines."""

    def __init__(self, keys, size, scan, name=""):
        self.keys = keys
        self.size = size
        self.scan = scan
        self.name = name
        self.nxt = next_uses(keys)

    @property
    def requests(self):
        return len(self.keys)

    @property
    def distinct(self):
        return len(self.size)

    @property
    def distinct_bytes(self):
        return sum(self.size)

    @property
    def total_bytes(self):
        size = self.size
        return sum(size[k] for k in self.keys)

    @property
    def has_scan(self):
        return any(self.scan)


def next_uses(keys):
    """nxt[i] = index of the next request of keys[i], or len(keys) if none (one backward pass)."""
    never = len(keys)
    nxt = [never] * never
    last = {}
    for i in range(never - 1, -1, -1):
        k = keys[i]
        nxt[i] = last.get(k, never)
        last[k] = i
    return nxt


def read_trace(path):
    ids, keys, size = {}, [], []
    scan = bytearray()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2 or not parts[0]:
                raise SystemExit(f"{path}:{lineno}: expected <path>\\t<size>[\\tscan]")
            k = ids.get(parts[0])
            if k is None:
                k = ids[parts[0]] = len(size)
                size.append(int(parts[1]))
            keys.append(k)
            scan.append(1 if len(parts) > 2 and parts[2] == "scan" else 0)
    return Trace(keys, size, scan, os.path.basename(path))


def trace_from(seq, sizes=None, scan=None):
    """A Trace from a list of hashable names (tests); sizes: name -> bytes (default 1)."""
    ids, keys, size = {}, [], []
    for name in seq:
        k = ids.get(name)
        if k is None:
            k = ids[name] = len(size)
            size.append(sizes[name] if sizes else 1)
        keys.append(k)
    return Trace(keys, size, bytearray(scan or [0] * len(keys)))


class Counts:
    __slots__ = ("hits", "hit_bytes", "hot_hits")

    def __init__(self):
        self.hits = self.hit_bytes = self.hot_hits = 0


def _count(c, s, scan_flag):
    c.hits += 1
    c.hit_bytes += s
    if not scan_flag:
        c.hot_hits += 1


def min_objects(t, cap, bypass=False):
    """Belady's MIN, cache of `cap` objects. Classic (demand paging, bypass=False): every missed
    object is stored, evicting the cached object used furthest in the future. bypass=True: the
    new object is a candidate too, so it is not stored when its own next use is the furthest."""
    c = Counts()
    if cap <= 0:
        return c
    keys, nxt, size, scan = t.keys, t.nxt, t.size, t.scan
    nk = max(1, t.distinct)
    cache = {}  # key -> next use
    heap = []  # -(next * nk + key): max-heap of next uses, lazily deleted
    push, pop = heapq.heappush, heapq.heappop
    for i, k in enumerate(keys):
        n = nxt[i]
        if k in cache:
            _count(c, size[k], scan[i])
            cache[k] = n
            push(heap, -(n * nk + k))
        elif len(cache) < cap:
            cache[k] = n
            push(heap, -(n * nk + k))
        else:
            while True:
                vn, vk = divmod(-heap[0], nk)
                if cache.get(vk) == vn:
                    break
                pop(heap)
            if vn > n or not bypass:
                pop(heap)
                del cache[vk]
                cache[k] = n
                push(heap, -(n * nk + k))
        if len(heap) > 4 * cap + 1024:
            heap = [-(v * nk + kk) for kk, v in cache.items()]
            heapq.heapify(heap)
    return c


def belady_bytes(t, cap):
    """Furthest-next-use under a byte capacity (see the module docstring)."""
    c = Counts()
    keys, nxt, size, scan = t.keys, t.nxt, t.size, t.scan
    nk = max(1, t.distinct)
    cache = {}
    heap = []
    used = 0
    push, pop = heapq.heappush, heapq.heappop
    for i, k in enumerate(keys):
        n = nxt[i]
        s = size[k]
        if k in cache:
            _count(c, s, scan[i])
            cache[k] = n
            push(heap, -(n * nk + k))
        elif s <= cap:
            if used + s > cap:
                victims = []
                freed = 0
                while used - freed + s > cap and heap:
                    e = heap[0]
                    vn, vk = divmod(-e, nk)
                    if cache.get(vk) != vn:
                        pop(heap)
                        continue
                    if vn <= n:
                        break
                    pop(heap)
                    victims.append(e)
                    freed += size[vk]
                if used - freed + s > cap:
                    for e in victims:
                        push(heap, e)
                    continue
                for e in victims:
                    del cache[(-e) % nk]
                used -= freed
            cache[k] = n
            used += s
            push(heap, -(n * nk + k))
        if len(heap) > 4 * len(cache) + 1024:
            heap = [-(v * nk + kk) for kk, v in cache.items()]
            heapq.heapify(heap)
    assert used <= cap
    return c


def belady_size(t, cap, seed=0):
    """Sampled 'furthest next use x size' eviction under a byte capacity."""
    c = Counts()
    keys, nxt, size, scan = t.keys, t.nxt, t.size, t.scan
    rand = random.Random(seed).random
    nextof = {}  # cached key -> next use
    members, pos = [], {}
    used = 0
    for i, k in enumerate(keys):
        n = nxt[i]
        s = size[k]
        if k in nextof:
            _count(c, s, scan[i])
            nextof[k] = n
            continue
        if s > cap:
            continue
        own = (n - i) * s
        admitted = True
        # Bounded: every pass evicts one object or ends the loop.
        while used + s > cap:
            m = len(members)
            if m <= SAMPLE:
                cands = members
            else:
                cands = [members[int(rand() * m)] for _ in range(SAMPLE)]
            best, best_score = -1, -1
            for vk in cands:
                score = (nextof[vk] - i) * size[vk]
                if score > best_score:
                    best, best_score = vk, score
            if best_score <= own:
                admitted = False
                break
            j = pos.pop(best)
            last = members.pop()
            if last != best:
                members[j] = last
                pos[last] = j
            del nextof[best]
            used -= size[best]
        if admitted:
            nextof[k] = n
            pos[k] = len(members)
            members.append(k)
            used += s
    assert used <= cap
    return c


def lru_fifo_bytes(t, cap, lru):
    c = Counts()
    keys, size, scan = t.keys, t.size, t.scan
    cache = collections.OrderedDict()
    used = 0
    for i, k in enumerate(keys):
        s = size[k]
        if k in cache:
            _count(c, s, scan[i])
            if lru:
                cache.move_to_end(k)
        elif s <= cap:
            while used + s > cap:
                _, vs = cache.popitem(last=False)
                used -= vs
            cache[k] = s
            used += s
    return c


def lru_fifo_objects(t, cap, lru):
    c = Counts()
    if cap <= 0:
        return c
    keys, size, scan = t.keys, t.size, t.scan
    cache = collections.OrderedDict()
    for i, k in enumerate(keys):
        if k in cache:
            _count(c, size[k], scan[i])
            if lru:
                cache.move_to_end(k)
        else:
            if len(cache) >= cap:
                cache.popitem(last=False)
            cache[k] = None
    return c


POLICIES = [
    ("belady", "bytes", belady_bytes),
    ("belady-size", "bytes", belady_size),
    ("lru", "bytes", lambda t, cap: lru_fifo_bytes(t, cap, True)),
    ("fifo", "bytes", lambda t, cap: lru_fifo_bytes(t, cap, False)),
    ("min", "objects", min_objects),
    ("min-bypass", "objects", lambda t, cap: min_objects(t, cap, True)),
    ("lru", "objects", lambda t, cap: lru_fifo_objects(t, cap, True)),
    ("fifo", "objects", lambda t, cap: lru_fifo_objects(t, cap, False)),
]


def object_capacity(t, cap_bytes):
    mean = t.distinct_bytes / t.distinct if t.distinct else 1.0
    return max(1, int(round(cap_bytes / mean)))


def evaluate(t, cap_bytes, percent=None):
    """Every policy at one capacity; a dict ready for the table or JSON."""
    cap_obj = object_capacity(t, cap_bytes)
    hot_requests = t.requests - sum(t.scan)
    total_bytes = t.total_bytes
    rows = []
    for name, unit, fn in POLICIES:
        t0 = time.monotonic()
        c = fn(t, cap_bytes if unit == "bytes" else cap_obj)
        rows.append({
            "policy": name,
            "capacity": unit,
            "hits": c.hits,
            "hit_ratio": c.hits / t.requests if t.requests else 0.0,
            "byte_hit_ratio": c.hit_bytes / total_bytes if total_bytes else 0.0,
            "hot_hit_ratio": (c.hot_hits / hot_requests if hot_requests else 0.0) if t.has_scan else None,
            "seconds": round(time.monotonic() - t0, 3),
        })
    return {
        "capacity_bytes": cap_bytes,
        "capacity_percent": percent,
        "capacity_objects": cap_obj,
        "policies": rows,
    }


def trace_info(t):
    return {
        "trace": t.name,
        "requests": t.requests,
        "distinct": t.distinct,
        "total_bytes": t.total_bytes,
        "distinct_bytes": t.distinct_bytes,
        "scan_requests": sum(t.scan),
        "max_hit_ratio": 1.0 - t.distinct / t.requests if t.requests else 0.0,
    }


def format_table(info, result):
    lines = []
    pct = result["capacity_percent"]
    pct_s = f"{pct:g} % of " if pct is not None else f"{100.0 * result['capacity_bytes'] / max(1, info['distinct_bytes']):.3g} % of "
    lines.append(f"capacity {result['capacity_bytes']:,} bytes ({pct_s}{info['distinct_bytes']:,} distinct bytes; "
                 f"{result['capacity_objects']:,} objects at the mean size)")
    scan = info["scan_requests"] > 0
    head = f"  {'policy':<12} {'capacity':<8} {'req hit':>8} {'byte hit':>9}"
    if scan:
        head += f" {'hot-set hit':>12}"
    lines.append(head)
    for r in result["policies"]:
        row = f"  {r['policy']:<12} {r['capacity']:<8} {r['hit_ratio']:>8.4f} {r['byte_hit_ratio']:>9.4f}"
        if scan:
            row += f" {r['hot_hit_ratio']:>12.4f}"
        lines.append(row)
    return "\n".join(lines)


def report(t, caps, as_json, out=sys.stdout):
    info = trace_info(t)
    results = [evaluate(t, b, p) for b, p in caps]
    if as_json:
        json.dump({**info, "results": results}, out, indent=1)
        out.write("\n")
    else:
        out.write(f"trace {info['trace']}: {info['requests']:,} requests, {info['distinct']:,} distinct, "
                  f"{info['total_bytes']:,} bytes, {info['distinct_bytes']:,} distinct bytes"
                  + (f", {info['scan_requests']:,} scan requests" if info["scan_requests"] else "")
                  + f"; max (infinite cache) hit ratio {info['max_hit_ratio']:.4f}\n")
        out.write("belady = furthest-next-use under the byte capacity (size-aware OPT is NP-hard: a "
                  "heuristic estimate); min, min-bypass = exact MIN in objects (demand paging; may decline to store)\n")
        for r in results:
            out.write(format_table(info, r) + "\n")
    return info, results


# ---------------------------------------------------------------- self-test


def brute_force_opt(t, cap):
    """Exact optimum (most request hits) by search over reachable cache contents; tiny traces only.
    Objects may bypass; eviction only at a miss (no loss: evicting early never helps)."""
    states = {frozenset(): 0}
    for i, k in enumerate(t.keys):
        s = t.size[k]
        new = {}
        for st, h in states.items():
            if k in st:
                if new.get(st, -1) < h + 1:
                    new[st] = h + 1
                continue
            if new.get(st, -1) < h:
                new[st] = h  # bypass
            if s > cap:
                continue
            items = sorted(st)
            for r in range(len(items) + 1):
                for drop in itertools.combinations(items, r):
                    rest = st.difference(drop)
                    if sum(t.size[x] for x in rest) + s <= cap:
                        ns = rest | {k}
                        if new.get(ns, -1) < h:
                            new[ns] = h
        states = new
    return max(states.values())


def self_test():
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    # Textbook reference string (Silberschatz), 3 frames: OPT 9 faults, LRU 12, FIFO 15 (demand
    # paging: every miss is stored). A cache that may decline to store an object does better:
    # 8 faults (MIN with bypass, and the brute-force optimum, which may bypass).
    ref = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]
    t = trace_from(ref)
    faults = {
        "min": len(ref) - min_objects(t, 3).hits,
        "min-bypass": len(ref) - min_objects(t, 3, True).hits,
        "lru": len(ref) - lru_fifo_objects(t, 3, True).hits,
        "fifo": len(ref) - lru_fifo_objects(t, 3, False).hits,
        "belady(bytes, unit sizes)": len(ref) - belady_bytes(t, 3).hits,
        "lru(bytes, unit sizes)": len(ref) - lru_fifo_bytes(t, 3, True).hits,
        "fifo(bytes, unit sizes)": len(ref) - lru_fifo_bytes(t, 3, False).hits,
        "brute force": len(ref) - brute_force_opt(t, 3),
    }
    want = {"min": 9, "min-bypass": 8, "lru": 12, "fifo": 15, "belady(bytes, unit sizes)": 8,
            "lru(bytes, unit sizes)": 12, "fifo(bytes, unit sizes)": 15, "brute force": 8}
    for k, v in want.items():
        check(faults[k] == v, f"textbook string, 3 frames: {k} faults {faults[k]}, want {v}")

    # Belady's anomaly string: FIFO 9 faults with 3 frames, 10 with 4; MIN 7 with 3, 6 with 4; LRU 10 with 3.
    ref = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]
    t = trace_from(ref)
    for frames, fn, want_f, name in [(3, lambda t, c: lru_fifo_objects(t, c, False), 9, "fifo"),
                                     (4, lambda t, c: lru_fifo_objects(t, c, False), 10, "fifo"),
                                     (3, min_objects, 7, "min"), (4, min_objects, 6, "min"),
                                     (3, lambda t, c: lru_fifo_objects(t, c, True), 10, "lru")]:
        got = len(ref) - fn(t, frames).hits
        check(got == want_f, f"anomaly string, {frames} frames: {name} faults {got}, want {want_f}")

    # Sized, by hand: capacity 10; A=6, B=4, C=6. A B C A B A B: belady bypasses C (never reused)
    # and hits A B A B (4 hits, 20 bytes); LRU and FIFO let C push A out and then thrash: 2 hits.
    t = trace_from("ABCABAB", {"A": 6, "B": 4, "C": 6})
    c = belady_bytes(t, 10)
    check((c.hits, c.hit_bytes) == (4, 20), f"sized hand trace: belady {(c.hits, c.hit_bytes)}, want (4, 20)")
    for lru in (True, False):
        c = lru_fifo_bytes(t, 10, lru)
        check(c.hits == 2, f"sized hand trace: {'lru' if lru else 'fifo'} hits {c.hits}, want 2")
    check(brute_force_opt(t, 10) == 4, "sized hand trace: brute force optimum is not 4")

    # Scan accounting: hot-set hits exclude sweep lines.
    t = trace_from(["a", "s1", "a", "s2", "a"], scan=[0, 1, 0, 1, 0])
    c = min_objects(t, 1, True)
    check((c.hits, c.hot_hits) == (2, 2), f"scan accounting: min-bypass {(c.hits, c.hot_hits)}, want (2, 2)")
    c = lru_fifo_objects(t, 2, True)
    check((c.hits, c.hot_hits) == (2, 2), f"scan accounting: lru {(c.hits, c.hot_hits)}, want (2, 2)")

    # Properties on random traces (seeded): unit sizes, MIN-bypass == belady(bytes) == brute force
    # on tiny ones, MIN-bypass >= MIN >= LRU and >= FIFO; sized: brute-force OPT >= every policy, belady >= LRU and FIFO
    # on these seeds; all ratios in [0, 1].
    rng = random.Random(23)
    sized_below_lru = 0
    for trial in range(300):
        n_keys = rng.randint(2, 40)
        length = rng.randint(1, 400)
        # A skewed popularity, like the real traces.
        weights = [1.0 / (j + 1) for j in range(n_keys)]
        seq = rng.choices(range(n_keys), weights, k=length)
        cap = rng.randint(1, n_keys)
        t = trace_from(seq)
        m = min_objects(t, cap).hits
        mb = min_objects(t, cap, True).hits
        lr = lru_fifo_objects(t, cap, True).hits
        ff = lru_fifo_objects(t, cap, False).hits
        bb = belady_bytes(t, cap).hits
        check(m >= lr and m >= ff, f"trial {trial}: min {m} < lru {lr} or fifo {ff}")
        check(mb >= m, f"trial {trial}: min-bypass {mb} < min {m}")
        check(bb == mb, f"trial {trial}: belady(bytes, unit) {bb} != min-bypass {mb}")
        if length <= 14 and n_keys <= 6:
            bf = brute_force_opt(t, cap)
            check(bf == mb, f"trial {trial}: brute force {bf} != min-bypass {mb}")
        sizes = {j: rng.randint(1, 8) for j in range(n_keys)}
        ts = trace_from(seq, sizes)
        capb = rng.randint(1, sum(sizes.values()))
        res = {name: fn(ts, capb if unit == "bytes" else object_capacity(ts, capb))
               for name, unit, fn in POLICIES if unit == "bytes"}
        for name, cnt in res.items():
            check(0 <= cnt.hits <= length and 0 <= cnt.hit_bytes <= ts.total_bytes,
                  f"trial {trial}: {name} counts out of range")
        if res["belady"].hits < res["lru"].hits or res["belady"].hits < res["fifo"].hits:
            sized_below_lru += 1
        if length <= 12 and n_keys <= 5:
            bf = brute_force_opt(ts, capb)
            for name, cnt in res.items():
                check(cnt.hits <= bf, f"trial {trial}: {name} {cnt.hits} hits > brute-force optimum {bf}")
    check(sized_below_lru == 0, f"sized random traces: belady below lru/fifo in {sized_below_lru} of 300")

    # Tiny traces against the brute-force optimum (which may bypass): unit sizes, MIN-bypass and
    # belady are exact; sized, no policy beats it, and belady's gap to it is reported.
    gap = worst = 0
    for trial in range(250):
        n_keys = rng.randint(2, 5)
        seq = [rng.randrange(n_keys) for _ in range(rng.randint(1, 12))]
        cap = rng.randint(1, n_keys)
        t = trace_from(seq)
        bf = brute_force_opt(t, cap)
        mb = min_objects(t, cap, True).hits
        check(bf == mb, f"tiny trial {trial}: brute force {bf} != min-bypass {mb}")
        check(bf == belady_bytes(t, cap).hits, f"tiny trial {trial}: belady(bytes, unit) != brute force")
        check(bf >= lru_fifo_objects(t, cap, True).hits, f"tiny trial {trial}: lru beats the optimum")
        sizes = {j: rng.randint(1, 6) for j in range(n_keys)}
        ts = trace_from(seq, sizes)
        capb = rng.randint(1, sum(sizes.values()))
        bf = brute_force_opt(ts, capb)
        for name, unit, fn in POLICIES:
            if unit == "bytes":
                h = fn(ts, capb).hits
                check(h <= bf, f"tiny sized trial {trial}: {name} {h} hits > optimum {bf}")
                if name == "belady":
                    gap += bf - h
                    worst = max(worst, bf - h)
    print(f"belady.py self-test: 250 tiny sized traces, belady below the brute-force optimum by "
          f"{gap} hits in all (worst trace {worst})")

    # Ratios of a full evaluation are in [0, 1] and min >= lru, fifo (objects).
    seq = [rng.randrange(50) for _ in range(2000)]
    t = trace_from(seq, {j: rng.randint(5120, 61440) for j in range(50)}, [rng.random() < 0.1 for _ in seq])
    res = evaluate(t, t.distinct_bytes // 5)
    by = {(r["policy"], r["capacity"]): r for r in res["policies"]}
    for r in res["policies"]:
        for f in ("hit_ratio", "byte_hit_ratio", "hot_hit_ratio"):
            check(0.0 <= r[f] <= 1.0, f"{r['policy']}/{r['capacity']}: {f} {r[f]} not in [0, 1]")
    check(by[("min", "objects")]["hits"] >= by[("lru", "objects")]["hits"], "evaluate: min < lru")
    check(by[("belady", "bytes")]["hits"] >= by[("lru", "bytes")]["hits"], "evaluate: belady < lru")

    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    print(f"belady.py self-test: {'FAILED' if failures else 'ok'} ({len(failures)} failures)")
    return 1 if failures else 0


def load_trace_module():
    spec = importlib.util.spec_from_file_location("tile_trace", os.path.join(HERE, "trace.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def smoke():
    t0 = time.monotonic()
    mod = load_trace_module()
    bad = 0
    with tempfile.TemporaryDirectory() as d:
        for argv in (["zipf"], ["viewport"], ["scan", "--base", "zipf"]):
            path = os.path.join(d, "-".join(argv) + ".trace")
            mod.main(argv + ["--smoke", "--out", path])
            t = read_trace(path)
            caps = [(max(1, int(t.distinct_bytes * p / 100)), p) for p in (1, 5)]
            _, results = report(t, caps, False)
            for res in results:
                by = {(r["policy"], r["capacity"]): r for r in res["policies"]}
                if by[("min", "objects")]["hits"] < max(by[("lru", "objects")]["hits"], by[("fifo", "objects")]["hits"]):
                    print(f"FAIL: {path}: min below lru/fifo", file=sys.stderr)
                    bad += 1
                for r in res["policies"]:
                    if not 0.0 <= r["hit_ratio"] <= 1.0 or not 0.0 <= r["byte_hit_ratio"] <= 1.0:
                        print(f"FAIL: {path}: {r['policy']} ratio out of range", file=sys.stderr)
                        bad += 1
    print(f"belady.py smoke: {'FAILED' if bad else 'ok'} in {time.monotonic() - t0:.1f} s")
    return 1 if bad else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace")
    ap.add_argument("--capacity-bytes", type=int, nargs="+", default=[])
    ap.add_argument("--capacity-percent", type=float, nargs="+", default=[])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    if args.smoke:
        return smoke()
    if not args.trace or not (args.capacity_bytes or args.capacity_percent):
        ap.error("--trace and at least one --capacity-bytes or --capacity-percent")
    t = read_trace(args.trace)
    caps = [(b, None) for b in args.capacity_bytes]
    caps += [(max(1, int(t.distinct_bytes * p / 100.0)), p) for p in args.capacity_percent]
    report(t, caps, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
