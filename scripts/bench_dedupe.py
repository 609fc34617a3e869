"""Benchmark near-duplicate search: the banded index (toolkit.core.hamming) against the code
it replaced, which compared every hash with every other.

Each step runs in its own process (its peak resident memory is its own) and prints one
JSON line; the parent checks and tabulates them:
- near_pairs on 1M random 64-bit hashes plus 1,000 planted near copies (distances 0 to the
  threshold): every planted pair found, no pair reported outside the threshold;
- the same at 25k and 50k, new and old code, whose pairs must be identical;
- find_duplicates (the whole policy) on 1M candidates, and again with 100,000 copies of one
  picture among them (a placeholder a crawl met again and again: one group, not 5e9 pairs);
- the crawl's HashIndex: 1M hashes added one at a time, then 10,000 matches (1,000 of them
  planted near copies, which must be found); and a crawl's match-then-add at 20k, new
  against old (identical decisions);
- the shared flower photos hashed as crawl and pack hash them: pairs, drops and a crawl's
  decisions identical to the old code's at every threshold from 0 to 20.

The old code is read from git (`--before`, the commit before the index). faiss-cpu's
IndexBinaryMultiHash is measured with `--faiss N` where it is installed.

    python scripts/bench_dedupe.py [--smoke] [--threshold 8] [--before 598cdd1] [--faiss 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

from _bench import SHARED, machine, table

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"near": (60.0, 1024.0), "index-add": (60.0, None), "index-match": (10.0, None)}


def dataset(size: int, planted: int, threshold: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`size` random hashes, then `planted` copies of some at distances cycling 0..threshold;
    the planted pairs (original, copy)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size, dtype=np.uint64)
    sources = rng.choice(size, planted, replace=False)
    copies = hashes[sources].copy()
    for k in range(planted):
        for bit in rng.choice(64, k % (threshold + 1), replace=False):
            copies[k] ^= np.uint64(1 << int(bit))
    pairs = np.stack([sources, size + np.arange(planted)], axis=1)
    return np.concatenate([hashes, copies]), pairs


def before(rev: str) -> types.ModuleType:
    """toolkit/core/dedupe.py as it was at `rev` (the quadratic search)."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:toolkit/core/dedupe.py"],
                          check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("dedupe_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(text, f"{rev}:toolkit/core/dedupe.py", "exec"), module.__dict__)
    return module


def module(which: str, rev: str) -> types.ModuleType:
    if which == "old":
        return before(rev)
    from toolkit.core import dedupe
    return dedupe


def digest(pairs: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pairs, dtype=np.int64).tobytes()).hexdigest()[:16]


def timed(step):
    wall, cpu = time.perf_counter(), time.process_time()
    result = step()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def child_near(args) -> dict:
    dedupe = module(args.code, args.before)
    hashes, planted = dataset(args.size, args.planted, args.threshold)
    pairs, wall, cpu = timed(lambda: np.array(list(dedupe.near_pairs(hashes, args.threshold)),
                                              dtype=np.int64).reshape(-1, 2))
    found = set(map(tuple, pairs.tolist()))
    distances = np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]])
    return {"wall": wall, "cpu": cpu, "pairs": len(pairs), "digest": digest(pairs),
            "planted_found": sum(tuple(p) in found for p in planted.tolist()),
            "planted": len(planted), "outside": int((distances > args.threshold).sum())}


def child_policy(args) -> dict:
    from toolkit.core import dedupe
    hashes, planted = dataset(args.size, args.planted, args.threshold)
    hashes = np.concatenate([hashes, np.full(args.copies, hashes[0] ^ np.uint64(0b111))])  # 3 bits off
    candidates = [dedupe.Candidate(0, f"{i:064x}", h, 100, str(i)) for i, h in enumerate(hashes.tolist())]
    dropped, wall, cpu = timed(lambda: dedupe.find_duplicates(candidates, args.threshold))
    return {"wall": wall, "cpu": cpu, "dropped": len(dropped),
            "planted_found": sum(int(copy) in dropped or int(source) in dropped
                                 for source, copy in planted.tolist()), "planted": len(planted)}


def child_index(args) -> dict:
    from toolkit.core import dedupe
    hashes, planted = dataset(args.size, args.planted, args.threshold)
    stored, copies = hashes[:args.size].tolist(), hashes[args.size:].tolist()
    index = dedupe.HashIndex(args.threshold)

    def add_all():
        for i, h in enumerate(stored):
            index.add(str(i), h, f"class{i % 100}")

    _, add_wall, add_cpu = timed(add_all)
    rng = np.random.default_rng(1)
    queries = copies + rng.integers(0, 2**64, args.queries - len(copies), dtype=np.uint64).tolist()
    owners, wall, cpu = timed(lambda: [index.match("unseen", h) for h in queries])
    expected = []  # the first stored hash within the threshold (by a scan, untimed)
    for h in copies:
        close = np.flatnonzero(np.bitwise_count(hashes[:args.size] ^ np.uint64(h)) <= args.threshold)
        expected.append(f"class{close[0] % 100}")
    return {"add_wall": add_wall, "add_cpu": add_cpu, "wall": wall, "cpu": cpu, "queries": len(queries),
            "planted": len(copies), "planted_found": sum(o == e for o, e in zip(owners, expected)),
            "random_matched": sum(o is not None for o in owners[len(copies):])}


def crawl_order(dedupe: types.ModuleType, hashes: list[int], labels: list[str], threshold: int) -> list:
    """What a crawl decides for each image in turn: the owner it duplicates, or None (kept)."""
    index, decisions = dedupe.HashIndex(threshold), []
    for i, (h, label) in enumerate(zip(hashes, labels)):
        owner = index.match(f"sha{i}", h)
        decisions.append(owner)
        if owner is None:
            index.add(f"sha{i}", h, label)
    return decisions


def child_crawl(args) -> dict:
    dedupe = module(args.code, args.before)
    hashes, _ = dataset(args.size, args.planted, args.threshold)
    order = np.random.default_rng(2).permutation(len(hashes))
    decisions, wall, cpu = timed(lambda: crawl_order(dedupe, hashes[order].tolist(),
                                                     [f"c{i % 3}" for i in range(len(hashes))],
                                                     args.threshold))
    return {"wall": wall, "cpu": cpu, "duplicates": sum(d is not None for d in decisions),
            "digest": hashlib.sha256(json.dumps(decisions).encode()).hexdigest()[:16]}


def child_photos(args) -> dict:
    from toolkit.core import hamming, images
    old, new = before(args.before), module("new", args.before)
    root = SHARED / "data" / "flowers"
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    infos, labels, used, wall = [], [], [], time.perf_counter()
    for path in paths:  # as crawl and pack hash a picture: images.decode's phash
        try:
            info, _ = images.decode(images.read_file(path))
        except images.Unusable:  # pack and crawl skip it too (too small, ...)
            continue
        infos.append(info)
        labels.append(path.parent.name)
        used.append(path)
    hashed = time.perf_counter() - wall
    result = {"photos": len(used), "unusable": len(paths) - len(used), "hash_seconds": hashed,
              "thresholds": {}}
    paths, hashes = used, np.array([info.phash for info in infos], dtype=np.uint64)
    for threshold in range(21):
        pairs = list(new.near_pairs(hashes, threshold))  # 1,348 hashes: all pairs is cheaper
        bands = hamming.plan_join(threshold, 1_000_000) or hamming.Bands.split(threshold, 4)
        banded = [tuple(p) for p in hamming.banded_pairs(hashes, threshold, bands).tolist()]
        same_pairs = pairs == list(old.near_pairs(hashes, threshold)) == banded
        classes = sorted(set(labels))
        candidates = [new.Candidate(classes.index(label), info.sha256, info.phash, info.width * info.height,
                                    str(path)) for label, info, path in zip(labels, infos, paths)]
        dropped = new.find_duplicates(candidates, threshold)
        before_dropped = old.find_duplicates([old.Candidate(*vars(c).values()) for c in candidates],
                                             threshold)
        same_drops = ({i: vars(d) for i, d in dropped.items()}
                      == {i: vars(d) for i, d in before_dropped.items()})
        decisions = crawl_order(new, hashes.tolist(), labels, threshold)
        same_crawl = decisions == crawl_order(old, hashes.tolist(), labels, threshold)
        result["thresholds"][threshold] = {
            "pairs": len(pairs), "dropped": len(dropped),
            "crawl_refused": sum(owner is not None for owner in decisions),
            "identical": same_pairs and same_drops and same_crawl}
    return result


def child_faiss(args) -> dict:
    import faiss
    hashes, planted = dataset(args.size, args.planted, args.threshold)
    codes = hashes.view(np.uint8).reshape(len(hashes), 8)
    bands = 3
    index = faiss.IndexBinaryMultiHash(64, bands, 64 // bands)
    index.nflip = args.threshold // bands
    _, add_wall, _ = timed(lambda: index.add(codes))
    (limits, _, ids), wall, cpu = timed(lambda: index.range_search(codes, args.threshold + 1))
    rows = np.repeat(np.arange(len(hashes)), np.diff(limits.astype(np.int64)))
    keep = rows < ids
    pairs = np.unique(np.stack([rows[keep], ids[keep].astype(np.int64)], axis=1), axis=0)
    found = set(map(tuple, pairs.tolist()))
    return {"wall": wall + add_wall, "cpu": cpu, "pairs": len(pairs), "digest": digest(pairs),
            "planted_found": sum(tuple(p) in found for p in planted.tolist()), "planted": len(planted),
            "faiss": faiss.__version__}


CHILDREN = {"near": child_near, "policy": child_policy, "index": child_index, "crawl": child_crawl,
            "photos": child_photos, "faiss": child_faiss}


def run_child(kind: str, size: int = 0, planted: int = 0, code: str = "new", queries: int = 0,
              options: argparse.Namespace | None = None, copies: int = 0) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--size", str(size), "--planted", str(planted),
               "--code", code, "--queries", str(queries), "--copies", str(copies),
               "--threshold", str(options.threshold),
               "--before", options.before]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes: a few seconds, no photos")
    parser.add_argument("--threshold", type=int, default=8)
    parser.add_argument("--before", default="598cdd1", help="the commit whose dedupe.py is the old code")
    parser.add_argument("--faiss", type=int, default=0, help="also measure faiss-cpu at this many hashes")
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--code", default="new", help=argparse.SUPPRESS)
    for name in ("--size", "--planted", "--queries", "--copies"):
        parser.add_argument(name, type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = CHILDREN[args.child](args)
        result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    print(f"machine: {machine()}")
    print(f"threshold: {args.threshold} bits; each row is its own process (peak RSS is its own)\n")
    big, compare, crawl = (20_000, [2_000], 2_000) if args.smoke else (1_000_000, [25_000, 50_000], 20_000)
    planted, queries = (100, 1_000) if args.smoke else (1_000, 10_000)
    rows, problems = [], []

    def check(ok: bool, what: str) -> str:
        if not ok:
            problems.append(what)
        return "ok" if ok else "FAILED: " + what

    def limit(kind: str, seconds: float, peak: float | None = None) -> str:
        most_seconds, most_mib = LIMITS[kind]
        over = seconds > most_seconds or (most_mib is not None and peak is not None and peak > most_mib)
        if over and not args.smoke:
            problems.append(f"{kind} over its limit")
        return f"limit {most_seconds:.0f} s" + (f", {most_mib:.0f} MiB" if most_mib else "") + (
            ": OVER" if over else "")

    def row(step: str, hashes: str, r: dict, note: str, prefix: str = "") -> None:
        peak = f"{r['peak_mib']:.0f}" if not prefix else ""
        rows.append([step, hashes, f"{r[prefix + 'wall']:.1f}", f"{r[prefix + 'cpu']:.1f}", peak, note])

    r = run_child("near", big, planted, options=args)
    found = f"planted {r['planted_found']}/{r['planted']}"
    row("near_pairs (index)", f"{big:,} + {planted:,}", r,
        f"{r['pairs']:,} pairs, {found}, {r['outside']} outside; "
        + check(r["planted_found"] == r["planted"] and not r["outside"], "near_pairs at scale") + "; "
        + limit("near", r["wall"], r["peak_mib"]))
    for size in compare:
        few = f"{size:,} + {planted // 10:,}"
        new, old = (run_child("near", size, planted // 10, code=code, options=args)
                    for code in ("new", "old"))
        row("near_pairs (index)", few, new, f"{new['pairs']:,} pairs")
        row("near_pairs (old: all pairs)", few, old, f"{old['pairs']:,} pairs, "
            + check(new["digest"] == old["digest"], f"identical at {size}"))
    r = run_child("policy", big, planted, options=args)
    row("find_duplicates (the policy)", f"{big:,} + {planted:,}", r,
        f"{r['dropped']:,} dropped; planted groups {r['planted_found']}/{r['planted']}, "
        + check(r["planted_found"] == r["planted"], "find_duplicates at scale"))
    copies = big // 10
    c = run_child("policy", big, planted, options=args, copies=copies)
    row("find_duplicates, one picture again and again", f"{big:,} + {planted:,} + {copies:,} copies", c,
        f"{c['dropped']:,} dropped, "
        + check(c["dropped"] == r["dropped"] + copies, f"the {copies:,} copies are one group"))
    r = run_child("index", big, planted, queries=queries, options=args)
    row("HashIndex: add one at a time", f"{big:,}", r, limit("index-add", r["add_wall"]), prefix="add_")
    row("HashIndex: match", f"{r['queries']:,} against {big:,}", r,
        f"planted {r['planted_found']}/{r['planted']}, random matched {r['random_matched']}; "
        + check(r["planted_found"] == r["planted"], "index matches") + "; " + limit("index-match", r["wall"]))
    rows[-1][4] = f"{r['peak_mib']:.0f}"
    images = f"{crawl:,} + {crawl // 20:,}"
    new, old = (run_child("crawl", crawl, crawl // 20, code=code, options=args) for code in ("new", "old"))
    row("crawl's match-then-add (index)", images, new, f"{new['duplicates']:,} refused")
    row("crawl's match-then-add (old)", images, old, f"{old['duplicates']:,} refused, "
        + check(new["digest"] == old["digest"], "crawl decisions identical"))
    if args.faiss:
        r = run_child("faiss", args.faiss, planted // 10, options=args)
        row(f"faiss {r['faiss']} IndexBinaryMultiHash", f"{args.faiss:,} + {planted // 10}", r,
            f"{r['pairs']:,} pairs, planted {r['planted_found']}/{r['planted']}, "
            + check(r["planted_found"] == r["planted"], "faiss finds the planted pairs"))
    print(table(["step", "hashes", "wall s", "CPU s", "peak MiB", "check"], rows))
    if not args.smoke and (SHARED / "data" / "flowers").is_dir():
        r = run_child("photos", options=args)
        print(f"\nshared flower photos: {r['photos']} hashed with images.decode in {r['hash_seconds']:.0f} s "
              f"({r['unusable']} unusable: skipped, as pack and crawl skip them)")
        print(table(["threshold", "near pairs", "find_duplicates drops", "crawl refusals", "vs old code"],
                    [[t, v["pairs"], v["dropped"], v["crawl_refused"],
                      check(v["identical"], f"photos at {t}")] for t, v in r["thresholds"].items()]))
    if problems:
        sys.exit("problems: " + "; ".join(problems))


if __name__ == "__main__":
    main()
