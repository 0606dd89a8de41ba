"""Benchmark: random access to features in the sharded `datasets` store, the `.npy` folder and the safetensors file.

    python bench/bench_feature_store.py [--out bench/results/feature_store.json] [--ids 10000] [--loads 2000]

10 000 random float16 features of shape (100, 768) (1.5 GB each way) are written as a folder of `{id}.npy` files,
then consolidated with `consolidate_features` into one safetensors file and into a sharded store (Arrow shards of
500 MB). Each repetition opens each store afresh, as a `DataLoader` worker does, and loads the same `--loads` ids
drawn at random (a new draw each repetition), the stores in an order rotated every repetition; the figures are
loads/s from the median times:

* ours: [`ShardedFeatureStore`] (binary search over the memory-mapped id column, one feature copied out of the
  memory-mapped shard);
* baseline: [`NpyFeatureStore`], the folder the original code and the loaders read (`np.load` of one file per id);
* the safetensors file ([`ConsolidatedFeatureStore`]) is measured in the same repetitions, and its ratio to ours
  is a second entry.

The files are read from the page cache (every store is read whole once before the timings): this measures what a
store costs per feature, not the disk. Every feature loaded must equal the `.npy` file's bytes (`check`).
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vtimellm_hf.data.features import consolidate_features, open_feature_store

TARGET_VS_NPY = 1.0
TARGET_VS_SAFETENSORS = 0.5


def build_stores(folder: Path, ids: int, rows: int, dim: int, seed: int) -> tuple[dict, dict]:
    """`(paths, seconds to build)` of the three stores of the same features under `folder`."""
    rng = np.random.default_rng(seed)
    npy = folder / "npy"
    npy.mkdir()
    started = time.perf_counter()
    for index in range(ids):
        np.save(npy / f"vid_{index:06d}.npy", rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16))
    seconds = {"npy": time.perf_counter() - started}
    paths = {"npy": npy}
    for name, target in (("safetensors", folder / "features.safetensors"), ("sharded", folder / "sharded")):
        started = time.perf_counter()
        paths[name] = consolidate_features(npy, target)
        seconds[name] = time.perf_counter() - started
    return paths, seconds


def timed_loads(path: Path, ids: list[str]) -> tuple[float, float, list[bytes]]:
    """`(seconds to open, seconds to load ids, the first few features' bytes)` of a freshly opened store."""
    started = time.perf_counter()
    store = open_feature_store(path)
    opened = time.perf_counter()
    arrays = [store.load(feature_id) for feature_id in ids]
    loaded = time.perf_counter()
    return opened - started, loaded - opened, [array.tobytes() for array in arrays[:16]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/feature_store.json"))
    parser.add_argument("--ids", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--loads", type=int, default=2000, help="random features loaded per store and repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="accepted for run_all.py; the stores use none")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the stores are built (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="feature-stores-", dir=args.work_dir))
    try:
        paths, build_seconds = build_stores(work, args.ids, args.rows, args.dim, args.seed)
        all_ids = open_feature_store(paths["npy"]).ids()
        for path in paths.values():  # into the page cache
            store = open_feature_store(path)
            for feature_id in all_ids:
                store.load(feature_id)
        names = list(paths)
        load_seconds = {name: [] for name in names}
        open_seconds = {name: [] for name in names}
        check = "ok"
        for repeat in range(args.repeats):
            ids = list(np.random.default_rng(args.seed + 1 + repeat).choice(all_ids, args.loads))
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                opened, loaded, sample = timed_loads(paths[name], ids)
                open_seconds[name].append(opened)
                load_seconds[name].append(loaded)
                expected = [(paths["npy"] / f"{feature_id}.npy").read_bytes()[-len(data) :]
                            for feature_id, data in zip(ids, sample)]  # fmt: skip
                if sample != expected:
                    check = f"{name}: loaded features differ from the .npy files"
        rate = {name: args.loads / statistics.median(seconds) for name, seconds in load_seconds.items()}
        sizes = {
            name: sum(file.stat().st_size for file in ([path] if path.is_file() else path.iterdir()))
            for name, path in paths.items()
        }
        shared = {
            "ids": args.ids,
            "feature": f"float16 ({args.rows}, {args.dim})",
            "loads_per_repeat": args.loads,
            "repeats": args.repeats,
            "loads_per_s": {name: round(value, 1) for name, value in rate.items()},
            "open_ms": {name: round(1000 * statistics.median(seconds), 2) for name, seconds in open_seconds.items()},
            "build_s": {name: round(seconds, 1) for name, seconds in build_seconds.items()},
            "size_mb": {name: round(size / 1e6) for name, size in sizes.items()},
            "shards": len(list(paths["sharded"].glob("data-*.arrow"))),
            "check": check,
        }
        entries = [
            {"name": "feature_store", "ours": round(rate["sharded"], 1), "baseline": round(rate["npy"], 1),
             "ratio": round(rate["sharded"] / rate["npy"], 2), "target": TARGET_VS_NPY, "unit": "loads/s",
             **shared},
            {"name": "feature_store_vs_safetensors", "ours": round(rate["sharded"], 1),
             "baseline": round(rate["safetensors"], 1), "ratio": round(rate["sharded"] / rate["safetensors"], 2),
             "target": TARGET_VS_SAFETENSORS, "unit": "loads/s", "check": check},
        ]  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(entries, indent=2))
    return 0 if check == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
