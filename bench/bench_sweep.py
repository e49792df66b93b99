"""Adaptive LR search vs the full grid, and the trunk-and-branch saving, on a small real sweep (CPU).

Runs the same spec (a GPT-2 SP width ladder x 4 horizons x2 apart, WSD 20% decay, real `run_training`)
three ways, each in its own folder so nothing is reused between them:
  grid        every LR of the range, trunk + branches;
  adaptive    DESIGN §5's search on the same lattice (start at the range's middle for the smallest width,
              then at the η* predicted from the smaller widths);
  independent (with --independent true) the grid again with one standalone run per horizon.
Prints evaluations, tokens and wall time of each, and per (N, D) cell the η* (DESIGN §6 fit, and the
grid argmin) the adaptive search found next to the full grid's: the goal is η* within one grid step
at <= 60% of the grid's evaluations and tokens. The trunk saving is tokens(independent) / tokens(trunk
and branch); on tiny CPU models per-run start-up dominates wall time, so the wall ratio understates it.

    python bench/bench_sweep.py                              # ~10 min on 2 cores
    python bench/bench_sweep.py --widths 32 64 128 --independent true
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lrtransfer.fit import fit_cell
from lrtransfer.sweep import SweepConfig, run_sweep
from lrtransfer.utils import parse_config


@dataclass
class BenchConfig:
    out: str = "/tmp/lrtransfer_bench_sweep"
    data_dir: str | None = field(default=None, metadata={"help": "prepared data (None: a capped stdlib set in out)"})
    widths: list[int] = field(default_factory=lambda: [32, 64])
    depth: int = 2
    head_dim: int = 16
    seq_len: int = 64
    global_batch_size: int = 8
    horizon_steps: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    log2_lr_start: float = -11.0
    log2_lr_stop: float = -3.0
    max_parallel: int = 2
    independent: bool = False
    fresh: bool = True


def _data(cfg: BenchConfig, root: Path) -> str:
    if cfg.data_dir:
        return cfg.data_dir
    from lrtransfer.data import PrepareConfig, prepare

    return str(prepare(PrepareConfig(source="stdlib", output_dir=str(root / "data"), stdlib_max_bytes=1_500_000,
                                     vocab_size=512, val_tokens=16_384, num_proc=1, progress=False)))  # fmt: skip


def _eta_star(df: pd.DataFrame) -> dict[tuple[int, int], dict]:
    """Per (hidden_size, D): grid argmin and the DESIGN §6 fit of η* (log2 units)."""
    out = {}
    for (w, D), cell in df.groupby(["hidden_size", "D"]):
        ok = cell[cell["status"] == "ok"]
        div = cell[cell["status"] != "ok"]["lr"].tolist()
        fit = fit_cell(ok["lr"].tolist(), ok["val_loss"].tolist(), diverged_lrs=div, n_boot=0)
        argmin = float(ok.loc[ok["val_loss"].idxmin(), "log2_lr"]) if len(ok) else math.nan
        out[(int(w), int(D))] = {"argmin": argmin, "fit": fit["log2_eta_star"], "flags": fit["flags"],
                                 "points": len(cell)}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    (cfg,) = parse_config([BenchConfig], argv)
    root = Path(cfg.out)
    if cfg.fresh:
        for name in ("grid", "adaptive", "independent"):
            shutil.rmtree(root / name, ignore_errors=True)
    tps = cfg.seq_len * cfg.global_batch_size
    base = dict(model_family="gpt2", parameterization="sp", num_hidden_layers=cfg.depth, num_attention_heads=1,
                data_dir=_data(cfg, root), seq_len=cfg.seq_len, global_batch_size=cfg.global_batch_size,
                total_tokens=tps * cfg.horizon_steps[0], optimizer="adamw", weight_decay=0.1, schedule="wsd",
                warmup_steps=4, decay_fraction=0.2, eval_tokens=8192, eval_every=0, log_every=10, track_every=5,
                progress=False)  # fmt: skip
    common = dict(base=base, widths=cfg.widths, depths=[cfg.depth], head_dim=cfg.head_dim,
                  horizons=[tps * s for s in cfg.horizon_steps], log2_lr_start=cfg.log2_lr_start,
                  log2_lr_stop=cfg.log2_lr_stop, log2_lr_step=1.0, executor="local", devices="cpu",
                  max_parallel=cfg.max_parallel, runs_per_device=cfg.max_parallel, start_method="fork", poll_s=0.2)  # fmt: skip
    runs = {"grid": dict(lr_search="grid"), "adaptive": dict(lr_search="adaptive")}
    if cfg.independent:
        runs["independent"] = dict(lr_search="grid", trunk_and_branch=False)
    summaries, tables = {}, {}
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "progress.log", "a") as log:  # one line per finished run
        for name, extra in runs.items():
            summaries[name] = run_sweep(SweepConfig(output_dir=str(root / name), **common, **extra), progress_stream=log)
            tables[name] = pd.read_parquet(root / name / "results.parquet")
    g, a = summaries["grid"], summaries["adaptive"]
    print(f"sweep: widths {cfg.widths} x depth {cfg.depth}, horizons {cfg.horizon_steps} steps of {tps} tokens, "
          f"log2 η {cfg.log2_lr_start:g}..{cfg.log2_lr_stop:g} (step 1), WSD 20% decay, max_parallel {cfg.max_parallel}")
    print(f"{'':12} {'evaluations (N,D,η cells)':>26} {'LR points':>9} {'runs':>5} {'tokens':>11} {'wall s':>8}")
    for name, s in summaries.items():
        print(f"{name:12} {s['evaluations']:>26} {s['lr_points']:>9} {s['runs']:>5} {s['tokens_computed']:>11,} "
              f"{s['wall_time_s']:>8.1f}")
    ev, tok, wall = (a["evaluations"] / g["evaluations"], a["tokens_computed"] / g["tokens_computed"],
                     a["wall_time_s"] / g["wall_time_s"])  # fmt: skip
    print(f"adaptive / grid: evaluations {ev:.2f}, tokens {tok:.2f}, wall {wall:.2f} (goal <= 0.60)")
    eg, ea = _eta_star(tables["grid"]), _eta_star(tables["adaptive"])
    print(f"{'width':>6} {'D':>8} | {'grid argmin':>11} {'fit':>7} | {'adaptive argmin':>15} {'fit':>7} {'pts':>4} | within 1 step")
    within = 0
    for key in sorted(eg):
        gg, aa = eg[key], ea.get(key, {"argmin": math.nan, "fit": None, "points": 0})
        ref = gg["fit"] if gg["fit"] is not None else gg["argmin"]
        got = aa["fit"] if aa["fit"] is not None else aa["argmin"]
        ok = abs(ref - got) <= 1.0 + 1e-9
        within += ok
        fmt = lambda v: f"{v:7.2f}" if v is not None else "   none"  # noqa: E731
        print(f"{key[0]:>6} {key[1]:>8} | {gg['argmin']:>11.0f} {fmt(gg['fit'])} | {aa['argmin']:>15.0f} "
              f"{fmt(aa['fit'])} {aa['points']:>4} | {'yes' if ok else 'NO'}")  # fmt: skip
    print(f"η* within one grid step of the full grid's: {within}/{len(eg)} cells")
    same = tables["grid"].merge(tables["adaptive"], on="config_hash", suffixes=("_g", "_a"))
    same = same[same["status_g"] == "ok"]
    print(f"adaptive rows (branches of trunks stopped early and extended) vs the grid's same runs: max |val loss "
          f"diff| over {len(same)} runs {(same['val_loss_g'] - same['val_loss_a']).abs().max():.3g}")
    print(f"trunk-and-branch: tokens {g['tokens_computed']:,} vs {g['tokens_independent']:,} as independent runs "
          f"-> {g['trunk_saving']:.2f}x saving")
    if "independent" in summaries:
        ind = summaries["independent"]
        print(f"measured: independent runs {ind['tokens_computed']:,} tokens in {ind['wall_time_s']:.1f} s vs trunk "
              f"and branch {g['tokens_computed']:,} in {g['wall_time_s']:.1f} s "
              f"(wall ratio {ind['wall_time_s'] / g['wall_time_s']:.2f})")
        same = tables["grid"].merge(tables["independent"], on="config_hash", suffixes=("_tb", "_ind"))
        diff = (same["val_loss_tb"] - same["val_loss_ind"]).abs().max()
        print(f"branch vs standalone final val loss, max |diff| over {len(same)} runs: {diff:.3g}")
    (root / "bench.json").write_text(json.dumps({"summaries": summaries, "within_one_step": [within, len(eg)]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
