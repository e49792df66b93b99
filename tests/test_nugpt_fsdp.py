"""νGPT renormalization on FSDP2 (DTensor) parameters: two gloo processes on CPU with torch's `fully_shard`
must give exactly the single-process result, including the column-normalized matrices whose norm axis is
split across ranks by FSDP2's Shard(0)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _model():
    from lrtransfer.modeling.nugpt import NuGPTConfig, NuGPTForCausalLM

    torch.manual_seed(0)
    # vocab 67 does not split evenly over 2 ranks: uneven shards are part of the test.
    cfg = NuGPTConfig(vocab_size=67, hidden_size=48, num_attention_heads=2, num_hidden_layers=2,
                      intermediate_size=144, base_hidden_size=24, base_num_layers=1)
    model = NuGPTForCausalLM(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # knock every matrix off the sphere, differently per row and column
        for p in model.parameters():
            p.mul_(torch.rand(p.shape, generator=gen) + 0.5)
    return model


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = _model()
        reference = copy.deepcopy(model)
        reference.normalize_weights()
        ids = torch.randint(0, 67, (2, 10), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            reference_loss = reference(ids, labels=ids).loss.item()

        mesh = init_device_mesh("cpu", (WORLD,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        o_proj = model.model.layers[0].self_attn.o_proj.weight
        assert isinstance(o_proj, DTensor) and o_proj.placements[0].is_shard(0)
        # A column of a row-sharded matrix is split over the ranks: local normalization alone would be wrong.
        local_only = o_proj.to_local() / o_proj.to_local().norm(dim=0, keepdim=True)

        model.normalize_weights()

        max_err = 0.0
        for p, q in zip(model.parameters(), reference.parameters()):
            full = p.full_tensor() if isinstance(p, DTensor) else p
            max_err = max(max_err, (full - q).abs().max().item())
        local_only_err = (o_proj.to_local() - local_only).abs().max().item()
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        result = {"max_err": max_err, "local_only_err": local_only_err, "loss": loss, "reference_loss": reference_loss}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed (gloo)")
def test_fsdp2_renormalization_matches_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["max_err"] <= 1e-6, result
        assert result["local_only_err"] > 1e-2, result  # the all-reduce was needed, and done
        assert result["loss"] == pytest.approx(result["reference_loss"], rel=1e-5, abs=1e-6)
