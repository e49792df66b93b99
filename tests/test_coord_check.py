"""Coordinate check: SP fails the width check, μP and CompleteP pass it, CompleteP passes the depth check."""

from __future__ import annotations

import json

import pytest

from lrtransfer.coord_check import coord_check, main

# tiny ladders: a few steps of AdamW on synthetic bigram tokens, 2 seeds
FAST = dict(vocab_size=128, seq_len=16, batch_size=4, steps=3, seeds=2, hidden_size=32)
WIDTHS = (32, 64, 128)
DEPTHS = (2, 4, 8)


@pytest.mark.parametrize("p", ["mup", "completep"])
def test_mup_and_completep_pass_width_check(p: str) -> None:
    result = coord_check("gpt2", p, "width", sizes=WIDTHS, **FAST)
    assert result.passed, result.summary()
    assert result.max_slope() < 0.25
    assert {"logits", "transformer.h.*.mlp.c_fc", "transformer.h.*"} <= set(result.slopes)
    assert all(len(s) == FAST["steps"] for s in result.slopes.values())





def test_sp_fails_width_check_via_cli(tmp_path) -> None:
    argv = ["--model_family", "gpt2", "--parameterization", "sp", "--axis", "width", "--output_dir", str(tmp_path),
            "--sizes", *map(str, WIDTHS)] + [f"--{k}={v}" for k, v in FAST.items()]
    assert main(argv) == 1  # non-zero exit on FAIL
    result = json.loads((tmp_path / "coord_check.json").read_text())
    assert result["passed"] is False
    # SP's hidden outputs grow ~ d already at init (fixed σ, growing fan-in) and keep growing after updates
    assert min(result["slopes"]["transformer.h.*.mlp.c_proj"]) > 0.75
    png = (tmp_path / "coord_check.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_completep_passes_depth_check_mup_fails_it(tmp_path) -> None:
    good = coord_check("gpt2", "completep", "depth", sizes=DEPTHS, output_dir=tmp_path, **FAST)
    assert good.passed, good.summary()
    assert (tmp_path / "coord_check.png").is_file()
    bad = coord_check("gpt2", "mup", "depth", sizes=DEPTHS, **FAST)  # no residual scaling: the stream grows with L
    assert not bad.passed and bad.worst_module == "transformer.h.*", bad.summary()


@pytest.mark.parametrize(
    "kwargs,field",
    [(dict(axis="height"), "axis"), (dict(sizes=(32,)), "sizes"), (dict(sizes=(32, 40)), "head_dim"),
     (dict(steps=0), "steps"), (dict(lr=0.0), "lr"), (dict(model_family="llama"), "model_family")],
)
def test_bad_arguments_rejected(kwargs: dict, field: str) -> None:
    args = dict(model_family="gpt2", parameterization="mup", axis="width") | kwargs
    with pytest.raises(ValueError, match=field):
        coord_check(args.pop("model_family"), args.pop("parameterization"), args.pop("axis"), **args)
