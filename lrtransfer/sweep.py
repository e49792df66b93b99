"""LR sweeps over (N, D, η): full grid or adaptive search, WSD trunk-and-branch runs, results table.

A sweep spec (`SweepConfig`) names a base training config, a model ladder, horizons D, an LR grid in
log2 units (or an adaptive search on that grid), parameterizations, optimizers and seeds. One
*evaluation* is (parameterization, optimizer, model, seed, η): under WSD every horizon shares the
schedule up to its decay start, so an evaluation trains one trunk through the stable phase, checkpointed
where each horizon's schedule leaves the stable one, and one short decay branch per D (DESIGN §3.3, §5).

The adaptive search walks each (N, D) cell on the grid's lattice (DESIGN §5); requests at the same η
share one trunk, which is stopped at the last decay start needed so far and extended later if needed.

A run's identity is the hash of its resolved config (the trunk's hash stands in for a branch's
`init_from` path; a trunk's stop does not count), its folder is `<output_dir>/runs/<run_id>/`;
finished runs are skipped, interrupted ones resume, and a per-run file lock keeps two sweep processes
off the same run. One row per measured run (branches and standalone runs, not trunks) goes to
`<output_dir>/results.parquet`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from lrtransfer.executors import (
    BUSY,
    InlineExecutor,
    LocalExecutor,
    SlurmExecutor,
    Trainer,
    execute_run,
    is_finished,
    lock_is_free,
    read_result,
    resolve_trainer,
)
from lrtransfer.utils import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_yaml,
    config_hash,
    parse_config,
)

LR_SEARCHES = ("grid", "adaptive")
EXECUTORS = ("local", "slurm")
OPTIMIZERS = ("adamw", "adamh")
START_METHODS = ("spawn", "forkserver", "fork")
GPU_PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12}  # dense bf16 (DESIGN §5)
ENDLESS_STEPS = 1 << 40  # horizon of the "stable phase forever" schedule a trunk follows

RESULT_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("config_hash", pa.string()),
        ("model_family", pa.string()),
        ("parameterization", pa.string()),
        ("optimizer", pa.string()),
        ("N", pa.int64()),
        ("N_total", pa.int64()),
        ("hidden_size", pa.int64()),
        ("num_hidden_layers", pa.int64()),
        ("D", pa.int64()),
        ("lr", pa.float64()),
        ("seed", pa.int64()),
        ("status", pa.string()),
        ("val_loss", pa.float64()),
        ("eta_eff_mean", pa.float64()),
        ("tokens", pa.int64()),
        ("wall_time_s", pa.float64()),
        ("run_path", pa.string()),
        ("log2_lr", pa.float64()),
        ("trunk_id", pa.string()),
    ]
)


@dataclass
class SweepConfig:
    """A sweep spec. Empty ladder/axis lists fall back to the base config's single value."""

    output_dir: str = field(default="runs/sweep", metadata={"help": "sweep folder: runs/, results.parquet, summary.json"})
    base: dict | None = field(default=None, metadata={"help": "TrainConfig fields shared by every run"})
    base_recipe: str | None = field(default=None, metadata={"help": "YAML of TrainConfig fields (base goes on top)"})
    widths: list[int] = field(default_factory=list, metadata={"help": "hidden sizes of the model ladder"})
    depths: list[int] = field(default_factory=list, metadata={"help": "layers: one value, or one per width"})
    head_dim: int | None = field(default=None, metadata={"help": "heads = width // head_dim; None keeps the base's heads"})
    horizons: list[int] = field(default_factory=list, metadata={"help": "token budgets D"})
    parameterizations: list[str] = field(default_factory=list)
    optimizers: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    lr_search: str = field(default="grid", metadata={"choices": list(LR_SEARCHES)})
    log2_lr_start: float = field(default=-12.0, metadata={"help": "grid: first log2 η; adaptive: lower bound"})
    log2_lr_stop: float = field(default=-4.0, metadata={"help": "grid: last log2 η; adaptive: upper bound"})
    log2_lr_step: float = field(default=1.0, metadata={"help": "grid spacing in log2 units (1 or 0.5)"})
    adaptive_center: float | None = field(
        default=None, metadata={"help": "log2 η where the smallest model's search starts (None: the grid's middle)"}
    )
    adaptive_refine: bool = field(default=False, metadata={"help": "after the walk, evaluate η* ± half a step"})
    trunk_and_branch: bool = field(default=True, metadata={"help": "share the stable phase across horizons"})
    executor: str = field(default="local", metadata={"choices": list(EXECUTORS)})
    max_parallel: int = field(default=1, metadata={"help": "runs at once (local slots / SLURM jobs in flight)"})
    devices: str = field(default="auto", metadata={"help": "local: 'auto', 'cpu' or GPU ids '0,1,...'"})
    runs_per_device: int = field(default=1, metadata={"help": "local GPUs: concurrent runs per GPU"})
    start_method: str = field(default="spawn", metadata={"help": "local workers: spawn (CUDA-safe) | forkserver | fork",
                                                         "choices": list(START_METHODS)})
    trainer: str = field(default="lrtransfer.sweep:train_run", metadata={"help": "'module:function'(config dict) -> result"})
    retry_failed: bool = field(default=False, metadata={"help": "train runs whose result is 'failed' again"})
    poll_s: float = field(default=1.0, metadata={"help": "seconds between checks of running jobs and busy locks"})
    slurm_cluster: str | None = field(default=None, metadata={"help": "submitit cluster: None (auto), slurm, local, debug"})
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_timeout_min: int = 240
    slurm_gpus_per_run: int = field(default=1, metadata={"help": ">1: accelerate launch inside the job"})
    slurm_cpus_per_run: int = 8
    slurm_mem_gb: int | None = None
    accelerate_config: str | None = field(default=None, metadata={"help": "accelerate config for multi-GPU runs"})


@dataclass
class PlanArgs:
    mfu: float = field(default=0.4, metadata={"help": "model FLOPs utilization assumed for GPU-hours"})
    gpu: str = field(default="h100", metadata={"choices": list(GPU_PEAK_FLOPS)})
    json: bool = field(default=False, metadata={"help": "print the plan as JSON"})


@dataclass
class Model:
    """One rung of the ladder, with its sizes from a meta-device build (no weights allocated)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    N: int = 0
    N_total: int | None = 0


@dataclass
class RunSpec:
    """One run to execute: a trunk (stable phase only), a decay branch, or a standalone run."""

    run_id: str
    config_hash: str
    kind: str
    config: dict[str, Any]
    tokens: int  # tokens this run itself trains (a branch's trunk part is not counted)
    trunk_id: str | None = None
    cell: dict[str, Any] | None = None  # row fields; None for trunks


# ---------------------------------------------------------------------------------------------------
# Spec -> validated sweep


def train_run(config: dict[str, Any]) -> dict[str, Any]:
    """The default trainer: `lrtransfer.train.run_training` on a config dict."""
    from lrtransfer.train import TrainConfig, run_training

    return run_training(TrainConfig(**config))


def _train_config_defaults() -> dict[str, Any]:
    from lrtransfer.train import TrainConfig

    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _resolve(fields: dict[str, Any]) -> dict[str, Any]:
    """A run's full TrainConfig as a plain dict (defaults filled in): what the trainer gets and the hash covers."""
    from lrtransfer.train import TrainConfig

    return json.loads(json.dumps(dataclasses.asdict(TrainConfig(**fields)), default=str))


def _validate_run(run: dict[str, Any]) -> None:
    """The trainer's own validation (fields, data size, schedule), before any compute."""
    from lrtransfer.train import TrainConfig, validate_config

    validate_config(TrainConfig(**{**run, "output_dir": os.devnull, "init_from": None}))


def _base_config(cfg: SweepConfig) -> dict[str, Any]:
    """base_recipe's fields with `base` on top; unknown fields are an error naming them."""
    merged: dict[str, Any] = {}
    if cfg.base_recipe is not None:
        path = Path(cfg.base_recipe)
        if not path.is_file():
            raise ValueError(f"base_recipe={cfg.base_recipe!r}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"base_recipe={cfg.base_recipe!r}: expected a mapping of TrainConfig fields")
        merged.update(loaded)
    if cfg.base is not None:
        if not isinstance(cfg.base, dict):
            raise ValueError(f"base={cfg.base!r} is invalid; allowed values: a mapping of TrainConfig fields")
        merged.update(cfg.base)
    known = _train_config_defaults()
    unknown = sorted(set(merged) - set(known))
    if unknown:
        raise ValueError(f"base / base_recipe: unknown TrainConfig field(s) {unknown}; allowed fields: {sorted(known)}")
    return {**known, **merged}


def _check_positive_ints(name: str, values: Iterable[Any]) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} contains {v!r}; allowed values: integers > 0")


def _devices(spec: str) -> list[str]:
    if spec == "auto":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [str(i) for i in range(n)] or ["cpu"]
    if spec == "cpu":
        return ["cpu"]
    ids = [s.strip() for s in spec.split(",") if s.strip()]
    if not ids or not all(s.isdigit() for s in ids):
        raise ValueError(f"devices={spec!r} is invalid; allowed values: 'auto', 'cpu' or GPU ids like '0,1,2,3'")
    return ids


@dataclass
class Sweep:
    """A validated sweep: the resolved base config and every axis, ready to make RunSpecs."""

    cfg: SweepConfig
    base: dict[str, Any]
    models: list[Model]
    horizons: list[int]
    parameterizations: list[str]
    optimizers: list[str]
    seeds: list[int]
    tokens_per_step: int
    grid: list[float]  # log2 η of every grid point (also the adaptive search's bounds and lattice)
    out: Path

    @property
    def groups(self) -> list[tuple[str, str]]:
        return [(p, o) for p in self.parameterizations for o in self.optimizers]

    def log2_lr(self, j: float) -> float:
        return self.cfg.log2_lr_start + j * self.cfg.log2_lr_step


def build_sweep(cfg: SweepConfig, require_data: bool = True) -> Sweep:
    """Validate a spec before any compute; every error names the field and the allowed values.

    With `require_data` (a sweep that will train), each (parameterization, model, horizon) also passes
    the trainer's own validation, which reads the prepared data's manifest; `plan` may run without data.
    """
    if cfg.lr_search not in LR_SEARCHES:
        raise ValueError(f"lr_search={cfg.lr_search!r} is unknown; allowed values: {list(LR_SEARCHES)}")
    if cfg.executor not in EXECUTORS:
        raise ValueError(f"executor={cfg.executor!r} is unknown; allowed values: {list(EXECUTORS)}")
    if cfg.start_method not in START_METHODS:
        raise ValueError(f"start_method={cfg.start_method!r} is unknown; allowed values: {list(START_METHODS)}")
    for name in ("max_parallel", "runs_per_device", "slurm_timeout_min", "slurm_cpus_per_run"):
        _check_positive_ints(name, [getattr(cfg, name)])
    if isinstance(cfg.slurm_gpus_per_run, bool) or not isinstance(cfg.slurm_gpus_per_run, int) or cfg.slurm_gpus_per_run < 0:
        raise ValueError(f"slurm_gpus_per_run={cfg.slurm_gpus_per_run!r} is invalid; allowed values: integers >= 0")
    if not cfg.poll_s > 0:
        raise ValueError(f"poll_s={cfg.poll_s!r} is invalid; allowed values: numbers > 0")
    if cfg.executor == "local":
        _devices(cfg.devices)
    if not (math.isfinite(cfg.log2_lr_step) and cfg.log2_lr_step > 0):
        raise ValueError(f"log2_lr_step={cfg.log2_lr_step!r} is invalid; allowed values: numbers > 0 (e.g. 1 or 0.5)")
    if not (math.isfinite(cfg.log2_lr_start) and math.isfinite(cfg.log2_lr_stop) and cfg.log2_lr_start <= cfg.log2_lr_stop):
        raise ValueError(
            f"log2_lr_start={cfg.log2_lr_start!r}, log2_lr_stop={cfg.log2_lr_stop!r}: allowed values: finite, start <= stop"
        )
    span = (cfg.log2_lr_stop - cfg.log2_lr_start) / cfg.log2_lr_step
    if abs(span - round(span)) > 1e-9:
        raise ValueError(
            f"log2_lr_stop - log2_lr_start = {cfg.log2_lr_stop - cfg.log2_lr_start} is not a multiple of "
            f"log2_lr_step={cfg.log2_lr_step}; allowed values: stop = start + k * step"
        )
    grid = [cfg.log2_lr_start + j * cfg.log2_lr_step for j in range(round(span) + 1)]
    if cfg.adaptive_center is not None and not cfg.log2_lr_start <= cfg.adaptive_center <= cfg.log2_lr_stop:
        raise ValueError(
            f"adaptive_center={cfg.adaptive_center!r} is invalid; allowed values: in "
            f"[log2_lr_start={cfg.log2_lr_start}, log2_lr_stop={cfg.log2_lr_stop}]"
        )
    if cfg.lr_search == "adaptive" and len(grid) < 5:
        raise ValueError(
            f"lr_search='adaptive' needs room for two points on each side of the minimum; the range "
            f"[{cfg.log2_lr_start}, {cfg.log2_lr_stop}] step {cfg.log2_lr_step} has {len(grid)} points; allowed: >= 5"
        )
    if ":" not in cfg.trainer:
        raise ValueError(f"trainer={cfg.trainer!r} is invalid; allowed values: an import path 'module:function'")

    base = _base_config(cfg)
    widths = list(cfg.widths) or [base["hidden_size"]]
    depths = list(cfg.depths) or [base["num_hidden_layers"]]
    _check_positive_ints("widths", widths)
    _check_positive_ints("depths", depths)
    if len(widths) > 1 and len(depths) > 1 and len(widths) != len(depths):
        raise ValueError(
            f"widths has {len(widths)} values and depths {len(depths)}; allowed: one value in either, or equal lengths"
        )
    n = max(len(widths), len(depths))
    widths, depths = widths * (n if len(widths) == 1 else 1), depths * (n if len(depths) == 1 else 1)
    if cfg.head_dim is not None:
        _check_positive_ints("head_dim", [cfg.head_dim])
        bad = [w for w in widths if w % cfg.head_dim]
        if bad:
            raise ValueError(f"widths {bad} are not multiples of head_dim={cfg.head_dim}; allowed values: multiples of it")
    models = []
    for w, d in zip(widths, depths):
        heads = w // cfg.head_dim if cfg.head_dim is not None else base["num_attention_heads"]
        models.append(Model(w, d, heads))
    if len({(m.hidden_size, m.num_hidden_layers) for m in models}) != len(models):
        raise ValueError(f"the model ladder (widths={widths}, depths={depths}) repeats a model; allowed: distinct models")

    horizons = sorted(set(cfg.horizons or [base["total_tokens"]]))
    _check_positive_ints("horizons", horizons)
    tps = int(base["global_batch_size"]) * int(base["seq_len"])
    bad = [d for d in horizons if d % tps]
    if bad:
        raise ValueError(
            f"horizons {bad} are not multiples of the tokens per step global_batch_size*seq_len = {tps}; "
            "allowed values: multiples of it"
        )
    seeds = list(cfg.seeds) or [base["seed"]]
    if len(set(seeds)) != len(seeds) or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds={seeds!r} is invalid; allowed values: distinct integers")
    optimizers = list(cfg.optimizers) or [base["optimizer"]]
    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad or len(set(optimizers)) != len(optimizers):
        raise ValueError(f"optimizers={optimizers!r} is invalid; allowed values: distinct values from {list(OPTIMIZERS)}")
    parameterizations = list(cfg.parameterizations) or [base["parameterization"]]
    if len(set(parameterizations)) != len(parameterizations):
        raise ValueError(f"parameterizations={parameterizations!r} repeats a value; allowed: distinct values")

    sweep = Sweep(cfg, base, models, horizons, parameterizations, optimizers, seeds, tps, grid, Path(cfg.output_dir))
    # Every (parameterization, model, horizon) once through the trainer's checks and the schedule.
    for p in parameterizations:
        for m in models:
            m.N, m.N_total = model_sizes(_run_fields(sweep, p, optimizers[0], m, seeds[0], grid[0], horizons[-1]))
            for d in horizons:
                run = _resolve(_run_fields(sweep, p, optimizers[0], m, seeds[0], grid[0], d))
                if require_data:
                    _validate_run(run)
                prefix_steps(_schedule_key(run), d // tps)
    sweep.models.sort(key=lambda m: (m.N, m.hidden_size, m.num_hidden_layers))
    return sweep


def model_sizes(run: dict[str, Any]) -> tuple[int, int | None]:
    """(N non-embedding, N total) of a run's model, built on the meta device: no weights allocated.

    With prepared data the model is the trainer's own (`train.build_model`); without, the family's
    config from the run's fields, so `plan` works before `prepare` (N total is then None unless the
    base sets `vocab_size`: N does not depend on the vocabulary, the embeddings do).
    """
    import torch

    from lrtransfer.modeling import get_family
    from lrtransfer.train import TrainConfig, build_model, parse_model_overrides, validate_config

    cfg = TrainConfig(**{**run, "output_dir": os.devnull})
    if (Path(cfg.data_dir) / "manifest.json").is_file():
        cfg, _ = validate_config(cfg)
        with torch.device("meta"):
            model = build_model(cfg)
    else:
        config_cls, model_cls = get_family(cfg.model_family)
        optional = {k: getattr(cfg, k) for k in ("initializer_range", "tie_word_embeddings") if getattr(cfg, k) is not None}
        config = config_cls(
            vocab_size=cfg.vocab_size or 64, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads, parameterization=cfg.parameterization,
            max_position_embeddings=cfg.max_position_embeddings or cfg.seq_len,
            base_hidden_size=cfg.base_hidden_size or cfg.hidden_size,
            base_num_layers=cfg.base_num_layers or cfg.num_hidden_layers, **optional, **parse_model_overrides(cfg),
        )
        with torch.device("meta"):
            model = model_cls(config)
        if cfg.vocab_size is None:
            return int(model.num_non_embedding_params()), None
    return int(model.num_non_embedding_params()), int(model.num_parameters())


def _run_fields(sweep: Sweep, param: str, opt: str, m: Model, seed: int, log2_lr: float, D: int) -> dict[str, Any]:
    run = dict(sweep.base)
    run.update(
        parameterization=param, optimizer=opt, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads, seed=seed, lr=float(2.0**log2_lr), total_tokens=int(D),
        resume="auto", init_from=None, stop_at_step=None,
    )  # fmt: skip
    return run


# ---------------------------------------------------------------------------------------------------
# Trunk and branches


def _schedule_key(run: dict[str, Any]) -> tuple:
    return (run["schedule"], int(run["warmup_steps"]), float(run["decay_fraction"]), run.get("decay_steps"),
            run["decay_shape"], float(run["final_lr_ratio"]))  # fmt: skip


@lru_cache(maxsize=4096)
def prefix_steps(schedule: tuple, total_steps: int) -> int:
    """How many leading steps of a horizon's schedule equal the endless (stable-forever) schedule.

    A trunk that follows the endless schedule can stand in for this horizon up to the returned step k:
    the checkpoint after k steps, where the multipliers of steps 0..k (k included: the trainer checks the
    step its branch takes next too) are the endless schedule's. Under WSD, k is the decay start.
    """
    from lrtransfer.optim import lr_multiplier

    kind, warmup, fraction, decay_steps, shape, final = schedule
    kw = dict(kind=kind, warmup_steps=warmup, decay_fraction=fraction, decay_steps=decay_steps,
              decay_shape=shape, final_ratio=final)  # fmt: skip
    endless = dict(kw, decay_steps=None if decay_steps is None else min(decay_steps, ENDLESS_STEPS))
    k = 0
    while k < total_steps and lr_multiplier(k, total_steps=total_steps, **kw) == lr_multiplier(
        k, total_steps=ENDLESS_STEPS, **endless
    ):
        k += 1
    return max(0, min(k, total_steps) - 1)


def _identity(run: dict[str, Any], init_ref: str | None) -> str:
    """Config hash without the folder-dependent fields; a branch names its trunk by hash and step."""
    key = {k: v for k, v in run.items() if k not in ("output_dir", "resume", "init_from")}
    key["init_from"] = init_ref
    return config_hash(key)


def _name(prefix: str, run: dict[str, Any], log2_lr: float, D: int | None) -> str:
    horizon = f"-D{D}" if D is not None else ""
    return (f"{prefix}{run['parameterization']}-{run['optimizer']}-d{run['hidden_size']}-L{run['num_hidden_layers']}"
            f"-lr{log2_lr:+g}-s{run['seed']}{horizon}")  # fmt: skip


def evaluation_specs(
    sweep: Sweep, param: str, opt: str, m: Model, seed: int, log2_lr: float, horizons: Iterable[int] | None = None
) -> list[RunSpec]:
    """The runs measuring one (parameterization, optimizer, model, seed, η) at `horizons` (default: all).

    With trunk-and-branch: a trunk on the config of the horizon sharing most (under WSD the longest; its
    schedule is the endless one up to there), stopped at the last shared step and
    checkpointed at every horizon's shared prefix k_D; a branch per D starts from the checkpoint at k_D
    (a horizon with k_D = 0 shares nothing and runs standalone). Without it, or when no step would be
    shared twice, one standalone run per D. The trunk's identity does not depend on `horizons`: asked
    for a longer horizon later, the same trunk is extended from where it stopped (it checkpoints at
    every horizon's k_D up to its stop, so shorter horizons can still branch from it).
    """
    wanted = sorted(set(sweep.horizons if horizons is None else horizons))
    tps = sweep.tokens_per_step
    runs_dir = sweep.out / "runs"
    sched = _schedule_key(sweep.base)
    shared = {D: prefix_steps(sched, D // tps) for D in sweep.horizons}
    use_trunk = sweep.cfg.trunk_and_branch and sum(shared.values()) - max(shared.values()) > 0
    cell_common = dict(model_family=sweep.base["model_family"], parameterization=param, optimizer=opt,
                       hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers, N=m.N, N_total=m.N_total,
                       lr=float(2.0**log2_lr), log2_lr=log2_lr, seed=seed)  # fmt: skip
    specs: list[RunSpec] = []
    trunk: RunSpec | None = None
    stop = max(shared[D] for D in wanted)
    if use_trunk and stop > 0:
        longest = max(sweep.horizons, key=lambda D: (shared[D], D))
        run = _resolve(_run_fields(sweep, param, opt, m, seed, log2_lr, longest))
        h = _identity({**run, "save_model": False}, None)
        run.update(stop_at_step=stop, checkpoint_steps=sorted({k for k in shared.values() if 0 < k <= stop}),
                   save_model=False)  # fmt: skip
        run_id = f"{_name('trunk-', run, log2_lr, None)}-{h[:8]}"
        run["output_dir"] = str(runs_dir / run_id)
        trunk = RunSpec(run_id, h, "trunk", run, stop * tps)
        specs.append(trunk)
    for D in wanted:
        run = _resolve(_run_fields(sweep, param, opt, m, seed, log2_lr, D))
        k = shared[D] if use_trunk else 0
        if k > 0:
            assert trunk is not None  # k > 0 implies stop > 0
            h = _identity(run, f"{trunk.config_hash}@{k}")
            run["init_from"] = str(Path(trunk.config["output_dir"]) / "checkpoints" / f"step_{k:08d}")
        else:
            h = _identity(run, None)
        run_id = f"{_name('', run, log2_lr, D)}-{h[:8]}"
        run["output_dir"] = str(runs_dir / run_id)
        specs.append(RunSpec(run_id, h, "branch" if k > 0 else "single", run, D - k * tps,
                             trunk.run_id if k > 0 and trunk is not None else None, dict(cell_common, D=D)))  # fmt: skip
    return specs


# ---------------------------------------------------------------------------------------------------
# Running


class Progress:
    """One line per finished run: runs done / total, tokens trained, elapsed and ETA (from the token rate)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.time()
        self.done = self.total = self.reused = self.diverged = self.failed = 0
        self.tokens_done = self.tokens_total = self.tokens_trained = 0

    def add(self, specs: list[RunSpec]) -> None:
        self.total += len(specs)
        self.tokens_total += sum(s.tokens for s in specs)

    def finish(self, spec: RunSpec, result: dict[str, Any], trained: bool) -> None:
        self.done += 1
        self.tokens_done += spec.tokens
        self.tokens_trained += spec.tokens if trained else 0
        self.reused += not trained
        self.diverged += result.get("status") == "diverged"
        self.failed += result.get("status") == "failed"
        elapsed = time.time() - self.start
        left = self.tokens_total - self.tokens_done
        eta = f"{_hms(left * elapsed / self.tokens_trained)}" if self.tokens_trained else "?"
        print(
            f"[sweep] {self.done}/{self.total} runs ({self.reused} not trained: done before or by their trunk; {self.diverged} diverged, "
            f"{self.failed} failed) | tokens {_si(self.tokens_done)}/{_si(self.tokens_total)} | "
            f"elapsed {_hms(elapsed)} | ETA {eta} | {spec.run_id}: {result.get('status')}",
            file=self.stream,
            flush=True,
        )


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def make_executor(sweep: Sweep) -> Any:
    cfg = sweep.cfg
    if cfg.executor == "slurm":
        return SlurmExecutor(
            sweep.out / "slurm", cluster=cfg.slurm_cluster, max_parallel=cfg.max_parallel,
            timeout_min=cfg.slurm_timeout_min, gpus_per_run=cfg.slurm_gpus_per_run,
            cpus_per_run=cfg.slurm_cpus_per_run, mem_gb=cfg.slurm_mem_gb, partition=cfg.slurm_partition,
            account=cfg.slurm_account, poll_s=cfg.poll_s,
        )  # fmt: skip
    devices = _devices(cfg.devices)
    per_device = cfg.max_parallel if devices == ["cpu"] else cfg.runs_per_device
    if min(cfg.max_parallel, len(devices) * per_device) == 1:
        return InlineExecutor()
    return LocalExecutor(devices, cfg.runs_per_device, cfg.max_parallel, cfg.start_method)


class Runner:
    """Executes RunSpecs (trunks before their branches), skipping finished runs, deferring locked ones."""

    def __init__(self, sweep: Sweep, trainer: Trainer | str, executor: Any, progress: Progress,
                 on_result: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.sweep = sweep
        self.trainer = trainer
        self.executor = executor
        self.progress = progress
        self.on_result = on_result or (lambda: None)
        self.results: dict[str, dict[str, Any]] = {}
        self.trained: set[str] = set()
        self.specs: dict[str, RunSpec] = {}

    def _answered(self, spec: RunSpec) -> bool:
        """Settled in this process already (a trunk only up to the stop it was run to)."""
        r = self.results.get(spec.run_id)
        return r is not None and (r.get("status") != "stopped" or is_finished(r, spec.config))

    def _lock(self, spec: RunSpec) -> str:
        return str(self.sweep.out / "locks" / f"{spec.run_id}.lock")

    def _settle(self, spec: RunSpec) -> dict[str, Any] | None:
        """A result without training, when there is one: finished before, or decided by its trunk."""
        run_dir = Path(spec.config["output_dir"])
        previous = read_result(run_dir)
        if is_finished(previous, spec.config):
            return previous
        if previous is not None and previous.get("status") == "failed":
            if not self.sweep.cfg.retry_failed:
                return previous
            os.replace(run_dir / "result.json", run_dir / "result.failed.json")
        if spec.trunk_id is not None:
            trunk = self.results[spec.trunk_id]
            ckpt = Path(spec.config["init_from"])
            if not ckpt.is_dir():
                status = trunk.get("status")
                msg = f"trunk {spec.trunk_id} ended {status!r} before its checkpoint {ckpt.name}"
                if status == "diverged":  # final: the horizon's run diverged in its shared stable phase
                    result = {"status": "diverged", "error": msg, "diverged_in_trunk": spec.trunk_id, "tokens": 0}
                    atomic_write_json(run_dir / "result.json", result)
                    return result
                return {"status": "failed", "error": msg}  # not written: a retried trunk may fix it
        return None

    def run(self, specs: list[RunSpec]) -> dict[str, dict[str, Any]]:
        """Run every spec not already settled in this process; returns all results by run_id."""
        todo = [s for s in specs if not self._answered(s)]
        for s in todo:
            self.specs[s.run_id] = s  # a trunk's latest spec: the stop it must reach now
        self.progress.add(todo)
        todo.sort(key=lambda s: s.kind != "trunk")
        running: dict[Any, RunSpec] = {}
        cfg = self.sweep.cfg
        while todo or running:
            submitted = False
            for spec in list(todo):
                if spec.trunk_id is not None:
                    if spec.trunk_id not in self.specs:
                        raise ValueError(f"run {spec.run_id} branches from trunk {spec.trunk_id}, which is not planned")
                    if not self._answered(self.specs[spec.trunk_id]):
                        continue  # its trunk has not reached the checkpoint yet
                settled = self._settle(spec)
                if settled is not None:
                    todo.remove(spec)
                    self._record(spec, settled, trained=False)
                    continue
                if self.executor.free_slots(len(running)) <= 0:
                    break
                if not lock_is_free(self._lock(spec)):
                    continue  # another sweep process trains it: look again later
                gpus = cfg.slurm_gpus_per_run if cfg.executor == "slurm" else 1
                handle = self.executor.submit(execute_run, spec.config, self._lock(spec), self.trainer, gpus,
                                              cfg.accelerate_config)  # fmt: skip
                running[handle] = spec
                todo.remove(spec)
                submitted = True
            if running:
                for handle in self.executor.wait(list(running), timeout=cfg.poll_s):
                    spec = running.pop(handle)
                    try:
                        result = handle.result()
                    except Exception as e:  # the worker or job died: not finished, resumable next time
                        result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
                    if result.get("status") == BUSY:
                        todo.append(spec)
                        continue
                    self._record(spec, result, trained=True)
            elif todo and not submitted:
                time.sleep(cfg.poll_s)  # everything left is locked by another process or waits for it
        return self.results

    def _record(self, spec: RunSpec, result: dict[str, Any], trained: bool) -> None:
        self.results[spec.run_id] = result
        if trained:
            self.trained.add(spec.run_id)
        self.progress.finish(spec, result, trained)
        self.on_result()


# ---------------------------------------------------------------------------------------------------
# Adaptive search (DESIGN §5)


def _cell_loss(results: list[dict[str, Any]]) -> float:
    """Seed-mean final validation loss; inf when any seed diverged or failed (the point closes its side)."""
    losses = []
    for r in results:
        v = r.get("final_val_loss")
        if r.get("status") != "ok" or v is None or not math.isfinite(float(v)):
            return math.inf
        losses.append(float(v))
    return sum(losses) / len(losses)


class LadderSearch:
    """Adaptive η search for one (parameterization, optimizer) along the model ladder, smallest N first.

    Points live on the grid lattice j (log2 η = log2_lr_start + j·step), bounded by the grid's range.
    Each horizon D of the current model walks on its own: it starts at its center (the given one, or
    the η* at D predicted from the smaller models by a log-linear fit of best log2 η vs log2 N) and
    extends its evaluated interval by one point on each side where its minimum has fewer than two
    evaluated points, until it has two on each side; a diverged point or the range's edge closes a side.
    Then, optionally, j* ± ½. Requests at the same η are merged into one evaluation: one trunk, stopped
    at the last of their decay starts (extended later if a longer horizon needs that η too), and one
    branch per requested horizon.
    """

    def __init__(self, sweep: Sweep, group: tuple[str, str]) -> None:
        self.sweep = sweep
        self.group = group
        self.jmax = len(sweep.grid) - 1
        self.model_idx = 0
        self.best: list[dict[int, float]] = []  # per finished model: D -> best log2 η
        self._start_model()

    @property
    def model(self) -> Model | None:
        return self.sweep.models[self.model_idx] if self.model_idx < len(self.sweep.models) else None

    def _snap(self, log2_lr: float) -> float:
        j = round((log2_lr - self.sweep.cfg.log2_lr_start) / self.sweep.cfg.log2_lr_step)
        return float(min(max(j, 0), self.jmax))

    def _start_model(self) -> None:
        self.evaluated: dict[int, dict[float, float]] = {D: {} for D in self.sweep.horizons}
        self.refined = False
        default = self.sweep.cfg.adaptive_center
        default = self.sweep.grid[self.jmax // 2] if default is None else default
        preds = {D: self._predict(D) for D in self.sweep.horizons} if self.best else {}
        known = [p for p in preds.values() if p is not None]
        fallback = sum(known) / len(known) if known else default
        self.pending = {D: {self._snap(preds.get(D) if preds.get(D) is not None else fallback)}
                        for D in self.sweep.horizons}  # fmt: skip

    def _predict(self, D: int) -> float | None:
        """log2 η* at D for the current model: a log-linear fit of best log2 η vs log2 N over smaller models."""
        pts = [(math.log2(self.sweep.models[i].N), b[D]) for i, b in enumerate(self.best) if D in b]
        if len({x for x, _ in pts}) < 2:
            return pts[-1][1] if pts else None
        n = len(pts)
        mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
        slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        return my + slope * (math.log2(self.model.N) - mx)

    def record(self, j: float, losses: dict[int, float]) -> None:
        for D, loss in losses.items():
            self.evaluated[D][j] = loss

    def _argmin(self, D: int, integer_only: bool = False) -> float | None:
        ev = self.evaluated[D]
        finite = [j for j, v in ev.items() if math.isfinite(v) and (j == int(j) or not integer_only)]
        return min(finite, key=lambda j: (ev[j], j)) if finite else None

    def _walk_needs(self, D: int) -> set[float]:
        ev = self.evaluated[D]
        ints = sorted(j for j in ev if j == int(j))
        lo, hi = ints[0], ints[-1]
        js = self._argmin(D, integer_only=True)
        if js is None:  # every point diverged: walk toward lower η
            return {lo - 1} if lo > 0 else set()
        need = set()
        left = js - lo >= 2 or lo <= 0 or any(not math.isfinite(ev[j]) for j in ints if j < js)
        right = hi - js >= 2 or hi >= self.jmax or any(not math.isfinite(ev[j]) for j in ints if j > js)
        if not left:
            need.add(lo - 1)
        if not right:
            need.add(hi + 1)
        return need

    def _refine_points(self, D: int) -> set[float]:
        js = self._argmin(D, integer_only=True)
        if js is None:
            return set()
        return {j for j in (js - 0.5, js + 0.5) if 0 <= j <= self.jmax} - set(self.evaluated[D])

    def propose(self) -> dict[float, list[int]]:
        """The next evaluations of the current model, η index -> horizons ({} once the ladder is done)."""
        while self.model is not None:
            if self.pending:
                requests, self.pending = self.pending, {}
            else:
                requests = {D: self._walk_needs(D) for D in self.sweep.horizons}
                if not any(requests.values()) and self.sweep.cfg.adaptive_refine and not self.refined:
                    self.refined = True
                    requests = {D: self._refine_points(D) for D in self.sweep.horizons}
            by_point: dict[float, list[int]] = {}
            for D, points in requests.items():
                for j in points:
                    by_point.setdefault(j, []).append(D)
            if by_point:
                return {j: sorted(Ds) for j, Ds in sorted(by_point.items())}
            best = {}
            for D in self.sweep.horizons:
                js = self._argmin(D)
                if js is not None:
                    best[D] = self.sweep.log2_lr(js)
            self.best.append(best)
            self.model_idx += 1
            if self.model is not None:
                self._start_model()
        return {}


# ---------------------------------------------------------------------------------------------------
# Results


def _row(spec: RunSpec, result: dict[str, Any]) -> dict[str, Any]:
    cell = spec.cell or {}

    def num(key: str) -> float:
        v = result.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan

    return {
        "run_id": spec.run_id, "config_hash": str(result.get("config_hash") or spec.config_hash), "model_family": cell["model_family"],
        "parameterization": cell["parameterization"], "optimizer": cell["optimizer"],
        "N": int(result.get("N") or cell["N"]), "N_total": int(result.get("N_total") or cell["N_total"]),
        "hidden_size": cell["hidden_size"], "num_hidden_layers": cell["num_hidden_layers"], "D": cell["D"],
        "lr": cell["lr"], "seed": cell["seed"], "status": str(result.get("status")), "val_loss": num("final_val_loss"),
        "eta_eff_mean": num("eta_eff_mean"), "tokens": int(result.get("tokens") or 0),
        "wall_time_s": num("wall_time_s"), "run_path": spec.config["output_dir"], "log2_lr": cell["log2_lr"],
        "trunk_id": spec.trunk_id or "",
    }  # fmt: skip


def write_results(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """results.parquet (CONTRACTS.md columns + log2_lr, trunk_id), sorted, written atomically."""
    rows = sorted(rows, key=lambda r: (r["model_family"], r["parameterization"], r["optimizer"], r["N"],
                                       r["num_hidden_layers"], r["D"], r["log2_lr"], r["seed"]))  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------------
# The sweep


def _evaluation_key(spec: RunSpec) -> tuple:
    c = spec.cell or {}
    return (c.get("parameterization"), c.get("optimizer"), c.get("hidden_size"), c.get("num_hidden_layers"),
            c.get("seed"), c.get("log2_lr"))  # fmt: skip


def run_sweep(cfg: SweepConfig, trainer: Trainer | None = None, progress_stream: Any = None) -> dict[str, Any]:
    """Run (or finish) a sweep; returns the summary also written to `<output_dir>/summary.json`.

    `trainer` replaces `cfg.trainer` (a callable(config dict) -> result dict; module-level so worker
    processes and SLURM jobs can import it).
    """
    sweep = build_sweep(cfg)
    if trainer is None:
        resolve_trainer(cfg.trainer)  # an import error now, not in every worker
    sweep.out.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(sweep.out / "sweep.yaml", dataclasses.asdict(cfg))
    executor = make_executor(sweep)
    rows: dict[str, RunSpec] = {}
    results_path = sweep.out / "results.parquet"
    last_write = [0.0]

    def write_table(force: bool = False) -> None:
        if force or time.time() - last_write[0] > 5.0:
            write_results(results_path, [_row(s, runner.results[i]) for i, s in rows.items() if i in runner.results])
            last_write[0] = time.time()

    runner = Runner(sweep, trainer if trainer is not None else cfg.trainer, executor, Progress(progress_stream),
                    on_result=write_table)  # fmt: skip
    all_specs: list[RunSpec] = []
    start = time.time()
    try:
        if cfg.lr_search == "grid":
            for p, o in sweep.groups:
                for m in sweep.models:
                    for s in sweep.seeds:
                        for x in sweep.grid:
                            all_specs += evaluation_specs(sweep, p, o, m, s, x)
            rows.update({s.run_id: s for s in all_specs if s.cell is not None})
            runner.run(all_specs)
        else:
            searches = [LadderSearch(sweep, g) for g in sweep.groups]
            while True:  # rounds: every search's next points at once, so they run in parallel
                batch: list[tuple[LadderSearch, float, list[int], list[RunSpec]]] = []
                for search in searches:
                    for j, Ds in search.propose().items():
                        specs = [sp for s in sweep.seeds
                                 for sp in evaluation_specs(sweep, *search.group, search.model, s, sweep.log2_lr(j), Ds)]  # fmt: skip
                        batch.append((search, j, Ds, specs))
                if not batch:
                    break
                specs = [sp for *_, ss in batch for sp in ss]
                all_specs += specs
                rows.update({s.run_id: s for s in specs if s.cell is not None})
                results = runner.run(specs)
                for search, j, Ds, ss in batch:
                    search.record(j, {D: _cell_loss([results[s.run_id] for s in ss if s.cell and s.cell["D"] == D])
                                      for D in Ds})  # fmt: skip
    finally:
        executor.close()
    write_table(force=True)
    tokens: dict[str, int] = {}  # per run folder; a trunk counts once, to its furthest stop
    for s in all_specs:
        tokens[s.run_id] = max(tokens.get(s.run_id, 0), s.tokens)
    statuses = [runner.results[i].get("status") for i in rows]
    summary = {
        "output_dir": str(sweep.out),
        "results": str(results_path),
        "lr_search": cfg.lr_search,
        "runs": len(tokens),
        "trunks": sum(s.kind == "trunk" for s in {s.run_id: s for s in all_specs}.values()),
        "rows": len(rows),
        "evaluations": len(rows),  # measured (N, D, η, seed) cells
        "lr_points": len({_evaluation_key(s) for s in rows.values()}),  # distinct (group, N, η, seed)
        "trained_this_session": len(runner.trained),
        "status_counts": {k: statuses.count(k) for k in sorted(set(map(str, statuses)))},
        "tokens_computed": sum(tokens.values()),
        "tokens_independent": sum(s.cell["D"] for s in rows.values()),
        "wall_time_s": time.time() - start,
    }
    summary["trunk_saving"] = summary["tokens_independent"] / max(1, summary["tokens_computed"])
    atomic_write_json(sweep.out / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    """`lrtransfer sweep --config sweep.yaml [--field value ...]`; exit 1 when some run failed."""
    (cfg,) = parse_config([SweepConfig], argv)
    summary = run_sweep(cfg)
    print(
        f"[sweep] done: {summary['rows']} rows ({summary['lr_points']} LR points), statuses {summary['status_counts']}; "
        f"tokens {_si(summary['tokens_computed'])} computed vs {_si(summary['tokens_independent'])} as independent runs "
        f"({summary['trunk_saving']:.2f}x saving); table {summary['results']}"
    )
    return 1 if summary["status_counts"].get("failed") else 0


# ---------------------------------------------------------------------------------------------------
# Plan


def flops_per_token(m: Model, seq_len: int) -> float:
    """6N + 12·L·d·T (DESIGN §5): weights' forward+backward plus attention scores."""
    return 6.0 * m.N + 12.0 * m.num_hidden_layers * m.hidden_size * seq_len


def _plan_specs(specs: list[RunSpec], sweep: Sweep) -> dict[str, Any]:
    seq_len = int(sweep.base["seq_len"])
    by_key = {(m.hidden_size, m.num_hidden_layers): m for m in sweep.models}
    flops = sum(s.tokens * flops_per_token(by_key[(s.config["hidden_size"], s.config["num_hidden_layers"])], seq_len)
                for s in specs)  # fmt: skip
    rows = [s for s in specs if s.cell is not None]
    computed = sum(s.tokens for s in specs)
    independent = sum(s.cell["D"] for s in rows)
    kinds = [s.kind for s in specs]
    return {"runs": len(specs), "trunks": kinds.count("trunk"), "branches": kinds.count("branch"),
            "standalone": kinds.count("single"), "rows": len(rows), "tokens": computed,
            "tokens_independent": independent, "trunk_saving": independent / max(1, computed), "flops": flops}  # fmt: skip


def plan(cfg: SweepConfig, mfu: float = 0.4, gpu: str = "h100") -> dict[str, Any]:
    """Runs, tokens, FLOPs and GPU-hours of a spec, from its configs alone (nothing runs or allocates).

    Adaptive searches are bounded: at least 5 points per model (its minimum ±2, +2 with refinement), at
    most the whole range (+2 with refinement).
    """
    if gpu not in GPU_PEAK_FLOPS:
        raise ValueError(f"gpu={gpu!r} is unknown; allowed values: {list(GPU_PEAK_FLOPS)}")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu!r} is invalid; allowed values: a number in (0, 1]")
    sweep = build_sweep(cfg, require_data=False)

    def specs_for(n_points: int) -> list[RunSpec]:
        out = []
        for p, o in sweep.groups:
            for m in sweep.models:
                for s in sweep.seeds:
                    for x in sweep.grid[:n_points]:
                        out += evaluation_specs(sweep, p, o, m, s, x)
        return out

    refine = 2 if cfg.adaptive_refine else 0
    cases = {"grid": len(sweep.grid)} if cfg.lr_search == "grid" else {
        "adaptive_min": min(5, len(sweep.grid)) + refine, "adaptive_max": len(sweep.grid) + refine}  # fmt: skip
    out: dict[str, Any] = {
        "lr_search": cfg.lr_search, "gpu": gpu, "mfu": mfu, "tokens_per_step": sweep.tokens_per_step,
        "horizons": sweep.horizons, "log2_lrs": sweep.grid, "seeds": sweep.seeds, "groups": sweep.groups,
        "models": [{"hidden_size": m.hidden_size, "num_hidden_layers": m.num_hidden_layers,
                    "num_attention_heads": m.num_attention_heads, "N": m.N, "N_total": m.N_total,
                    "flops_per_token": flops_per_token(m, int(sweep.base["seq_len"]))} for m in sweep.models],
    }  # fmt: skip
    for name, points in cases.items():
        specs = specs_for(min(points, len(sweep.grid)))
        est = _plan_specs(specs, sweep)
        if points > len(sweep.grid):  # refinement points cost one evaluation each, like grid points
            scale = points / len(sweep.grid)
            est = {k: (v * scale if k in ("runs", "trunks", "branches", "standalone", "rows", "tokens",
                                          "tokens_independent", "flops") else v) for k, v in est.items()}  # fmt: skip
        est["evaluations_per_model"] = points
        est["gpu_hours"] = est["flops"] / (mfu * GPU_PEAK_FLOPS[gpu]) / 3600.0
        out[name] = est
    return out


def plan_main(argv: list[str] | None = None) -> int:
    """`lrtransfer plan --config sweep.yaml [--mfu 0.4 --gpu h100 --json]`."""
    cfg, args = parse_config([SweepConfig, PlanArgs], argv)
    p = plan(cfg, mfu=args.mfu, gpu=args.gpu)
    if args.json:
        print(json.dumps(p, indent=2))
        return 0
    print(f"sweep plan ({p['lr_search']}): {len(p['groups'])} (parameterization, optimizer) group(s), "
          f"{len(p['seeds'])} seed(s), horizons {[_si(d) for d in p['horizons']]}, log2 η {p['log2_lrs'][0]:g}.."
          f"{p['log2_lrs'][-1]:g} ({len(p['log2_lrs'])} points)")  # fmt: skip
    print(f"{'width':>6} {'layers':>6} {'heads':>5} {'N':>12} {'N_total':>12} {'FLOPs/token':>12}")
    for m in p["models"]:
        total = f"{m['N_total']:,}" if m["N_total"] is not None else "(no data)"
        print(f"{m['hidden_size']:>6} {m['num_hidden_layers']:>6} {m['num_attention_heads']:>5} {m['N']:>12,} "
              f"{total:>12} {m['flops_per_token']:>12.3g}")  # fmt: skip
    for name in ("grid", "adaptive_min", "adaptive_max"):
        if name in p:
            e = p[name]
            print(f"{name}: {e['runs']:.0f} runs ({e['trunks']:.0f} trunks, {e['branches']:.0f} branches, "
                  f"{e['standalone']:.0f} standalone; {e['rows']:.0f} table rows), tokens {_si(e['tokens'])} "
                  f"(independent runs: {_si(e['tokens_independent'])}, {e['trunk_saving']:.2f}x saving), "
                  f"FLOPs {e['flops']:.3g}, {e['gpu_hours']:.3g} {p['gpu'].upper()}-hours at MFU {p['mfu']}")  # fmt: skip
    return 0
