"""The one-command study: the smoke preset end to end, rerun resumes, bad presets rejected."""

import json

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from huggingface_hub import ModelCard

from lrtransfer.study import StudyConfig, judge_expectations, load_preset, run_study


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path):
    study = run_study(StudyConfig(preset="smoke", out_root=str(tmp_path)))
    results = pq.read_table(study / "results.parquet").to_pandas()
    spec = load_preset("smoke")[1]["sweeps"]
    # every (group, width, D, lr) of every preset sweep has a row
    for name, sw in spec.items():
        sub = results[results["run_path"].str.contains(f"/sweeps/{name}/")]
        n_lr = int((sw["log2_lr_stop"] - sw["log2_lr_start"]) / sw["log2_lr_step"]) + 1
        assert len(sub) == len(sw["widths"]) * len(sw["horizons"]) * len(sw["parameterizations"]) * len(sw["optimizers"]) * n_lr
    assert set(results["status"]) <= {"ok", "diverged"}
    fits = json.loads((study / "fits.json").read_text())
    assert {(g["model_family"], g["parameterization"], g["optimizer"]) for g in fits["groups"]} == {
        ("gpt2", "sp", "adamw"), ("gpt2", "mup", "adamw"), ("gpt2", "sp", "adamh"),
        ("nugpt", "ngpt", "adamw"), ("nugpt", "nugpt", "adamw")}
    expectations = json.loads((study / "expectations.json").read_text())
    assert expectations == judge_expectations(fits) and len(expectations) == 4
    assert all(e["held"] in (True, False, None) and e["verdict"] for e in expectations)
    assert len(list((study / "plots").glob("*.png"))) >= 10
    card = ModelCard.load(study / "hub" / "study" / "README.md")
    assert "Did the expectations hold?" in card.text and "results.parquet" in card.text
    ds = load_dataset("parquet", data_files=str(study / "hub" / "study" / "results.parquet"))["train"]
    assert ds.num_rows == len(results)
    models = sorted((study / "hub" / "models").iterdir())
    assert models and all((m / "model.safetensors").is_file() and (m / "README.md").is_file() for m in models)

    # a rerun trains nothing and ends with the same table
    before = {p: p.stat().st_mtime_ns for p in (study / "sweeps").glob("*/runs/*/result.json")}
    run_study(StudyConfig(preset="smoke", out_root=str(tmp_path), cards=False))
    after = {p: p.stat().st_mtime_ns for p in (study / "sweeps").glob("*/runs/*/result.json")}
    assert before == after
    assert pq.read_table(study / "results.parquet").to_pandas()["val_loss"].equals(results["val_loss"])


def test_bad_presets_rejected(tmp_path):
    with pytest.raises(ValueError, match="preset='nope' is unknown; allowed values: .*default.*smoke"):
        run_study(StudyConfig(preset="nope", out_root=str(tmp_path)))
    bad = tmp_path / "bad.yaml"
    bad.write_text("sweeps: {x: {widths: [16], colour: red}}\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        run_study(StudyConfig(preset=str(bad), out_root=str(tmp_path)))
    with pytest.raises(ValueError, match="max_parallel must be >= 1"):
        run_study(StudyConfig(preset="smoke", out_root=str(tmp_path), max_parallel=0))
    assert not (tmp_path / "bad").exists() and not (tmp_path / "smoke").exists()
