"""AdamH, clipping and the tracker under FSDP2 (torch fully_shard, 2 gloo processes on CPU) equal one process."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lrtransfer.modeling import get_family
from lrtransfer.optim import EffectiveLRTracker, build_optimizer, clip_grad_norm_

VOCAB, SEQ, BATCH, STEPS, WORLD = 64, 16, 4, 5, 2


def tiny_gpt2() -> torch.nn.Module:
    """No biases: GPT-2's key bias gets pure round-off gradients, which Adam blows up to ±lr, so
    their values depend on summation order (and never on the model's output)."""
    config_cls, model_cls = get_family("gpt2")
    torch.manual_seed(0)
    cfg = config_cls(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=SEQ, tie_word_embeddings=False, bias=False)
    return model_cls(cfg)


def train(rank: int, world: int) -> dict:
    """5 AdamH steps with clipping and tracking; this rank trains on its slice of each global batch."""
    model = tiny_gpt2()
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
    opt = build_optimizer(model.param_groups(), name="adamh", lr=0.1, adam_lr=1e-2, weight_decay=0.1)
    tracker = EffectiveLRTracker(opt, every=2)
    calls = []
    all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls[-1] += 1
        return all_reduce(*args, **kwargs)

    norms, logs = [], []
    per_rank = BATCH // world
    for step in range(STEPS):
        x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(step))
        x = x[rank * per_rank : (rank + 1) * per_rank]
        model(x, labels=x).loss.backward()
        norms.append(clip_grad_norm_(model.parameters(), max_norm=0.5))
        tracker.before_step(step)
        calls.append(0)
        dist.all_reduce = counting_all_reduce
        try:
            opt.step()
        finally:
            dist.all_reduce = all_reduce
        logs.append(tracker.after_step(step))
        opt.zero_grad()
    params = {n: (p.full_tensor() if world > 1 else p).detach().clone() for n, p in model.named_parameters()}
    radius = {n: opt.state[p]["R"] for n, p in model.named_parameters() if "R" in opt.state[p]}
    return {"params": params, "norms": norms, "logs": logs, "calls": calls, "radius": radius}


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = train(rank, world)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_adamh_fsdp2_two_processes_equals_single_process():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.spawn(_worker, args=(WORLD, os.path.join(tmp, "init"), out), nprocs=WORLD, join=True)
        sharded = torch.load(out, weights_only=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(0, 1)
    finally:
        torch.set_num_threads(threads)

    assert sharded["calls"] == [1] * STEPS  # one all-reduce per step carries every matrix's sums
    assert single["calls"] == [0] * STEPS
    assert sharded["norms"] == pytest.approx(single["norms"], rel=1e-6)
    assert max(single["norms"]) > 0.5  # clipping was active
    assert sharded["radius"].keys() == single["radius"].keys() and len(single["radius"]) == 9
    for n, r in single["radius"].items():
        assert sharded["radius"][n] == pytest.approx(r, rel=1e-6)
    for n, p in single["params"].items():
        q = sharded["params"][n]
        err = ((q.double() - p.double()).norm() / p.double().norm().clamp_min(1e-30)).item()
        assert err < 1e-6, (n, err)
    for t in (0, 2, 4):
        assert sharded["logs"][t].keys() == single["logs"][t].keys()
        for k, v in single["logs"][t].items():
            assert sharded["logs"][t][k] == pytest.approx(v, rel=1e-4, abs=1e-9), (t, k)
