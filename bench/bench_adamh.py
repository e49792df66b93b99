"""Optimizer-step time of AdamH vs torch.optim.AdamW(foreach=True), and the effective-LR tracker's cost.

One process, the parameters and groups of a GPT-2 124M (d=768, L=12, V=50257, tied embeddings, as
`LRTGPT2ForCausalLM.param_groups()` returns them), fixed random gradients, CPU fp32. Both optimizers
step the same tensors; repetitions are interleaved (order alternating) and medians reported, since
the machine is shared and only ratios are meaningful. Goal: AdamH ≤ 1.3× AdamW.

Tracker overhead (phase 2, AdamW freed, same AdamH optimizer with and without the tracker, again
interleaved): a sampled step (every=1), and for every=50 the per-step average (one sampled step in
50, the unsampled calls timed over 10,000 calls), relative to the untracked AdamH step.

    python bench/bench_adamh.py                 # 124M shape, torch's default thread count
    python bench/bench_adamh.py --threads 1 --reps 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lrtransfer.modeling.gpt2 import LRTGPT2Config, LRTGPT2ForCausalLM
from lrtransfer.optim import EffectiveLRTracker, build_optimizer


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--every", type=int, default=50, help="tracker sampling interval to report")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = LRTGPT2Config(
        vocab_size=args.vocab, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden_size // 64), max_position_embeddings=1024,
        base_hidden_size=args.hidden_size, base_num_layers=args.layers,
    )
    model = LRTGPT2ForCausalLM(config)
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = torch.randn_like(p) * 1e-3
    n_params = sum(p.numel() for p in model.parameters())
    n_hyper = sum(p.numel() for g in model.param_groups() if g["role"] in ("matrix", "lm_head") for p in g["params"])
    adamw = build_optimizer(model.param_groups(), name="adamw", lr=1e-4, weight_decay=0.1)
    adamh = build_optimizer(model.param_groups(), name="adamh", lr=1e-3, adam_lr=1e-4)
    adamw.step()  # create states, warm the allocator
    adamh.step()
    times: dict[str, list[float]] = {"adamw": [], "adamh": []}
    for rep in range(args.reps):
        for name in ("adamw", "adamh") if rep % 2 == 0 else ("adamh", "adamw"):
            times[name].append(timed(adamw.step if name == "adamw" else adamh.step))
    del adamw  # phase 2 compares AdamH steps with and without the tracker, on the same optimizer

    tracker_1 = EffectiveLRTracker(adamh, every=1)

    def tracked_step() -> None:
        tracker_1.before_step(0)
        adamh.step()
        tracker_1.after_step(0)

    tracked_step()
    tracked: dict[str, list[float]] = {"adamh": [], "adamh+tracker(every=1)": []}
    for rep in range(args.reps):
        for name in tracked if rep % 2 == 0 else reversed(tracked):
            tracked[name].append(timed(adamh.step if name == "adamh" else tracked_step))

    # every=k: k-1 unsampled steps (before/after return at once) and one sampled step per window.
    tracker_k = EffectiveLRTracker(adamh, every=args.every)
    unsampled_steps = [s for s in range(1, 10_001) if s % args.every]
    t0 = time.perf_counter()
    for step in unsampled_steps:
        tracker_k.before_step(step)
        tracker_k.after_step(step)
    unsampled = (time.perf_counter() - t0) / len(unsampled_steps)

    med = {k: statistics.median(v) for k, v in times.items()}
    tmed = {k: statistics.median(v) for k, v in tracked.items()}
    print(f"params {n_params / 1e6:.1f}M (hyperball {n_hyper / 1e6:.1f}M), threads {torch.get_num_threads()}, "
          f"reps {args.reps}, CPU fp32")
    print(f"  adamw (torch, foreach)        {med['adamw'] * 1e3:9.1f} ms/step (median)")
    print(f"  adamh                         {med['adamh'] * 1e3:9.1f} ms/step (median)")
    print(f"  AdamH / AdamW                 {med['adamh'] / med['adamw']:9.3f}x   (goal <= 1.3x)")
    extra = tmed["adamh+tracker(every=1)"] - tmed["adamh"]
    print(f"  adamh, phase 2                {tmed['adamh'] * 1e3:9.1f} ms/step (median)")
    print(f"  adamh + tracker, every=1      {tmed['adamh+tracker(every=1)'] * 1e3:9.1f} ms/step "
          f"({extra / tmed['adamh']:+.1%})")
    per_step_k = (extra + (args.every - 1) * unsampled) / args.every
    print(f"  tracker, every={args.every:<3d}            {per_step_k / tmed['adamh']:+.2%} per step on average "
          f"(one sampled step per {args.every}; an unsampled step costs {unsampled * 1e6:.1f} us)")

if __name__ == "__main__":
    main()
