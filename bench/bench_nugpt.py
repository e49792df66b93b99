"""Training-step speed of νGPT vs lrtransfer's SP GPT-2 at the same d, L, T (CPU fp32 by default).

One process, interleaved repetitions (the machine is shared, so only ratios are meaningful), medians.
A step is forward with labels + backward + AdamW step (each model's own group spec) + zero_grad, and for
νGPT also `normalize_weights()`, which is timed on its own as well. Achieved FLOP/s counts
6N + 12·L·d·T FLOPs per token with N the model's non-embedding parameter count (so νGPT's wider SwiGLU
MLP is credited, and the lm_head matmul is credited to neither model).

Goals: νGPT's achieved FLOP/s >= 0.8x GPT-2's; renormalization <= 10% of νGPT's step time.

    python bench/bench_nugpt.py                     # d=256, L=4, H=4, T=256, V=8192, batch 8, fp32
    python bench/bench_nugpt.py --device cuda --dtype bfloat16 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lrtransfer.modeling.gpt2 import LRTGPT2Config, LRTGPT2ForCausalLM
from lrtransfer.modeling.nugpt import NuGPTConfig, NuGPTForCausalLM
from lrtransfer.optim import build_optimizer


def build_models(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    shape = dict(
        vocab_size=args.vocab, max_position_embeddings=args.seq, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        base_hidden_size=args.hidden, base_num_layers=args.layers,
    )
    gpt2 = LRTGPT2ForCausalLM(LRTGPT2Config(parameterization="sp", **shape))
    nugpt = NuGPTForCausalLM(NuGPTConfig(parameterization="nugpt", **shape))
    dtype = getattr(torch, args.dtype)
    return {name: m.to(device=args.device, dtype=dtype).train() for name, m in (("gpt2", gpt2), ("nugpt", nugpt))}


def make_step(model: torch.nn.Module, compile_model: bool) -> Callable[[torch.Tensor], float]:
    opt = build_optimizer(model.param_groups(), lr=1e-4)
    normalize = getattr(model, "normalize_weights", None)
    forward = torch.compile(model) if compile_model else model
    if normalize is not None:
        normalize()

    def step(batch: torch.Tensor) -> float:
        loss = forward(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if normalize is not None:
            normalize()
        return loss.item()

    return step


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward (GPU runs)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    models = build_models(args)
    steps = {name: make_step(m, args.compile) for name, m in models.items()}
    nugpt = models["nugpt"]
    batch = torch.randint(0, args.vocab, (args.batch, args.seq), device=args.device)
    for _ in range(args.warmup):
        for step in steps.values():
            step(batch)

    times: dict[str, list[float]] = {"gpt2": [], "nugpt": [], "normalize": []}
    for rep in range(args.reps):
        order = ("gpt2", "nugpt") if rep % 2 == 0 else ("nugpt", "gpt2")
        for name in order:
            sync(args.device)
            t0 = time.perf_counter()
            steps[name](batch)
            sync(args.device)
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        nugpt.normalize_weights()
        sync(args.device)
        times["normalize"].append(time.perf_counter() - t0)

    tokens = args.batch * args.seq
    attn_flops = 12 * args.layers * args.hidden * args.seq
    flops_per_token = {name: 6 * m.num_non_embedding_params() + attn_flops for name, m in models.items()}
    med = {name: statistics.median(t) for name, t in times.items()}
    flops = {name: flops_per_token[name] * tokens / med[name] for name in models}
    speed_ratios = [
        (flops_per_token["nugpt"] / n) / (flops_per_token["gpt2"] / g)
        for n, g in zip(times["nugpt"], times["gpt2"], strict=True)
    ]
    norm_share = [r / s for r, s in zip(times["normalize"], times["nugpt"], strict=True)]

    print(
        f"shape d={args.hidden} L={args.layers} H={args.heads} T={args.seq} V={args.vocab} batch={args.batch} "
        f"({args.device} {args.dtype}{' compiled' if args.compile else ''}, {torch.get_num_threads()} threads, "
        f"{args.reps} interleaved reps)"
    )
    for name, m in models.items():
        print(
            f"{name:>6}: N={m.num_non_embedding_params() / 1e6:6.2f}M  median step {med[name] * 1e3:8.1f} ms  "
            f"{tokens / med[name]:9.0f} tok/s  {flops[name] / 1e9:8.2f} GFLOP/s achieved"
        )
    print(f"νGPT renormalization: median {med['normalize'] * 1e3:.2f} ms = "
          f"{100 * statistics.median(norm_share):.1f}% of the νGPT step (goal <= 10%)")
    print(f"achieved FLOP/s νGPT/GPT-2: median of per-rep ratios {statistics.median(speed_ratios):.3f}, "
          f"ratio of medians {flops['nugpt'] / flops['gpt2']:.3f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
