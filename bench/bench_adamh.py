"""Optimizer-step time of AdamH vs torch.optim.AdamW(foreach=True), and the effective-LR tracker's cost.

One process, the parameters and groups of a GPT-2 124M (d=768, L=12, V=50257, tied embeddings, as
`LRTGPT2ForCausalLM.param_groups()` returns them), fixed random gradients, CPU fp32. Both optimizers
step the same tensors; repetitions are interleaved (order alternating) and medians reported, since
the machine is shared and only ratios are meaningful. Goal: AdamH ≤ 1.3× AdamW.

Tracker overhead: an AdamH step with `before_step`/`after_step` on a sampled step (every=1), and the
mean step over a window of 50 steps with every=50, both relative to the untracked AdamH step.

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
    parser.add_argument("--window", type=int, default=50, help="steps per every=50 tracker window")
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
    tracked = build_optimizer(model.param_groups(), name="adamh", lr=1e-3, adam_lr=1e-4)
    tracker_1 = EffectiveLRTracker(tracked, every=1)

    def tracked_step() -> None:
        tracker_1.before_step(0)
        tracked.step()
        tracker_1.after_step(0)

    for fn in (adamw.step, adamh.step, tracked_step):  # create states, warm allocator
        fn()

    times: dict[str, list[float]] = {"adamw": [], "adamh": [], "adamh+tracker(every=1)": []}
    for rep in range(args.reps):
        order = list(times) if rep % 2 == 0 else list(reversed(times))
        for name in order:
            fn = {"adamw": adamw.step, "adamh": adamh.step, "adamh+tracker(every=1)": tracked_step}[name]
            times[name].append(timed(fn))

    tracker_50 = EffectiveLRTracker(tracked, every=args.window)
    windows: dict[str, list[float]] = {"adamh": [], "adamh+tracker(window)": []}

    def window(with_tracker: bool) -> None:
        for step in range(args.window):
            if with_tracker:
                tracker_50.before_step(step)
            tracked.step()
            if with_tracker:
                tracker_50.after_step(step)

    for rep in range(max(1, args.reps // 3)):
        for with_tracker in ((False, True) if rep % 2 == 0 else (True, False)):
            key = "adamh+tracker(window)" if with_tracker else "adamh"
            windows[key].append(timed(lambda w=with_tracker: window(w)) / args.window)

    med = {k: statistics.median(v) for k, v in times.items()}
    wmed = {k: statistics.median(v) for k, v in windows.items()}
    print(f"params {n_params / 1e6:.1f}M (hyperball {n_hyper / 1e6:.1f}M), threads {torch.get_num_threads()}, "
          f"reps {args.reps}, CPU fp32")
    for k, v in med.items():
        print(f"  {k:28s} {v * 1e3:9.1f} ms/step (median)")
    print(f"  AdamH / AdamW                      {med['adamh'] / med['adamw']:.3f}x   (goal <= 1.3x)")
    print(f"  tracker overhead, every=1          {med['adamh+tracker(every=1)'] / med['adamh'] - 1:+.1%} of an AdamH step")
    print(f"  tracker overhead, every={args.window:<3d}        "
          f"{wmed['adamh+tracker(window)'] / wmed['adamh'] - 1:+.1%} "
          f"({wmed['adamh+tracker(window)'] * 1e3:.1f} vs {wmed['adamh'] * 1e3:.1f} ms/step over {args.window}-step windows)")


if __name__ == "__main__":
    main()
