"""Hub folders and cards for runs and studies, and publishing them in one commit.

A run becomes a *model folder*: exactly what `from_pretrained` needs (safetensors, config with
`auto_map`, the model's code files, generation config, tokenizer) plus a model card whose
model-index carries the validation loss and perplexity and whose text places the run in the sweep of
its cell. A study becomes a *study folder*: results.parquet, fits.json, plots and a study card.
Folders are built locally first (temp folder, then rename), so publishing is a separate, retryable
step: one `create_repo(exist_ok=True)` and one `create_commit` with the exact files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData

REPO_TYPES = ("model", "dataset")
# What may be uploaded: weights as safetensors, configs/cards/results as text, plots, the model's code,
# tokenizer text files. Anything that can carry a pickle is refused, never skipped silently.
ALLOWED_SUFFIXES = (".safetensors", ".json", ".yaml", ".yml", ".md", ".png", ".parquet", ".py", ".txt", ".jinja")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".dill")
PUBLISHED_RECORD = "published.json"  # written into a run/study folder after a successful push
LICENSE = "apache-2.0"


class PublishError(RuntimeError):
    """The Hub could not be reached or refused the push; nothing local was changed."""


# ----------------------------------------------------------------------------------------------- helpers


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:.{digits}g}"
    return str(x)


def _fmt_lr(x: float | None) -> str:
    """η as a number and as a power of two (sweeps are log2 grids)."""
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        return "–"
    return f"{x:#.3g} (2^{math.log2(x):.2f})"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _human(n: float | int | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


@contextlib.contextmanager
def _atomic_folder(out_dir: Path) -> Iterator[Path]:
    """Yield a temp folder next to `out_dir`; on success it is renamed into place (the previous
    folder, if any, is renamed aside first and then deleted).

    Nobody ever sees a half-built folder, and a failed build leaves the previous folder untouched.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.{os.getpid()}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _published_repo(folder: Path | None, *kinds: str) -> str | None:
    """Markdown link to the repo a previous successful `publish` of this run or study went to, if any.

    kinds: "model" / "stock" for runs, "model" / "dataset" (the repo type) for studies; first found wins.
    """
    path = Path(folder) / PUBLISHED_RECORD if folder is not None else None
    if path is None or not path.is_file():
        return None
    record = _load_json(path)
    for kind in kinds:
        entry = record.get(kind) if isinstance(record, dict) else None
        if isinstance(entry, dict) and entry.get("repo_id"):
            return _repo_link(entry["repo_id"], entry.get("repo_type", "model"))
    return None


def _repo_url(repo_id: str, repo_type: str = "model") -> str:
    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"https://huggingface.co/{prefix}{repo_id}"


def _repo_link(repo_id: str, repo_type: str = "model") -> str:
    return f"[{repo_id}]({_repo_url(repo_id, repo_type)})"


def _write_card(folder: Path, data: ModelCardData, body: str) -> ModelCard:
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n")
    card.save(folder / "README.md")
    return card


# -------------------------------------------------------------------------------------------- run reading


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "result.json").is_file()


def is_study_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "results.parquet").is_file()


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """result.json and config.yaml of a finished run, validated before anything is built."""
    if not is_run_dir(run_dir):
        raise ValueError(f"run_dir={str(run_dir)!r} has no result.json: not a finished run folder")
    result = _load_json(run_dir / "result.json")
    status, loss = result.get("status"), result.get("final_val_loss")
    if status != "ok":
        raise ValueError(f"run {run_dir}: status={status!r}; only runs with status 'ok' get a model folder")
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        raise ValueError(f"run {run_dir}: final_val_loss={loss!r}; a model card needs a finite validation loss")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"run {run_dir}: config.yaml is missing (the run's TrainConfig)")
    config = yaml.safe_load(config_path.read_text()) or {}
    if not (run_dir / "model" / "config.json").is_file():
        raise ValueError(
            f"run {run_dir}: model/ holds no saved model (model/config.json missing); "
            "train it with save_model: true"
        )
    return result, config


def _manifest(config: dict[str, Any]) -> dict[str, Any] | None:
    data_dir = config.get("data_dir")
    if not data_dir or not (Path(data_dir) / "manifest.json").is_file():
        return None
    return _load_json(Path(data_dir) / "manifest.json")


def _dataset_info(config: dict[str, Any], manifest: dict[str, Any] | None) -> dict[str, str | None]:
    """What the validation metrics are measured on, named for the model-index (from the data manifest).

    The validation split is the fixed held-out slice carved by `lrtransfer prepare` before any
    training shard, identical for every run of a study.
    """
    manifest = manifest or {}
    src, prep = manifest.get("source"), manifest.get("config") or {}
    if src == "stdlib":
        return {"type": "python-stdlib", "name": f"Python {manifest.get('python_version', '?')} standard library",
                "config": None, "id": None}
    if src == "fineweb":
        repo, name = prep.get("fineweb_repo", "HuggingFaceFW/fineweb"), prep.get("fineweb_name")
        return {"type": repo, "name": f"FineWeb {name or ''}".strip(), "config": name, "id": repo}
    if src == "local":
        files = prep.get("data_files") or []
        return {"type": "local", "name": f"local files ({', '.join(Path(f).name for f in files[:3])}"
                + (", …)" if len(files) > 3 else ")"), "config": None, "id": None}
    data_dir = config.get("data_dir") or "unknown"
    return {"type": "local", "name": Path(str(data_dir)).name, "config": None, "id": None}


def _find_study(run_dir: Path, run_id: str | None) -> Path | None:
    """The study a run belongs to: the nearest parent whose results.parquet lists this run."""
    import pandas as pd

    for parent in list(run_dir.resolve().parents)[:4]:
        table = parent / "results.parquet"
        if table.is_file() and run_id is not None:
            ids = pd.read_parquet(table, columns=["run_id"])["run_id"]
            if (ids == run_id).any():
                return parent
    return None


def _load_tokenizer(run_dir: Path, config: dict[str, Any]) -> Any:
    """The run's tokenizer: saved next to the model, else the one in its prepared data folder."""
    from transformers import AutoTokenizer

    candidates = [run_dir / "model"] + ([Path(config["data_dir"])] if config.get("data_dir") else [])
    for folder in candidates:
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(folder)
    raise ValueError(
        f"run {run_dir}: no tokenizer in model/ and none in data_dir={config.get('data_dir')!r}; "
        "the published folder must be loadable with AutoTokenizer"
    )


def _check_remote_code(folder: Path) -> list[str]:
    """Every class named in config.json's auto_map must be loadable from files in the folder."""
    from transformers.dynamic_module_utils import get_relative_import_files

    auto_map = _load_json(folder / "config.json").get("auto_map") or {}
    missing = [k for k in ("AutoConfig", "AutoModelForCausalLM") if k not in auto_map]
    if missing:
        raise ValueError(f"{folder}/config.json: auto_map lacks {missing}; got {sorted(auto_map)}")
    files: set[str] = set()
    for ref in auto_map.values():
        ref = ref[0] if isinstance(ref, (list, tuple)) else ref
        module_file = folder / (ref.split("--")[-1].rsplit(".", 1)[0] + ".py")
        if not module_file.is_file():
            raise ValueError(f"{folder}: auto_map names {ref!r} but {module_file.name} is not in the folder")
        files.add(module_file.name)
        files.update(Path(f).name for f in get_relative_import_files(module_file))
    absent = sorted(f for f in files if not (folder / f).is_file())
    if absent:
        raise ValueError(f"{folder}: the model code imports {absent}, which are not in the folder")
    return sorted(files)


def _save_model(model: Any, tokenizer: Any, folder: Path, *, stock: bool) -> None:
    """save_pretrained of model and tokenizer: safetensors, config, generation config, tokenizer files,
    and (unless stock) the code files with auto_map."""
    if stock:
        from lrtransfer import export

        model = export.to_stock(model)
    # Special tokens come from the tokenizer, so generate() stops at EOS and pads without warnings.
    eos = tokenizer.eos_token_id
    ids = {"bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
           "eos_token_id": eos,
           "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos}
    for target in (model.config, getattr(model, "generation_config", None)):
        if target is not None:
            for k, v in ids.items():
                setattr(target, k, v)
    model.save_pretrained(folder)
    from lrtransfer.data import save_tokenizer

    n_ctx = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    save_tokenizer(tokenizer, folder, model_max_length=n_ctx)
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder}: save_pretrained wrote no safetensors weights")
    if not stock:
        _check_remote_code(folder)


# ------------------------------------------------------------------------------------- sweep context


GROUP_KEYS = ("model_family", "parameterization", "optimizer")


def _read_study(study_dir: Path) -> tuple[Any, dict[str, Any] | None]:
    """results.parquet (required) and fits.json (optional: a study may not be fitted yet)."""
    import pandas as pd

    if not is_study_dir(study_dir):
        raise ValueError(f"study_dir={str(study_dir)!r} has no results.parquet: not a study folder")
    results = pd.read_parquet(study_dir / "results.parquet")
    fits_path = study_dir / "fits.json"
    fits = _load_json(fits_path) if fits_path.is_file() else None
    return results, fits


def _find_group(fits: dict[str, Any] | None, key: dict[str, Any]) -> dict[str, Any] | None:
    for group in (fits or {}).get("groups", []):
        if all(group.get(k) == key.get(k) for k in GROUP_KEYS):
            return group
    return None


def _find_cell(group: dict[str, Any] | None, N: int, D: int) -> dict[str, Any] | None:
    for cell in (group or {}).get("cells", []):
        if int(cell["N"]) == int(N) and int(cell["D"]) == int(D):
            return cell
    return None


def _plot_cell(rows: Any, cell: dict[str, Any] | None, run_id: str, path: Path, title: str) -> None:
    """Loss vs log2 η of one (N, D) cell: every run, the seed mean, η* with its interval, this run."""
    import numpy as np
    from matplotlib.figure import Figure

    ok = rows[(rows["status"] == "ok") & np.isfinite(rows["val_loss"].astype(float))]
    fig = Figure(figsize=(5.0, 3.6), dpi=110)
    ax = fig.add_subplot()
    x = np.log2(ok["lr"].astype(float))
    ax.scatter(x, ok["val_loss"], s=14, color="0.55", label="runs")
    mean = ok.groupby("lr")["val_loss"].mean()
    ax.plot(np.log2(mean.index.astype(float)), mean.values, "-", color="C0", label="mean over seeds")
    for lr in rows.loc[rows["status"] == "diverged", "lr"].unique():
        ax.axvline(math.log2(lr), color="C3", ls=":", lw=1)
    if cell and cell.get("quad_coefs") and cell.get("window_lrs"):
        xw = np.log2(np.asarray(cell["window_lrs"], dtype=float))
        xs = np.linspace(xw.min(), xw.max(), 50)
        c0, c1, c2 = cell["quad_coefs"]
        xc = xs - cell["quad_center_log2"]
        ax.plot(xs, c0 + c1 * xc + c2 * xc**2, "--", color="C2", lw=1, label="fitted parabola")
    if cell and cell.get("eta_star"):
        ax.axvline(math.log2(cell["eta_star"]), color="C2", lw=1.5, label="η*")
        lo, hi = cell.get("eta_star_lo"), cell.get("eta_star_hi")
        if lo and hi:
            ax.axvspan(math.log2(lo), math.log2(hi), color="C2", alpha=0.15, lw=0)
    this = ok[ok["run_id"] == run_id]
    if len(this):
        ax.scatter(np.log2(this["lr"].astype(float)), this["val_loss"], marker="*", s=140, color="C1",
                   zorder=5, label="this run")
    ax.set_xlabel("log2 η")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def _sweep_context(result: dict[str, Any], study_dir: Path, folder: Path, study_link: str | None) -> str:
    """Markdown for the run's cell: loss-vs-LR table and plot, η* with interval, the law's prediction."""
    import numpy as np

    results, fits = _read_study(study_dir)
    key = {k: result.get(k) for k in GROUP_KEYS}
    N, D, lr = int(result["N"]), int(result["D"]), float(result["lr"])
    mask = np.ones(len(results), dtype=bool)
    for k, v in key.items():
        mask &= (results[k] == v).to_numpy()
    mask &= (results["N"].astype(int) == N).to_numpy() & (results["D"].astype(int) == D).to_numpy()
    rows = results[mask].sort_values(["lr", "seed"])
    group = _find_group(fits, key)
    cell = _find_cell(group, N, D)
    where = study_link or f"`{study_dir.resolve().name}`"
    out = [
        "## Sweep context",
        "",
        f"This run is one point of the learning-rate sweep in study {where}: cell N = {_human(N)}, "
        f"D = {_human(D)} tokens of the group {key['model_family']} / {key['parameterization']} / "
        f"{key['optimizer']} ({len(rows)} runs in this cell).",
        "",
    ]
    table = []
    for r in rows.itertuples():
        mark = "**this run**" if r.run_id == result.get("run_id") else ""
        eff = None if r.eta_eff_mean is None or not np.isfinite(r.eta_eff_mean) else float(r.eta_eff_mean)
        table.append([_fmt_lr(float(r.lr)), int(r.seed), r.status, _fmt(float(r.val_loss)), _fmt(eff), mark])
    out += [_md_table(["η", "seed", "status", "val loss", "η_eff (mean)", ""], table), ""]
    _plot_cell(rows, cell, str(result.get("run_id")), folder / "plots" / "sweep_cell.png",
               f"{key['model_family']}/{key['parameterization']}/{key['optimizer']}  N={_human(N)}  D={_human(D)}")
    out += ["![validation loss vs learning rate in this cell](plots/sweep_cell.png)", ""]
    if cell is None:
        out += ["The study has no fit for this cell yet (`lrtransfer fit` writes fits.json).", ""]
        return "\n".join(out)
    flags = ", ".join(cell.get("flags") or []) or "none"
    star = cell.get("eta_star")
    if star:
        lo, hi = cell.get("eta_star_lo"), cell.get("eta_star_hi")
        rel = math.log2(lr / star)
        inside = lo is not None and hi is not None and lo <= lr <= hi
        out += [
            f"- **η\\*** of this cell: {_fmt_lr(star)}, 16–84% bootstrap interval [{_fmt_lr(lo)}, {_fmt_lr(hi)}]; "
            f"flags: {flags}.",
            f"- This run's η = {_fmt_lr(lr)} sits {rel:+.2f} log2 units from η\\* "
            f"({'inside' if inside else 'outside'} the interval).",
        ]
    else:
        out += [f"- No η\\* for this cell (flags: {flags}); the best grid point is kept as data."]
    if cell.get("eta_eff_star"):
        out.append(f"- **η\\*_eff** (same fit against each run's mean effective LR): {_fmt_lr(cell['eta_eff_star'])}, "
                   f"interval [{_fmt_lr(cell.get('eta_eff_star_lo'))}, {_fmt_lr(cell.get('eta_eff_star_hi'))}].")
    out += _law_lines(group, N, D, star)
    out.append("")
    return "\n".join(out)


def _predict_linear(fit: dict[str, Any] | None, x: float) -> float | None:
    """y = slope·x + intercept of a line from fits.json (x, y in log2 units)."""
    if not fit or fit.get("slope") is None or fit.get("intercept") is None:
        return None
    return float(fit["slope"]) * x + float(fit["intercept"])


def _joint_text(joint: dict[str, Any], q: str = "η*") -> str | None:
    """log2 η* = c − a·log2 N − b·log2 D with the signs folded in."""
    if any(joint.get(k) is None for k in ("c", "a", "b")):
        return None

    def term(coef: float, var: str) -> str:
        return f" {'−' if coef > 0 else '+'} {abs(coef):.3f}·log2 {var}"

    return f"log2 {q} = {joint['c']:.3f}{term(joint['a'], 'N')}{term(joint['b'], 'D')}"


def _law_lines(group: dict[str, Any] | None, N: int, D: int, star: float | None) -> list[str]:
    """What the fitted η* laws predict at this run's (N, D), next to the cell's own η*.

    The small-scale extrapolation (a line fitted on the smaller scales only) is the question the
    study asks: would the cheap sweep have found this run's η*?
    """
    group = group or {}
    law = (group.get("laws") or {}).get("eta_star") or {}
    extrap = (group.get("extrapolation") or {}).get("eta_star") or {}
    preds: list[tuple[str, float]] = []
    joint = law.get("joint") or {}
    text = _joint_text(joint)
    if text is not None:
        preds.append((f"joint law {text}", joint["c"] - joint["a"] * math.log2(N) - joint["b"] * math.log2(D)))
    for axis, fixed, x, name in (("along_D", N, D, "D"), ("along_N", D, N, "N")):
        entry = (law.get(axis) or {}).get(str(fixed)) or {}
        y = _predict_linear(entry.get("linear"), math.log2(x))
        if y is not None:
            preds.append((f"log-linear law along {name} (all {len(entry.get('scales', []))} scales)", y))
        ex = (extrap.get(axis) or {}).get(str(fixed)) or {}
        if x in (ex.get("heldout_scales") or []):
            y = _predict_linear(ex, math.log2(x))
            if y is not None:
                fit_max = max(ex.get("fit_scales") or [0])
                preds.append((f"line fitted on the small scales only ({name} ≤ {_human(fit_max)})", y))
    lines = []
    for label, y in preds:
        vs = f"; observed η\\* / predicted = {star / 2 ** y:.3g}" if star else ""
        lines.append(f"- The {label} predicts η\\* = {_fmt_lr(2 ** y)} at this scale{vs}.")
    return lines


def _study_reproduce(study_dir: Path, specs: list[str]) -> list[str]:
    """Commands that rerun the study: prepare its data, run each sweep spec, fit, plot, build the cards."""
    lines = ["```bash"]
    prepares, sweeps = [], []
    for spec in specs:
        cfg = yaml.safe_load((study_dir / spec).read_text()) or {}
        data_dir = (cfg.get("base") or {}).get("data_dir") if isinstance(cfg, dict) else None
        prepare = _prepare_command(_manifest({"data_dir": data_dir}))
        if prepare:
            prepare = prepare.replace("--output_dir DATA_DIR", f"--output_dir {data_dir}")
            if prepare not in prepares:
                prepares.append(prepare)
        sweeps.append(f"lrtransfer sweep --config {spec}")
    out = "STUDY"
    lines += prepares + (sweeps or ["lrtransfer study"])
    lines += [f"lrtransfer fit --results {out}/results.parquet --out {out}",
              f"lrtransfer plot --fits {out}/fits.json --results {out}/results.parquet --out {out}/plots",
              f"lrtransfer card {out}", "```", "",
              "STUDY is the sweep's `output_dir` (in the spec); the spec files are in this repo."]
    return lines


# ---------------------------------------------------------------------------------------- model folder

FAMILY_TEXT = {
    "gpt2": "GPT-2 (learned positions, pre-LayerNorm, GELU MLP)",
    "nugpt": "normalized Transformer (nGPT/νGPT: every vector on the unit sphere)",
}


def _schedule_text(config: dict[str, Any]) -> str:
    kind = config.get("schedule", "?")
    parts = [str(kind), f"warmup {config.get('warmup_steps', 0)} steps"]
    if kind == "wsd":
        parts.append(f"decay last {config.get('decay_fraction')} ({config.get('decay_shape')})")
    if "final_lr_ratio" in config:
        parts.append(f"to {config.get('final_lr_ratio')}×η")
    return ", ".join(parts)


def _training_rows(result: dict[str, Any], config: dict[str, Any]) -> list[list[str]]:
    seq_len, batch = config.get("seq_len"), config.get("global_batch_size")
    batch_text = f"{batch} × {seq_len} = {batch * seq_len} tokens" if batch and seq_len else _fmt(batch)
    opt = str(result.get("optimizer", config.get("optimizer")))
    if config.get("weight_decay") is not None:
        opt += f" (weight decay {config.get('weight_decay')}"
        if config.get("beta1") is not None:
            opt += f", β = ({config.get('beta1')}, {config.get('beta2')})"
        opt += ")"
    return [
        ["model family", str(result.get("model_family"))],
        ["parameterization", str(result.get("parameterization"))],
        ["width × depth × heads", f"{result.get('hidden_size')} × {result.get('num_hidden_layers')} × "
         f"{config.get('num_attention_heads', '?')} (base {config.get('base_hidden_size', '?')} × "
         f"{config.get('base_num_layers', '?')})"],
        ["N (non-embedding params)", f"{result.get('N')} ({_human(result.get('N'))})"],
        ["N total", f"{result.get('N_total')} ({_human(result.get('N_total'))})"],
        ["D (tokens)", f"{result.get('D')} ({_human(result.get('D'))}; trained {result.get('tokens')})"],
        ["η (peak LR)", _fmt_lr(result.get("lr"))],
        ["optimizer", opt],
        ["schedule", _schedule_text(config)],
        ["batch", batch_text],
        ["steps", _fmt(result.get("steps"))],
        ["η_eff (mean effective LR, block matrices)", _fmt(result.get("eta_eff_mean"))],
        ["seed", _fmt(result.get("seed"))],
        ["run id / config hash", f"`{result.get('run_id')}` / `{result.get('config_hash')}`"],
        ["wall time", f"{_fmt(result.get('wall_time_s'))} s"],
    ]


# Bookkeeping fields reset for a standalone rerun: where a trajectory starts or pauses is not part of a
# run's identity (train.BOOKKEEPING_FIELDS), so a WSD decay branch reruns as one run with the same run id.
_RERUN_FIELDS = {"init_from": None, "stop_at_step": None, "checkpoint_steps": [], "resume": "auto"}


def _reproduce_config(result: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The run's TrainConfig as a standalone rerun: same identity, fresh output folder, no trunk."""
    rerun = {k: v for k, v in _RERUN_FIELDS.items() if k in config}
    if "output_dir" in config:
        rerun["output_dir"] = f"runs/{result.get('run_id')}"
    return {**config, **rerun}


def _reproduce_lines(result: dict[str, Any], config: dict[str, Any], manifest: dict[str, Any] | None) -> list[str]:
    """The commands that rebuild this run from nothing: prepare the data, then train this config."""
    lines = ["```bash"]
    prepare = _prepare_command(manifest)
    if prepare:
        lines += ["# the data (same tokens and tokenizer; compare the manifest's tokenizer hash)", prepare]
    data_dir = "DATA_DIR" if prepare else str(config.get("data_dir"))
    lines += [
        "# the run: training_config.yaml (in this repo) is its full TrainConfig",
        f"lrtransfer train --config training_config.yaml --data_dir {data_dir}",
        "```",
    ]
    if config.get("init_from"):
        lines += ["", "In the sweep this run was a WSD decay branch started from a shared trunk checkpoint "
                  "(`init_from`). The schedule is a pure function of the step, so the single run above follows "
                  "the same trajectory and gets the same run id."]
    return lines


# PrepareConfig fields that do not change the prepared tokens (data.py leaves them out of its identity).
_PREPARE_SKIP = ("output_dir", "num_proc", "progress", "expected_tokenizer_hash")


def _prepare_command(manifest: dict[str, Any] | None) -> str | None:
    """`lrtransfer prepare ...` from the PrepareConfig recorded in the data manifest, pinned to its tokenizer."""
    cfg = (manifest or {}).get("config")
    if not isinstance(cfg, dict):
        return None
    flags = []
    for k, v in cfg.items():
        if v is None or k in _PREPARE_SKIP or v == []:
            continue
        flags.append(f"--{k} " + (" ".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)))
    if manifest.get("tokenizer_hash"):
        flags.append(f"--expected_tokenizer_hash {manifest['tokenizer_hash']}")
    return "lrtransfer prepare " + " ".join(flags) + " --output_dir DATA_DIR"


def _model_card(result: dict[str, Any], config: dict[str, Any], manifest: dict[str, Any] | None,
                context: str | None, *, stock: bool, repo_name: str,
                study_link: str | None) -> tuple[ModelCardData, str]:
    """Card metadata (model-index with validation loss and perplexity) and the card's markdown body."""
    ds = _dataset_info(config, manifest)
    loss = float(result["final_val_loss"])
    ppl = float(result.get("final_val_ppl") or math.exp(loss))
    evals = [
        EvalResult(task_type="text-generation", task_name="Causal language modeling", dataset_type=ds["type"],
                   dataset_name=ds["name"], dataset_config=ds["config"], dataset_split="validation",
                   metric_type=metric, metric_name=name, metric_value=float(value))
        for metric, name, value in (("loss", "Validation loss (nats/token)", loss),
                                    ("perplexity", "Validation perplexity", ppl))
    ]
    family, param, opt = result.get("model_family"), result.get("parameterization"), result.get("optimizer")
    tags = ["lrtransfer", "learning-rate-transfer", str(family), str(param), str(opt)]
    tags += ["gpt2"] if stock and "gpt2" not in tags else []
    data = ModelCardData(
        license=LICENSE, library_name="transformers", pipeline_tag="text-generation", tags=tags,
        datasets=[ds["id"]] if ds["id"] else None, model_name=repo_name, eval_results=evals,
    )
    prompt = "def main(" if ds["type"] == "python-stdlib" else "The learning rate"
    load = ("model = AutoModelForCausalLM.from_pretrained(repo)" if stock else
            "model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)")
    body = [
        f"# {repo_name}",
        "",
        f"A {FAMILY_TEXT.get(str(family), str(family))} language model, parameterization **{param}**, optimizer "
        f"**{opt}**: one run of a learning-rate transfer study made with lrtransfer. It is a research model: "
        "its purpose is the point it adds to the LR sweep, not text quality.",
        "",
    ]
    if stock:
        body += ["This folder is the stock `GPT2LMHeadModel` export of the run (same logits; no remote code).", ""]
    if study_link:
        body += [f"Study: {study_link}", ""]
    body += [
        "## Evaluation",
        "",
        _md_table(["dataset", "split", "validation loss", "perplexity"],
                  [[ds["name"], "validation (held out before training, same tokens for every run)", _fmt(loss),
                    _fmt(ppl)]]),
        "",
        "## Training",
        "",
        _md_table(["", ""], _training_rows(result, config)),
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'repo = "{repo_name}"',
        "tokenizer = AutoTokenizer.from_pretrained(repo)" if stock else
        "tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)",
        load,
        f'out = model.generate(**tokenizer("{prompt}", return_tensors="pt"), max_new_tokens=20)',
        "print(tokenizer.decode(out[0]))",
        "```",
        "",
    ]
    if not stock:
        body += ["`trust_remote_code=True` runs the model code shipped in this repo (`AutoTokenizer` reads the "
                 "config too, hence the flag there). With `lrtransfer` installed (`import lrtransfer`) the model "
                 "classes are registered with the Auto classes and no remote code is needed.", ""]
    body += ["## Reproduce", "", *_reproduce_lines(result, config, manifest), ""]
    if context:
        body += [context, ""]
    body += [
        "## Files",
        "",
        "safetensors weights, `config.json`" + ("" if stock else " (with `auto_map`), the model code files")
        + ", `generation_config.json`, the tokenizer, `training_config.yaml` (the run's full TrainConfig) and "
        "`training_result.json` (the run's result record).",
    ]
    return data, "\n".join(body)


def build_model_folder(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                       study_dir: str | os.PathLike | None = None, stock: bool = False,
                       repo_name: str | None = None, study_repo: str | None = None) -> Path:
    """Build the Hub folder of one finished run (default `<run_dir>/hub`, or `hub_stock` for the export).

    `study_dir` adds the sweep context of the run's cell (found automatically when a parent folder's
    results.parquet lists the run). `stock=True` (GPT-2 SP only) writes transformers' own
    `GPT2LMHeadModel` instead of the lrtransfer classes. `repo_name` and `study_repo` name the Hub
    repos in the card (defaults: the run id, and the study's recorded publication if any).
    """
    run_dir = Path(run_dir)
    result, config = _read_run(run_dir)
    if stock and (result.get("model_family"), result.get("parameterization")) != ("gpt2", "sp"):
        raise ValueError(
            f"stock=True needs model_family='gpt2' and parameterization='sp' (transformers' GPT2LMHeadModel); "
            f"run {run_dir} has {result.get('model_family')!r}/{result.get('parameterization')!r}"
        )
    study = Path(study_dir) if study_dir is not None else _find_study(run_dir, result.get("run_id"))
    if study is not None and not is_study_dir(study):
        raise ValueError(f"study_dir={str(study)!r} has no results.parquet: not a study folder")
    if study_repo:  # "user/name" (a model repo) or "datasets/user/name"
        is_ds = study_repo.startswith("datasets/")
        study_link = _repo_link(study_repo.removeprefix("datasets/"), "dataset" if is_ds else "model")
    else:
        study_link = _published_repo(study, "model", "dataset")
    if study_link is None and study is not None:
        study_link = f"`{study.resolve().name}` (not published yet)"
    out = Path(out_dir) if out_dir is not None else run_dir / ("hub_stock" if stock else "hub")
    repo_name = repo_name or str(result.get("run_id"))
    manifest = _manifest(config)

    from lrtransfer.modeling import get_family

    if stock:
        from lrtransfer.export import check_stock_compatible
        from lrtransfer.modeling.gpt2 import LRTGPT2Config

        check_stock_compatible(LRTGPT2Config.from_pretrained(run_dir / "model"))
    model = get_family(str(result.get("model_family")))[1].from_pretrained(run_dir / "model")
    tokenizer = _load_tokenizer(run_dir, config)
    with _atomic_folder(out) as tmp:
        _save_model(model, tokenizer, tmp, stock=stock)
        (tmp / "training_config.yaml").write_text(yaml.safe_dump(_reproduce_config(result, config), sort_keys=False))
        (tmp / "training_result.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        context = _sweep_context(result, study, tmp, study_link) if study is not None else None
        data, body = _model_card(result, config, manifest, context, stock=stock, repo_name=repo_name,
                                 study_link=study_link)
        _write_card(tmp, data, body)
    return out


# ---------------------------------------------------------------------------------------- study folder


def _group_name(group: dict[str, Any]) -> str:
    return "/".join(str(group.get(k)) for k in GROUP_KEYS)


def _grid_section(results: Any) -> list[str]:
    """One row per group: the widths, horizons and LR grid that were run, and how the runs ended."""
    rows = []
    for key, g in results.groupby(list(GROUP_KEYS), sort=True):
        lrs = sorted(g["lr"].astype(float).unique())
        widths = sorted(set(zip(g["hidden_size"].astype(int), g["N"].astype(int))))
        status = ", ".join(f"{n} {s}" for s, n in g["status"].value_counts().sort_index().items())
        rows.append([
            "/".join(map(str, key)),
            ", ".join(f"{d} ({_human(n)})" for d, n in widths),
            ", ".join(_human(int(d)) for d in sorted(g["D"].astype(int).unique())),
            f"2^{math.log2(lrs[0]):.1f} … 2^{math.log2(lrs[-1]):.1f} ({len(lrs)} values)",
            str(g["seed"].nunique()),
            f"{len(g)} ({status})",
        ])
    return ["## Grid", "",
            _md_table(["group", "width (N)", "D (tokens)", "η grid", "seeds", "runs"], rows), ""]


def _interval(x: Any, lo: Any, hi: Any, lr: bool = True) -> str:
    """A value with its [16%, 84%] interval; `lr` formats all three as learning rates."""
    f = _fmt_lr if lr else _fmt
    return f(x) if lo is None and hi is None else f"{f(x)} [{f(lo)}, {f(hi)}]"


def _eta_star_section(fits: dict[str, Any]) -> list[str]:
    out = ["## η* per cell", "",
           "η* is the vertex of a quadratic in log2 η around the best grid point; intervals are 16–84% of a "
           "residual bootstrap. η*_eff is the same fit against each run's mean effective LR.", ""]
    for group in fits.get("groups", []):
        rows = [[_human(c["N"]), str(c.get("hidden_size", "–")), _human(c["D"]),
                 _interval(c.get("eta_star"), c.get("eta_star_lo"), c.get("eta_star_hi")),
                 _interval(c.get("eta_eff_star"), c.get("eta_eff_star_lo"), c.get("eta_eff_star_hi")),
                 _fmt(c.get("best_loss")), ", ".join(c.get("flags") or []) or "–"]
                for c in sorted(group.get("cells", []), key=lambda c: (c["N"], c["D"]))]
        out += [f"### {_group_name(group)}", "",
                _md_table(["N", "width", "D", "η* [16%, 84%]", "η*_eff [16%, 84%]", "best loss", "flags"], rows), ""]
    return out


LAW_QUANTITIES = (("eta_star", "η*"), ("eta_eff_star", "η*_eff"))
AXES = (("along_D", "N", "D"), ("along_N", "D", "N"))


def _laws_section(fits: dict[str, Any]) -> list[str]:
    """Per group: the joint law, then per axis the log-linear law, its curvature and its extrapolation."""
    out = ["## Fitted laws", "",
           "y = log2 η\\* (or log2 η\\*_eff) against x = log2 D at fixed N, and against log2 N at fixed D. "
           "slope: the log-linear law, with its 16–84% interval. c2: the curvature (quadratic coefficient; "
           "c2 > 0 bends upward, so small-scale fits under-predict). r2_ood: a line fitted on the small scales "
           "predicts the held-out larger ones (1 is perfect, can be negative; needs ≥ 2 held-out points), "
           "rmse_ood its error in log2 units; ratio: observed / predicted η\\* at the largest scale (> 1: the "
           "law under-predicts).", ""]
    for group in fits.get("groups", []):
        laws, extrap = group.get("laws") or {}, group.get("extrapolation") or {}
        out += [f"### {_group_name(group)}", ""]
        for qkey, qname in LAW_QUANTITIES:
            law = laws.get(qkey) or {}
            text = _joint_text(law.get("joint") or {}, qname)
            if text is not None:
                j = law["joint"]
                out += [f"- joint law: {text} (r2 {_fmt(j.get('r2'), 3)}, rmse {_fmt(j.get('rmse_log2'), 3)} log2)", ""]
            for axis, fixed, var in AXES:
                rows = []
                for at, fit in sorted((law.get(axis) or {}).items(), key=lambda kv: float(kv[0])):
                    lin, quad = fit.get("linear") or {}, fit.get("quadratic") or {}
                    ex = ((extrap.get(qkey) or {}).get(axis) or {}).get(at) or {}
                    fit_on = ex.get("fit_scales") or []
                    rows.append([
                        f"{fixed} = {_human(float(at))}",
                        ", ".join(_human(v) for v in fit.get("scales", [])) or str(fit.get("n")),
                        _interval(lin.get("slope"), lin.get("slope_lo"), lin.get("slope_hi"), lr=False),
                        _fmt(lin.get("r2"), 3),
                        _interval(quad.get("c2"), quad.get("c2_lo"), quad.get("c2_hi"), lr=False),
                        f"{_fmt(ex.get('r2_ood'), 3)} ({var} ≤ {_human(max(fit_on))})" if fit_on else "–",
                        _fmt(ex.get("rmse_ood_log2"), 3),
                        _fmt(ex.get("extrapolation_ratio"), 3),
                        ", ".join(fit.get("flags") or []) or "–",
                    ])
                if rows:
                    out += [f"{qname} along {var}:", "",
                            _md_table([f"fixed {fixed}", f"{var} values", "slope [16%, 84%]", "r2",
                                       "c2 [16%, 84%]", "r2_ood (fit on)", "rmse_ood (log2)", "ratio", "flags"],
                                      rows), ""]
    return out


def _budget_section(fits: dict[str, Any]) -> list[str]:
    """How much of the target's compute a trustworthy extrapolation needs (ρ = C_fit / C_target)."""
    rows = []
    for group in fits.get("groups", []):
        for qkey, qname in LAW_QUANTITIES:
            for axis, fixed, var in AXES:
                b = ((group.get("budget") or {}).get(qkey) or {}).get(axis) or {}
                if not b.get("sweep"):
                    continue
                curve = "; ".join(f"{p['rho']:.3g}: {_fmt(p.get('r2_ood'), 3)}" for p in b["sweep"])
                rows.append([_group_name(group), qname, f"along {var} ({fixed} = {_human(b.get('fixed'))})",
                             _fmt(b.get("budget_to_r2_0.9"), 3), curve])
    if not rows:
        return []
    return ["## Compute budget of the extrapolation", "",
            "r2_ood as a function of ρ = C_fit / C_target (C = 6ND): along D the fit uses the full model at "
            "D ≤ ρ·D_target, along N models N ≤ ρ·N_target at full D. budget_to_r2_0.9 is the smallest ρ "
            "reaching r2_ood ≥ 0.9 (lower is better).", "",
            _md_table(["group", "quantity", "axis", "budget_to_r2_0.9", "r2_ood by ρ"], rows), ""]


def _comparisons_section(fits: dict[str, Any]) -> list[str]:
    """The study's questions: SP vs μP, nGPT vs νGPT, AdamW vs AdamH, side by side."""
    rows = []
    for comp in fits.get("comparisons", []):
        rest = "/".join(str(comp.get(k)) for k in GROUP_KEYS if k != comp.get("field"))
        for qkey, qname in LAW_QUANTITIES:
            for axis, _, var in AXES:
                a = ((comp.get(qkey) or {}).get("a") or {}).get(axis) or {}
                b = ((comp.get(qkey) or {}).get("b") or {}).get(axis) or {}
                if not any(v is not None for v in (*a.values(), *b.values())):
                    continue
                metrics = ("range_log2_mean", "slope_mean", "c2_mean", "r2_ood_full", "budget_to_r2_0.9")
                rows.append([f"{comp['a']} vs {comp['b']} ({rest})", f"{qname} along {var}",
                             *(f"{_fmt(a.get(k), 3)} / {_fmt(b.get(k), 3)}" for k in metrics)])
    if not rows:
        return []
    return ["## Comparisons", "",
            "Each cell reads a / b. range: how far η\\* moves across the axis (log2 units; smaller means the LR "
            "transfers); c2: mean curvature; r2_ood at the full scale; budget_to_r2_0.9.", "",
            _md_table(["pair", "quantity", "range (log2)", "slope", "c2", "r2_ood", "budget_to_r2_0.9"], rows), ""]


def _parquet_path(name: str, repo_type: str) -> str:
    """Where `load_dataset("parquet")` finds the results: the Hub repo (hf:// paths) once named, else local."""
    if "/" not in name:
        return "results.parquet"
    return f"hf://{'datasets/' if repo_type == 'dataset' else ''}{name}/results.parquet"


def _study_body(study_dir: Path, name: str, results: Any, fits: dict[str, Any] | None, plots: list[str],
                specs: list[str], links: list[list[str]], repo_type: str) -> str:
    n_ok = int((results["status"] == "ok").sum())
    out = [f"# {name}", "",
           f"A learning-rate transfer study made with lrtransfer: {len(results)} training runs ({n_ok} ok) over "
           "model size N, token budget D and learning rate η, the optimal learning rate η* of every (N, D) cell, "
           "and scaling laws for η* and for the effective learning rate η*_eff.", "",
           "Files: `results.parquet` (one row per run), `fits.json` (every fit with the run ids and config "
           "hashes it used), `plots/`.", "",
           "```python",
           "from datasets import load_dataset",
           "",
           f'results = load_dataset("parquet", data_files="{_parquet_path(name, repo_type)}")["train"]',
           "```", ""]
    out += _grid_section(results)
    out += _expectations_section(study_dir)
    if fits is None:
        out += ["The study has not been fitted yet: run `lrtransfer fit` to add η* and the laws.", ""]
    else:
        out += (_comparisons_section(fits) + _eta_star_section(fits) + _laws_section(fits)
                + _budget_section(fits))
    if plots:
        out += ["## Plots", ""]
        out += [f"![{Path(p).stem.replace('_', ' ')}]({p})" for p in plots] + [""]
    out += ["## Reproduce", "", *_study_reproduce(study_dir, specs), ""]
    out += ["## Models", ""]
    if links:
        out += [_md_table(["group", "N", "D", "η", "val loss", "repo"], links), ""]
    else:
        out += ["No run of this study has been published yet (`lrtransfer publish RUN --repo-id user/name`).", ""]
    return "\n".join(out)


def _expectations_section(study_dir: Path) -> list[str]:
    """What `lrtransfer study` judged from this study's own numbers (DESIGN §8), if it ran."""
    path = study_dir / "expectations.json"
    if not path.is_file():
        return []
    rows = [[e["expectation"], {True: "held", False: "did not hold", None: "undetermined"}[e["held"]],
             e["verdict"].split(": ", 1)[-1]] for e in _load_json(path)]  # fmt: skip
    return ["## Did the expectations hold?", "",
            "Judged from this study's fits (`expectations.json`); tiny models and short runs, so read them as a "
            "demonstration of the pipeline, not as evidence about large-scale training.", "",
            _md_table(["expectation", "result", "figures"], rows), ""]


def _study_plots(study_dir: Path, exclude: Path) -> list[Path]:
    """PNG plots of the study (its plots/ folder and top level), never those inside built Hub folders."""
    found = sorted(study_dir.glob("*.png")) + sorted((study_dir / "plots").rglob("*.png"))
    exclude = exclude.resolve()
    found = [p for p in found if exclude not in p.resolve().parents]
    # the card reads top-down: loss-vs-LR curves, then the η* laws, then extrapolation, then the rest
    order = ("lr_curves", "eta_star", "eta_eff", "r2_ood")
    return sorted(found, key=lambda p: next((i for i, o in enumerate(order) if p.name.startswith(o)), len(order)))


def _model_links(results: Any, study_dir: Path, model_repos: dict[str, str] | None) -> list[list[str]]:
    """Published model repos of the study's runs: given explicitly, or recorded by `lrtransfer publish`."""
    links = []
    for r in results.sort_values(list(GROUP_KEYS) + ["N", "D", "lr", "seed"]).itertuples():
        repos = [_repo_link(model_repos[r.run_id])] if model_repos and r.run_id in model_repos else []
        run_path = Path(str(r.run_path)) if getattr(r, "run_path", None) else None
        if run_path is not None and not run_path.is_absolute():
            run_path = study_dir / run_path
        if run_path is not None and run_path.is_dir():
            for kind in ("model", "stock"):
                link = _published_repo(run_path, kind)
                if link and link not in repos:
                    repos.append(link)
        if repos:
            links.append([f"{r.model_family}/{r.parameterization}/{r.optimizer}", _human(int(r.N)),
                          _human(int(r.D)), _fmt_lr(float(r.lr)), _fmt(float(r.val_loss)), ", ".join(repos)])
    return links


def build_study_folder(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                       repo_type: str = "model", repo_name: str | None = None,
                       model_repos: dict[str, str] | None = None) -> Path:
    """Build the Hub folder of a study (default `<study_dir>/hub`): results, fits, plots, study card.

    The card is a ModelCard so sweep results are shared like models; `repo_type="dataset"` adds the
    `configs` metadata that makes the Hub's viewer show results.parquet. `model_repos` maps run ids to
    Hub repos for the links (runs published with `lrtransfer publish` are found without it).
    """
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type={repo_type!r}; allowed values: {list(REPO_TYPES)}")
    study_dir = Path(study_dir)
    results, fits = _read_study(study_dir)
    missing = sorted({"run_id", "status", "lr", "N", "D", "val_loss", "seed", "hidden_size", *GROUP_KEYS}
                     - set(results.columns))
    if missing:
        raise ValueError(f"{study_dir}/results.parquet lacks columns {missing}")
    out = Path(out_dir) if out_dir is not None else study_dir / "hub"
    name = repo_name or study_dir.resolve().name
    with _atomic_folder(out) as tmp:
        shutil.copyfile(study_dir / "results.parquet", tmp / "results.parquet")
        if fits is not None:
            shutil.copyfile(study_dir / "fits.json", tmp / "fits.json")
        plots = []
        for src in _study_plots(study_dir, out):
            rel = Path("plots") / (src.relative_to(study_dir / "plots") if src.is_relative_to(study_dir / "plots")
                                   else src.name)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
            plots.append(rel.as_posix())
        specs = sorted(p.name for p in study_dir.glob("*.yaml"))
        for extra_file in [*specs, "summary.json", "expectations.json"]:
            if (study_dir / extra_file).is_file():
                shutil.copyfile(study_dir / extra_file, tmp / extra_file)
        links = _model_links(results, study_dir, model_repos)
        body = _study_body(study_dir, name, results, fits, plots, specs, links, repo_type)
        groups = sorted({str(v) for k in GROUP_KEYS for v in results[k].unique()})
        # a dataset repo's viewer shows results.parquet through the `configs` metadata
        extra = {"configs": [{"config_name": "default", "data_files": "results.parquet"}]} if repo_type == "dataset" else {}
        data = ModelCardData(license=LICENSE, tags=["lrtransfer", "learning-rate-transfer", "scaling-laws", *groups],
                             model_name=name, **extra)
        _write_card(tmp, data, body)
    return out


# -------------------------------------------------------------------------------------------- publish


def _operations(folder: Path) -> list[CommitOperationAdd]:
    """One add per file, in a stable order; refuses pickles and any type outside the allowlist.

    Hidden entries (names starting with '.') are local bookkeeping (temp files, caches) and are not
    part of the folder's content.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    pickles = [p.relative_to(folder).as_posix() for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    other = [p.relative_to(folder).as_posix() for p in files
             if p.suffix.lower() not in PICKLE_SUFFIXES and p.suffix.lower() not in ALLOWED_SUFFIXES]
    if pickles or other:
        msg = [f"refusing to publish {folder}:"]
        if pickles:
            msg.append(f"pickle-capable files {pickles} (weights must be safetensors)")
        if other:
            msg.append(f"files of types outside the allowlist {other}")
        msg.append(f"allowed suffixes: {list(ALLOWED_SUFFIXES)}")
        raise ValueError("; ".join(msg))
    if not files:
        raise ValueError(f"refusing to publish {folder}: the folder holds no files")
    if not (folder / "README.md").is_file():
        raise ValueError(f"refusing to publish {folder}: no README.md card (build it with `lrtransfer card`)")
    return [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files]


def publish(folder: str | os.PathLike, repo_id: str, *, private: bool = False, repo_type: str = "model",
            dry_run: bool = False, api: HfApi | None = None,
            commit_message: str | None = None) -> list[CommitOperationAdd]:
    """Push a built folder: `create_repo(exist_ok=True)`, then ONE commit adding exactly its files.

    Returns the operations (sent, or only printed with `dry_run`). Any Hub failure — offline mode,
    no token, HTTP errors — raises `PublishError` with the reason; the local folder is only read, so
    the same call retries later.
    """
    from huggingface_hub.utils import validate_repo_id

    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type={repo_type!r}; allowed values: {list(REPO_TYPES)}")
    try:
        validate_repo_id(repo_id)
    except Exception as e:
        raise ValueError(f"repo_id={repo_id!r} is not a valid Hub repo id ('user/name'): {e}") from e
    if "/" not in repo_id:
        raise ValueError(f"repo_id={repo_id!r} must be 'user/name' or 'org/name'")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder={str(folder)!r} is not a folder")
    ops = _operations(folder)
    message = commit_message or f"lrtransfer: upload {folder.name}"
    if dry_run:
        total = sum(Path(op.path_or_fileobj).stat().st_size for op in ops)
        print(f"dry run: create_repo({repo_id!r}, repo_type={repo_type!r}, private={private}, exist_ok=True)")
        print(f"dry run: create_commit({repo_id!r}, {message!r}) with {len(ops)} operations, {_human(total)}B:")
        for op in ops:
            print(f"  add {op.path_in_repo}  ({Path(op.path_or_fileobj).stat().st_size} bytes, "
                  f"sha256 {op.upload_info.sha256.hex()[:12]})")
        return ops
    api = api if api is not None else HfApi()
    try:
        api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True)
        info = api.create_commit(repo_id, operations=ops, commit_message=message, repo_type=repo_type)
    except Exception as e:  # every Hub-side failure is reported the same way; nothing local changed
        from huggingface_hub.errors import OfflineModeIsEnabled

        reason = ("the Hub is unreachable in offline mode (HF_HUB_OFFLINE=1); unset it and log in "
                  "(`hf auth login`)") if isinstance(e, OfflineModeIsEnabled) else f"{type(e).__name__}: {e}"
        raise PublishError(
            f"publishing {folder} to {repo_type} repo {repo_id!r} failed: {reason}. "
            f"Local files in {folder} are intact; rerun the same command to retry."
        ) from e
    url = getattr(info, "commit_url", None) or _repo_url(repo_id, repo_type)
    print(f"published {len(ops)} files to {_repo_url(repo_id, repo_type)} ({url})")
    return ops


def _record_publication(source: Path, kind: str, repo_id: str, repo_type: str) -> None:
    """Remember where a run/study went, so cards built later link to it (study <-> model repos)."""
    from lrtransfer.utils import atomic_write_json

    path = source / PUBLISHED_RECORD
    record = _load_json(path) if path.is_file() else {}
    record[kind] = {"repo_id": repo_id, "repo_type": repo_type,
                    "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(path, record)


# ------------------------------------------------------------------------------------------------- CLI


def _build(source: Path, out: Path | None, *, stock: bool, study_dir: Path | None, repo_id: str | None,
           study_repo: str | None, repo_type: str = "model") -> Path:
    if is_run_dir(source):
        return build_model_folder(source, out, study_dir=study_dir, stock=stock, repo_name=repo_id,
                                  study_repo=study_repo)
    if is_study_dir(source):
        if stock or study_dir is not None or study_repo is not None:
            raise ValueError("--stock, --study and --study-repo apply to run folders, not to a study folder")
        return build_study_folder(source, out, repo_type=repo_type, repo_name=repo_id)
    raise ValueError(f"{source}: neither a run folder (result.json) nor a study folder (results.parquet)")


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a run folder (has result.json) or a study folder (has results.parquet)")
    parser.add_argument("--out", default=None, help="output folder (default: <source>/hub, hub_stock with --stock)")
    parser.add_argument("--stock", action="store_true", help="GPT-2 SP runs: the stock GPT2LMHeadModel export")
    parser.add_argument("--study", default=None, help="study folder for a run's sweep context (default: found)")
    parser.add_argument("--study-repo", default=None, help="Hub repo id of the run's study, linked in the card")


def card_main(argv: list[str]) -> int:
    """`lrtransfer card RUN_OR_STUDY [--out DIR]`: build the Hub folder and card locally."""
    parser = argparse.ArgumentParser(prog="lrtransfer card", description=card_main.__doc__)
    _common_args(parser)
    parser.add_argument("--repo-id", default=None, help="name the card after this repo id")
    parser.add_argument("--repo-type", default="model", choices=REPO_TYPES)
    args = parser.parse_args(argv)
    try:
        folder = _build(Path(args.source), Path(args.out) if args.out else None, stock=args.stock,
                        study_dir=Path(args.study) if args.study else None, repo_id=args.repo_id,
                        study_repo=args.study_repo, repo_type=args.repo_type)
    except ValueError as e:
        print(f"lrtransfer card: {e}", file=sys.stderr)
        return 2
    print(folder)
    return 0


def publish_main(argv: list[str]) -> int:
    """`lrtransfer publish RUN_OR_STUDY --repo-id user/name [--private] [--dry-run] [--repo-type ...]`.

    Builds the folder from the run or study (a folder that already holds a card is pushed as is),
    then pushes it in one commit.
    """
    parser = argparse.ArgumentParser(prog="lrtransfer publish", description=publish_main.__doc__)
    _common_args(parser)
    parser.add_argument("--repo-id", required=True, help="user/name or org/name")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="build and print the operations; push nothing")
    parser.add_argument("--repo-type", default="model", choices=REPO_TYPES)
    args = parser.parse_args(argv)
    source = Path(args.source)
    try:
        if is_run_dir(source) or is_study_dir(source):
            folder = _build(source, Path(args.out) if args.out else None, stock=args.stock,
                            study_dir=Path(args.study) if args.study else None, repo_id=args.repo_id,
                            study_repo=args.study_repo, repo_type=args.repo_type)
        elif (source / "README.md").is_file():
            folder = source
        else:
            raise ValueError(f"{source}: not a run folder (result.json), a study folder (results.parquet) "
                             "or a built Hub folder (README.md)")
        kind = "study" if is_study_dir(source) else "run" if is_run_dir(source) else "folder"
        publish(folder, args.repo_id, private=args.private, repo_type=args.repo_type, dry_run=args.dry_run,
                commit_message=f"lrtransfer: upload {kind} {source.resolve().name}")
    except ValueError as e:
        print(f"lrtransfer publish: {e}", file=sys.stderr)
        return 2
    except PublishError as e:
        print(f"lrtransfer publish: {e}", file=sys.stderr)
        return 1
    if not args.dry_run and folder != source:
        kind = args.repo_type if is_study_dir(source) else ("stock" if args.stock else "model")
        _record_publication(source, kind, args.repo_id, args.repo_type)
    return 0
