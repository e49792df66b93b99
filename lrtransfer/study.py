"""`lrtransfer study`: the whole pipeline in one command, on the embedded stdlib corpus by default.

prepare → sweeps (GPT-2 SP vs μP across width; nGPT vs νGPT across width; AdamW vs AdamH across
horizons) → fits → plots → expectations of DESIGN §8 judged from this run's numbers → study card and
model cards for the best run of every cell, all in `studies/<name>/`. Every stage is idempotent:
rerunning skips finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from lrtransfer.utils import atomic_write_bytes, atomic_write_json, atomic_write_yaml, parse_config

PRESET_DIR = Path(__file__).parent / "presets"
PRESET_KEYS = ("description", "data", "base", "sweeps", "fit")
UNRELIABLE_FLAGS = {"vertex_far", "nonpositive_curvature"}  # η* fell back to the grid argmin (fit.fit_cell)


@dataclass
class StudyConfig:
    """`lrtransfer study [--preset default] [--name NAME] [--out_root studies]`."""

    preset: str = field(default="default", metadata={"help": "a preset name (smoke, default, large) or a YAML path"})
    name: str | None = field(default=None, metadata={"help": "study folder name (default: the preset's name)"})
    out_root: str = field(default="studies", metadata={"help": "parent folder of the study"})
    max_parallel: int | None = field(default=None, metadata={"help": "runs at once (default: the preset's)"})
    cards: bool = field(default=True, metadata={"help": "build the study card and the best runs' model cards"})


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(preset: str) -> tuple[str, dict[str, Any]]:
    """A preset is a YAML with data (PrepareConfig fields), base (TrainConfig fields) and sweeps."""
    path = Path(preset)
    if not path.suffix:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ValueError(f"preset={preset!r} is unknown; allowed values: {available_presets()} or a YAML path")
    elif not path.is_file():
        raise ValueError(f"preset={preset!r}: no such file")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(spec) - set(PRESET_KEYS))
    if unknown or not isinstance(spec.get("sweeps"), dict) or not spec["sweeps"]:
        raise ValueError(f"preset {path}: keys must be {list(PRESET_KEYS)} with a non-empty 'sweeps' mapping; "
                         f"unknown keys {unknown}")  # fmt: skip
    return path.stem, spec


def _sweep_configs(spec: dict[str, Any], study_dir: Path, data_dir: Path, max_parallel: int | None) -> dict[str, Any]:
    """One SweepConfig per preset sweep, validated before anything trains."""
    from lrtransfer.sweep import SweepConfig

    known = {f.name for f in dataclasses.fields(SweepConfig)}
    configs = {}
    for name, sweep in spec["sweeps"].items():
        sweep = dict(sweep)
        unknown = sorted(set(sweep) - known)
        if unknown:
            raise ValueError(f"preset sweep {name!r}: unknown field(s) {unknown}; allowed: {sorted(known)}")
        base = {**(spec.get("base") or {}), **(sweep.pop("base", None) or {}), "data_dir": str(data_dir)}
        if max_parallel is not None:
            sweep["max_parallel"] = max_parallel
        configs[name] = SweepConfig(output_dir=str(study_dir / "sweeps" / name), base=base, **sweep)
    return configs


def _combine_results(paths: list[Path], out: Path) -> None:
    tables = [pq.read_table(p) for p in paths if p.is_file()]
    table = pa.concat_tables(tables, promote_options="default")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(out, sink.getvalue().to_pybytes())


# ------------------------------------------------------------------------------------ expectations


def _group(fits: dict[str, Any], family: str, param: str, opt: str) -> dict[str, Any] | None:
    for g in fits["groups"]:
        if (g["model_family"], g["parameterization"], g["optimizer"]) == (family, param, opt):
            return g
    return None


def _width_shift(group: dict[str, Any]) -> dict[str, Any] | None:
    """Slope of log2 η* against log2 width at the largest D with ≥ 2 widths: 0 means perfect transfer."""
    by_D: dict[int, list[tuple[int, float]]] = {}
    for c in group["cells"]:  # a grid argmin standing in for a failed parabola is too coarse to judge a shift
        if c.get("log2_eta_star") is not None and not UNRELIABLE_FLAGS & set(c.get("flags", ())):
            by_D.setdefault(int(c["D"]), []).append((int(c["hidden_size"]), float(c["log2_eta_star"])))
    Ds = [D for D, pts in by_D.items() if len({w for w, _ in pts}) >= 2]
    if not Ds:
        return None
    D = max(Ds)
    pts = sorted(by_D[D])
    x = np.log2([w for w, _ in pts])
    y = np.array([v for _, v in pts])
    slope = float(np.polyfit(x, y, 1)[0])
    return {"D": D, "widths": [w for w, _ in pts], "log2_eta_star": y.tolist(), "slope_per_doubling": slope,
            "shift_log2": float(y[-1] - y[0])}  # fmt: skip


def _along_D_curvature(group: dict[str, Any], quantity: str) -> dict[str, Any] | None:
    """|c2| and the linear fit's RMSE of log2 η* (or η*_eff) vs log2 D at the widest N."""
    laws = group["laws"][quantity]["along_D"]
    candidates = [(int(N), v) for N, v in laws.items() if v.get("quadratic") is not None]
    if not candidates:
        return None
    N, law = max(candidates)
    lin = law.get("linear") or {}
    quad = law["quadratic"]
    return {"N": N, "c2": quad["c2"], "c2_lo": quad.get("c2_lo"), "c2_hi": quad.get("c2_hi"),
            "linear_rmse_log2": lin.get("rmse_log2"), "n": law.get("n")}  # fmt: skip


def _verdict(label: str, a: str, fa: dict | None, b: str, fb: dict | None, key: str, what: str,
             missing: str) -> dict[str, Any]:
    """Expectation "a's |key| is smaller than b's", judged from two figure dicts (None: not measurable)."""
    entry: dict[str, Any] = {"expectation": label, a: fa, b: fb}
    if fa is None or fb is None:
        return {**entry, "held": None, "verdict": f"undetermined: {missing}"}
    va, vb = abs(fa[key]), abs(fb[key])
    held = va < vb
    return {**entry, "held": held,
            "verdict": f"{'held' if held else 'did not hold'}: {what} {va:.3f} ({a}) vs {vb:.3f} ({b})"}


def judge_expectations(fits: dict[str, Any]) -> list[dict[str, Any]]:
    """The expectations of DESIGN §8, each held / did not hold / undetermined, with its figures."""
    out = []
    for family, a, b, label in (("gpt2", "mup", "sp", "η* moves less across width under μP than under SP"),
                                ("nugpt", "nugpt", "ngpt", "η* moves less across width under νGPT than under nGPT")):
        sa, sb = (_width_shift(g) if (g := _group(fits, family, p, "adamw")) else None for p in (a, b))
        out.append(_verdict(label, a, sa, b, sb, "slope_per_doubling", "|Δlog2 η*| per width doubling",
                            "η* missing for some widths (see the flags)"))
    horizon_groups = [g for g in fits["groups"] if len(g["Ds"]) >= 3]
    aw = next((g for g in horizon_groups if g["optimizer"] == "adamw"), None)
    ah = next((g for g in horizon_groups if g["optimizer"] == "adamh" and aw is not None
               and g["model_family"] == aw["model_family"] and g["parameterization"] == aw["parameterization"]), None)
    ce, cs = (_along_D_curvature(aw, q) if aw else None for q in ("eta_eff_star", "eta_star"))
    out.append(_verdict("η*_eff is straighter in log-log than η* (AdamW, along D)", "eta_eff_star", ce,
                        "eta_star", cs, "c2", "|c2|", "fewer than 3 horizons with η* (see the flags)"))
    ch, cw = (_along_D_curvature(g, "eta_star") if g else None for g in (ah, aw))
    out.append(_verdict("AdamH's η* vs D is closer to log-linear than AdamW's", "adamh", ch, "adamw", cw, "c2",
                        "|c2|", "fewer than 3 horizons with η* for one optimizer"))
    return out


# ------------------------------------------------------------------------------------ the pipeline


def _best_runs(results_path: Path) -> list[str]:
    """Run folder of the lowest-loss ok run per (group, N, D)."""
    df = pq.read_table(results_path).to_pandas()
    ok = df[(df["status"] == "ok") & df["val_loss"].map(lambda v: v is not None and math.isfinite(v))]
    keys = ["model_family", "parameterization", "optimizer", "N", "D"]
    best = ok.loc[ok.groupby(keys)["val_loss"].idxmin()]
    return [str(p) for p in best["run_path"]]


def _stage(msg: str, t0: float) -> None:
    print(f"[study {time.time() - t0:6.1f}s] {msg}", flush=True)


def run_study(cfg: StudyConfig) -> Path:
    """Run (or finish) a study; returns its folder."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    from lrtransfer.data import PrepareConfig, prepare
    from lrtransfer.fit import fit_results, format_table, write_fits
    from lrtransfer.hub import build_model_folder, build_study_folder
    from lrtransfer.plots import plot_all, plot_training
    from lrtransfer.sweep import run_sweep

    disable_progress_bars()  # weight-saving bars of every card would drown the sweep's progress line
    hf_logging.disable_progress_bar()
    if cfg.max_parallel is not None and cfg.max_parallel < 1:
        raise ValueError(f"max_parallel must be >= 1, got {cfg.max_parallel}")
    preset_name, spec = load_preset(cfg.preset)
    study_dir = Path(cfg.out_root) / (cfg.name or preset_name)
    data_dir = study_dir / "data"
    prep_fields = {**(spec.get("data") or {}), "output_dir": str(data_dir)}
    prep_cfg = PrepareConfig(**prep_fields)
    sweeps = _sweep_configs(spec, study_dir, data_dir, cfg.max_parallel)  # validates names before compute
    t0 = time.time()
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(study_dir / "study.yaml", {"study": dataclasses.asdict(cfg), **spec})

    _stage(f"prepare {prep_cfg.source} → {data_dir}", t0)
    prepare(prep_cfg)
    summaries = {}
    for name, sweep_cfg in sweeps.items():
        _stage(f"sweep {name}", t0)
        summaries[name] = run_sweep(sweep_cfg, progress_stream=sys.stderr)
    atomic_write_json(study_dir / "summary.json", {"sweeps": summaries, "wall_time_s": time.time() - t0})
    results = study_dir / "results.parquet"
    _combine_results([Path(s["results"]) for s in summaries.values()], results)

    _stage("fit", t0)
    fits = fit_results(results, **(spec.get("fit") or {}))
    write_fits(fits, study_dir)
    print(format_table(fits))
    expectations = judge_expectations(fits)
    atomic_write_json(study_dir / "expectations.json", expectations)
    for e in expectations:
        print(f"  - {e['expectation']}: {e['verdict']}")

    _stage("plots", t0)
    plot_all(fits, results, study_dir / "plots")
    best = _best_runs(results)
    df = pq.read_table(results).to_pandas()
    for opt in ("adamw", "adamh"):  # η_eff and ‖W‖ over training: the best run at the longest horizon
        rows = df[(df["optimizer"] == opt) & df["run_path"].isin(best)]
        if len(rows):
            plot_training(rows.sort_values(["D", "N"]).iloc[-1]["run_path"], study_dir / "plots")

    if cfg.cards:
        _stage(f"cards: study + {len(best)} best runs", t0)
        for run in best:
            build_model_folder(run, study_dir / "hub" / "models" / Path(run).name, study_dir=study_dir)
        build_study_folder(study_dir, study_dir / "hub" / "study")
    wall = time.time() - t0
    atomic_write_json(study_dir / "summary.json", {"sweeps": summaries, "wall_time_s": wall})
    _stage(f"done in {wall / 60:.1f} min → {study_dir}", t0)
    return study_dir


def main(argv: list[str] | None = None) -> int:
    (cfg,) = parse_config([StudyConfig], argv)
    run_study(cfg)
    return 0
