"""Data speed: prepare throughput (goal >= 0.5 M tokens/s on 2 cores) and loader batch assembly
(goal >= 50 M tokens/s), each next to a reference measured in the same process, interleaved, medians.

    python bench/bench_data.py [--mb 4] [--reps 3] [--num_proc 2]

prepare: the stdlib corpus capped at --mb MB through `prepare` with a BPE (vocab 4096) trained
beforehand and passed as an AutoTokenizer path, so the timing covers reading, parallel tokenization,
validation carving and shard writes, not BPE training. Reference: the same texts through one batched
`tokenizer(texts)` call in this process (Rust threads on), i.e. the bare fast tokenizer.
loader: `TokenLoader.next_batch()` (seeded random windows from memory-mapped shards, int64 tensor) on
synthetic uint16 shards in page cache. Reference: one contiguous copy + int64 cast of as many tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lrtransfer import data as D


def _median_s(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _cpu_s() -> float:
    """CPU seconds of this process and its reaped children (the tokenizer workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_prepare(root: Path, mb: float, reps: int, num_proc: int) -> None:
    from transformers import AutoTokenizer

    tok_dir = D.prepare(D.PrepareConfig(output_dir=str(root / "tok"), stdlib_max_bytes=int(mb * 1e6),
                                        vocab_size=4096, val_tokens=4096, num_proc=num_proc, progress=False))
    docs, _ = D._stdlib_documents(None, int(mb * 1e6))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    n_tokens = D.load_manifest(tok_dir)["train"]["tokens"] + 4096
    run = {"i": 0}

    def prepare_once() -> None:
        run["i"] += 1
        out = root / f"p{run['i']}"
        D.prepare(D.PrepareConfig(output_dir=str(out), stdlib_max_bytes=int(mb * 1e6), tokenizer=str(tok_dir),
                                  val_tokens=4096, num_proc=num_proc, progress=False))
        shutil.rmtree(out)

    def reference() -> None:
        tokenizer(docs, add_special_tokens=False)

    t_prep, t_ref, cpu = [], [], []
    for _ in range(reps):  # interleaved
        c = _cpu_s()
        t_prep += _median_s(prepare_once, 1)
        cpu.append(_cpu_s() - c)
        t_ref += _median_s(reference, 1)
    p, r, c = statistics.median(t_prep), statistics.median(t_ref), statistics.median(cpu)
    print(f"prepare  stdlib {sum(map(len, docs)) / 1e6:.1f} MB, {n_tokens / 1e6:.2f} M tokens, num_proc={num_proc}: "
          f"{n_tokens / p / 1e6:.2f} M tok/s (median of {reps}; goal >= 0.5)")
    print(f"         CPU cost {n_tokens / c / 1e6:.2f} M tok per CPU-second (parent + workers): "
          f"{2 * n_tokens / c / 1e6:.2f} M tok/s is the bound on 2 idle cores")
    print(f"         reference tokenizer(texts) in-process: {n_tokens / r / 1e6:.2f} M tok/s; "
          f"prepare / reference = {r / p:.2f}")


def bench_loader(root: Path, reps: int, seq_len: int, batch: int) -> None:
    # Synthetic uint16 shards with the layout prepare writes, under a manifest copied from a real one.
    src = root / "tok"
    data = root / "synthetic"
    data.mkdir()
    manifest = D.load_manifest(src)
    shutil.copy(src / "val_00000.bin", data / "val_00000.bin")
    rng = np.random.default_rng(0)
    shards = []
    for i in range(3):
        tokens = rng.integers(0, 4096, size=16_000_000, dtype=np.uint16)
        D._write_shard(data / f"train_{i:05d}.bin", tokens)
        shards.append({"file": f"train_{i:05d}.bin", "tokens": int(tokens.size)})
    manifest["train"] = {"shards": shards, "tokens": sum(s["tokens"] for s in shards), "documents": 0}
    (data / "manifest.json").write_text(json.dumps(manifest))
    loader = D.TokenLoader(data, seq_len=seq_len, global_batch_size=batch, seed=0)
    mm = D.open_shard(data / "train_00000.bin", "uint16")
    n = batch * (seq_len + 1)
    steps = 20

    def load() -> None:
        if loader.step + steps > loader.num_steps:
            loader.step = 0
        for _ in range(steps):
            loader.next_batch()

    def reference() -> None:
        for i in range(steps):
            np.asarray(mm[i * n : (i + 1) * n]).astype(np.int64)

    load(), reference()  # warm the page cache
    t_load, t_ref, cpu = [], [], []
    for _ in range(reps):
        c = time.process_time()
        t_load += _median_s(load, 1)
        cpu.append(time.process_time() - c)
        t_ref += _median_s(reference, 1)
    tokens = steps * batch * seq_len
    lo, r, c = statistics.median(t_load), statistics.median(t_ref), statistics.median(cpu)
    print(f"loader   seq_len={seq_len} batch={batch}: {tokens / lo / 1e6:.0f} M tok/s wall, "
          f"{tokens / c / 1e6:.0f} M tok per CPU-second (median of {reps}; goal >= 50)")
    print(f"         reference contiguous copy+cast: {tokens / r / 1e6:.0f} M tok/s; loader / reference = {r / lo:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=4.0, help="stdlib source MB for the prepare benchmark")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--num_proc", type=int, default=2)
    args = ap.parse_args()
    print(f"cores available: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_prepare(root, args.mb, args.reps, args.num_proc)
        for seq_len, batch in ((1024, 64), (128, 256)):
            bench_loader(root, 2 * args.reps + 1, seq_len, batch)
            shutil.rmtree(root / "synthetic")


if __name__ == "__main__":
    main()
