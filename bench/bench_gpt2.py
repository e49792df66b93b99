"""Training-step time of lrtransfer's SP GPT-2 vs transformers' GPT2LMHeadModel, same shape and data.

One process, interleaved repetitions (the machine is shared, so only the ratio is meaningful), medians.
A step is forward with labels + backward + AdamW step + zero_grad. The reference runs the same math
(tanh GELU, no dropout, SDPA attention, tied embeddings). Peak memory is the highest sum of live CPU
allocations during one step (torch profiler's memory events), so it is per model, not per process.

    python bench/bench_gpt2.py            # d=256, L=4, T=256, V=8192, batch 16, CPU fp32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lrtransfer.modeling.gpt2 import LRTGPT2Config, LRTGPT2ForCausalLM


def build_models(
    d: int, layers: int, heads: int, seq: int, vocab: int, ref_dropout: float = 0.0
) -> tuple[torch.nn.Module, torch.nn.Module]:
    ours = LRTGPT2ForCausalLM(
        LRTGPT2Config(
            vocab_size=vocab, max_position_embeddings=seq, hidden_size=d, num_hidden_layers=layers,
            num_attention_heads=heads, parameterization="sp", base_hidden_size=d, base_num_layers=layers,
        )
    )
    ref_config = GPT2Config(
        vocab_size=vocab, n_positions=seq, n_embd=d, n_layer=layers, n_head=heads,
        resid_pdrop=ref_dropout, embd_pdrop=ref_dropout, attn_pdrop=ref_dropout, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None,
    )
    ref = GPT2LMHeadModel._from_config(ref_config, attn_implementation="sdpa")
    ref.loss_type = "ForCausalLM"  # the class name does not say it; same loss function as ours
    return ours.train(), ref.train()


def make_step(model: torch.nn.Module) -> tuple[torch.optim.Optimizer, callable]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

    def step(batch: torch.Tensor) -> float:
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return opt, step


def peak_step_memory(step: callable, batch: torch.Tensor) -> int:
    """Peak bytes of live CPU allocations made during one step (allocations alive before it are not counted)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step(batch)
    # each op's own allocations (and the "[memory]" free events), in time order; an op's allocations are
    # counted at its start, so the peak is a slight over-estimate for ops that allocate and free internally
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--ref-dropout", type=float, default=0.0,
                    help="reference dropout (GPT2Config's default is 0.1; ours has none, so 0 is the same math)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours, ref = build_models(args.hidden, args.layers, args.heads, args.seq, args.vocab, args.ref_dropout)
    steps = {"ours": make_step(ours)[1], "ref": make_step(ref)[1]}
    batch = torch.randint(0, args.vocab, (args.batch, args.seq))
    for _ in range(args.warmup):
        for step in steps.values():
            step(batch)

    times: dict[str, list[float]] = {"ours": [], "ref": []}
    for rep in range(args.reps):
        order = ("ours", "ref") if rep % 2 == 0 else ("ref", "ours")
        for name in order:
            t0 = time.perf_counter()
            steps[name](batch)
            times[name].append(time.perf_counter() - t0)
    ratios = [o / r for o, r in zip(times["ours"], times["ref"], strict=True)]
    peaks = {name: peak_step_memory(step, batch) for name, step in steps.items()}

    print(
        f"shape d={args.hidden} L={args.layers} H={args.heads} T={args.seq} V={args.vocab} batch={args.batch} "
        f"(CPU fp32, {torch.get_num_threads()} threads, {args.reps} interleaved reps, ref dropout {args.ref_dropout})"
    )
    for name in ("ours", "ref"):
        med = statistics.median(times[name])
        print(
            f"{name:>4}: median step {med * 1e3:8.1f} ms  {args.batch * args.seq / med:9.0f} tok/s  "
            f"peak step memory {peaks[name] / 2**20:7.1f} MiB"
        )
    print(f"ratio ours/ref: median of per-rep ratios {statistics.median(ratios):.3f}, "
          f"ratio of medians {statistics.median(times['ours']) / statistics.median(times['ref']):.3f}")


if __name__ == "__main__":
    main()
