"""plots.py: every DESIGN §7 plot is produced for a small table, and the AdamW theory curve is right."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lrtransfer.fit import fit_results, write_fits
from lrtransfer.optim import EffectiveLRTracker, build_optimizer
from lrtransfer.plots import main, plot_all, plot_training, read_metrics, run_history, training_theory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_table() -> pd.DataFrame:
    """Two parameterizations × 2 widths × 3 horizons, 7 LRs, with diverged runs at high LR."""
    rows = []
    for par, a in (("sp", 0.5), ("mup", 0.05)):
        for N, d in ((2**17, 32), (2**19, 64)):
            for D in (2**20, 2**21, 2**22):
                xs = -6 - a * (math.log2(N) - 17) - 0.3 * (math.log2(D) - 20) + 0.05 * (math.log2(D) - 20) ** 2
                for x in np.arange(-10.0, -3.0):
                    div = x > xs + 2.5
                    rows.append(dict(
                        run_id=f"{par}-{N}-{D}-{x:g}", config_hash=f"h{len(rows)}", model_family="gpt2",
                        parameterization=par, optimizer="adamw", N=N, N_total=N + 1000, hidden_size=d,
                        num_hidden_layers=2, D=D, lr=2.0**x, seed=0, status="diverged" if div else "ok",
                        val_loss=np.nan if div else 3.0 + 0.04 * (x - xs) ** 2 + 0.002 * np.sin(7 * x + N % 5),
                        eta_eff_mean=np.nan if div else 0.2 * 2.0 ** (0.5 * x), tokens=D, wall_time_s=1.0,
                        run_path="r",
                    ))  # fmt: skip
    return pd.DataFrame(rows)


def noise_run(run_dir, *, steps=400, lr=0.02, wd=0.25, every=4, optimizer="adamw"):
    """A run folder from the project's optimizer on pure-noise gradients, logged like the training loop."""
    torch.manual_seed(0)
    mats = [torch.nn.Parameter(torch.randn(32, 32) * 0.02) for _ in range(2)]
    emb = torch.nn.Parameter(torch.randn(48, 32) * 0.02)
    spec = dict(lr_mult=1.0, weight_decay_mult=1.0, eps_mult=1.0)
    groups = [
        {"params": mats, "name": "hidden_matrix", "role": "matrix", "param_names": ["h.0.attn.w", "h.0.mlp.w"], **spec},
        {"params": [emb], "name": "embedding", "role": "embedding", "param_names": ["wte.weight"], **spec},
    ]
    opt = build_optimizer(groups, name=optimizer, lr=lr, weight_decay=wd)
    decay_start = int(0.75 * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * min(1.0, (steps - s) / (steps - decay_start)))
    tracker = EffectiveLRTracker(opt, every)
    run_dir.mkdir(parents=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for t in range(steps):
            for p in [*mats, emb]:
                p.grad = torch.randn_like(p)
            row = {"step": t, "tokens": 256 * t, "loss": 4.0, "lr": opt.param_groups[0]["lr"],
                   "lr/hidden_matrix": opt.param_groups[0]["lr"], "lr/embedding": opt.param_groups[1]["lr"]}  # fmt: skip
            tracker.before_step(t)
            opt.step()
            row.update(tracker.after_step(t) or {})
            sched.step()
            f.write(json.dumps(row) + "\n")
    cfg = {"model_family": "gpt2", "parameterization": "sp", "optimizer": optimizer, "lr": lr, "weight_decay": wd,
           "beta1": 0.9, "beta2": 0.95}  # fmt: skip
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run_dir, decay_start


def test_plot_all_produces_every_plot(tmp_path):
    table = small_table()
    results = tmp_path / "results.parquet"
    table.to_parquet(results)
    fits_path = write_fits(fit_results(results, n_boot=50), tmp_path / "fit")
    run, _ = noise_run(tmp_path / "runs" / "run0")
    paths = plot_all(fits_path, results, tmp_path / "plots", runs=[run])
    names = sorted(p.name for p in paths)
    expected = sorted(
        [f"{kind}_gpt2_{par}_adamw{suffix}.png" for par in ("sp", "mup")
         for kind, suffix in (("lr_curves", "_by_D"), ("lr_curves", "_by_width"), ("eta_star_vs_D", ""),
                              ("eta_star_vs_N", ""), ("r2_ood_vs_budget", ""))]
        + ["compare_sp_vs_mup_gpt2_adamw.png", "training_run0.png"])  # fmt: skip
    assert names == expected
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 15_000, p.name
    assert not list((tmp_path / "plots").glob(".*.tmp"))  # atomic writes leave no temp files


def test_adamw_theory_tracks_torch_adamw(tmp_path):
    """The §3.4 recursion (with the momentum walk variance) follows a real AdamW run on noise."""
    wd, lr = 0.25, 0.02
    run, decay_start = noise_run(tmp_path / "run", lr=lr, wd=wd, steps=800)
    rows = read_metrics(run)
    th = training_theory(rows, yaml.safe_load((run / "config.yaml").read_text()), "lr/hidden_matrix")
    sampled = [r for r in rows if "eta_eff/block_mean" in r]
    w = np.array([r["wnorm/block_mean"] for r in sampled])
    e = np.array([r["eta_eff/block_mean"] for r in sampled])
    steps = th["steps"]
    late = (steps > 400) & (steps < decay_start)  # at equilibrium: relaxation time 1/(2ηλ) = 100 steps
    assert np.allclose(th["wnorm"][late], w[late], rtol=0.08)
    assert np.allclose(th["eta_eff"][late], e[late], rtol=0.08)
    # and the DESIGN equilibria: ‖W‖² ≈ η·n/(2λ), η_eff ≈ √(2ηλ(1−β1)/(1+β1))
    assert np.median(w[late]) == pytest.approx(math.sqrt(lr * 32 * 32 / (2 * wd)), rel=0.1)
    assert np.median(e[late]) == pytest.approx(math.sqrt(2 * lr * wd * 0.1 / 1.9), rel=0.1)


def test_adamh_theory_uses_the_angle(tmp_path):
    """AdamH moves each matrix by exactly η_t·R·u/‖u‖ on its sphere: η_eff ≈ η_t·sin∠(u, W)."""
    run, decay_start = noise_run(tmp_path / "run", optimizer="adamh", steps=80)
    rows = read_metrics(run)
    th = training_theory(rows, yaml.safe_load((run / "config.yaml").read_text()), "lr/hidden_matrix")
    sampled = [r for r in rows if "eta_eff/block_mean" in r]
    measured = np.array([r["eta_eff/block_mean"] for r in sampled])
    w = np.array([r["wnorm/block_mean"] for r in sampled])
    assert np.allclose(w, w[0], rtol=1e-5)  # on the hyperball the norm does not move
    after_warmup = (th["steps"] >= 20) & (th["steps"] < decay_start)
    assert np.allclose(th["eta_eff"][after_warmup], measured[after_warmup], rtol=0.03)
    assert plot_training(run, tmp_path / "plots").stat().st_size > 15_000


def test_training_plot_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_training(tmp_path, tmp_path / "out")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": 3.0, "lr": 1e-3}) + "\n")
    with pytest.raises(ValueError, match="eta_eff/block_mean"):
        plot_training(tmp_path, tmp_path / "out")
    run, _ = noise_run(tmp_path / "run", steps=12)
    with pytest.raises(ValueError, match="lr_key='lr/nope'.*allowed"):
        plot_training(run, tmp_path / "out", lr_key="lr/nope")


def test_cli_and_thin_fits(tmp_path, capsys):
    """One model size, one horizon, an edge minimum: the plots still come out."""
    table = small_table()
    table = table[(table["parameterization"] == "sp") & (table["N"] == 2**17) & (table["D"] == 2**20)]
    table = table[table["lr"] <= 2.0**-7]  # η* off the grid's top: extend_grid
    fits = fit_results(table, n_boot=20)
    assert "extend_grid" in fits["groups"][0]["cells"][0]["flags"]
    fits_path = write_fits(fits, tmp_path)
    assert main(["--fits", str(fits_path), "--out", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 5 and all(p.endswith(".png") for p in printed)
    with pytest.raises(FileNotFoundError, match="fits="):
        plot_all(tmp_path / "missing.json", None, tmp_path)


def test_branch_history_starts_with_its_trunk(tmp_path):
    """A decay branch logs from its branch point; the plot's history starts at the trunk's step 0."""
    trunk, branch = tmp_path / "trunk", tmp_path / "branch"
    (trunk / "checkpoints" / "step_00000005").mkdir(parents=True)
    branch.mkdir()
    (trunk / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "lr": 1.0, "who": "trunk"}) + "\n"
                                                 for s in range(12)))  # fmt: skip
    (branch / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "lr": 0.5, "who": "branch"}) + "\n"
                                                  for s in range(5, 9)))  # fmt: skip
    rows = run_history(branch, {"init_from": str(trunk / "checkpoints" / "step_00000005")})
    assert [(r["step"], r["who"]) for r in rows] == [(s, "trunk") for s in range(5)] + [
        (s, "branch") for s in range(5, 9)]  # fmt: skip
    assert run_history(branch, {}) == read_metrics(branch)
