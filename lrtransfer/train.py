"""One training run: prepared token shards -> run folder (config, metrics, checkpoints, result, model).

`accelerate launch [--config_file accelerate_configs/X.yaml] recipes/train.py --config recipes/<family>/<recipe>.yaml`
and `lrtransfer train ...` both end in `run_training(cfg)`, which the sweep also calls in-process.

The run is a pure function of its resolved config: the global batch is fixed in sequences (gradient
accumulation = global batch / (world size x micro batch)), the data order is world-size independent,
the LR schedule is a pure function of the step, and every checkpoint holds model, optimizer (AdamH's R
included), RNG, data position, step and tracker state -- so a resumed run is bitwise the uninterrupted
one, and a WSD decay branch started from a trunk checkpoint is the standalone run with that horizon.

Outcomes (result.json `status`): "ok"; "diverged" (non-finite loss, or EMA loss above the initial loss
by `divergence_margin` after warmup: data, not an error); "stopped" (ended at `stop_at_step`, a trunk);
"failed" (an unexpected exception: `run_training` writes the result with the error and *returns* it,
so a sweep always gets a result; `main` exits 1). Bad configs raise ValueError before any compute.
A finished run (ok / diverged, or stopped at the same step) is never overwritten: calling again with
the same config returns the stored result; a different config in the same folder is a ValueError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from lrtransfer.utils import atomic_write_json, atomic_write_yaml, config_hash, parse_config

MODEL_FAMILY_NAMES = ("gpt2", "nugpt")
OPTIMIZERS = ("adamw", "adamh")
SCHEDULES = ("wsd", "cosine", "constant")
DECAY_SHAPES = ("linear", "1-sqrt", "cosine")
RESUME_MODES = ("auto", "never")
MIXED_PRECISION = ("auto", "no", "bf16")
TRACKERS = ("tensorboard", "trackio", "wandb")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
ACCELERATE_CONFIG_DIR = Path(__file__).resolve().parent.parent / "accelerate_configs"
# Dense bf16 peak FLOP/s per GPU (DESIGN §5; 1979 TFLOP/s is H100's sparse figure).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

# Fields that do not change what a run computes: excluded from its identity (run_id / config_hash).
# micro_batch_size and the launch only change the float summation order; init_from / stop_at_step
# select where a trajectory starts and pauses, not which trajectory it is.
BOOKKEEPING_FIELDS = (
    "output_dir", "resume", "init_from", "stop_at_step", "checkpoint_steps", "checkpoint_every",
    "keep_checkpoints", "cleanup_checkpoints", "save_model", "report_to", "project_name", "log_every",
    "eval_every", "micro_batch_size", "accelerate_config", "compile", "peak_tflops", "progress",
)
# Fields a decay branch must share with the trunk it starts from (everything that shaped the trunk).
_BRANCH_FIELDS = (
    "model_family", "parameterization", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "base_hidden_size", "base_num_layers", "vocab_size", "max_position_embeddings", "initializer_range",
    "tie_word_embeddings", "model_overrides", "attn_implementation", "seq_len", "global_batch_size",
    "optimizer", "lr", "weight_decay", "beta1", "beta2", "eps", "adam_lr", "adam_lr_ratio", "grad_clip",
    "schedule", "warmup_steps", "seed", "mixed_precision", "track_every",
)
CHECKPOINT_META = "checkpoint.json"


@dataclass
class TrainConfig:
    """Everything one run needs; YAML recipes give defaults, CLI flags go on top (HfArgumentParser)."""

    # Model
    model_family: str = field(default="gpt2", metadata={"help": f"one of {MODEL_FAMILY_NAMES}"})
    parameterization: str = field(default="sp", metadata={"help": "gpt2: sp|mup|completep; nugpt: ngpt|nugpt"})
    hidden_size: int = field(default=128, metadata={"help": "width d"})
    num_hidden_layers: int = field(default=2, metadata={"help": "depth L"})
    num_attention_heads: int = field(default=4)
    base_hidden_size: int | None = field(default=None, metadata={"help": "base width (None: hidden_size)"})
    base_num_layers: int | None = field(default=None, metadata={"help": "base depth (None: num_hidden_layers)"})
    vocab_size: int | None = field(default=None, metadata={"help": "model vocab (None: the data's padded vocab)"})
    max_position_embeddings: int | None = field(default=None, metadata={"help": "None: seq_len"})
    initializer_range: float | None = field(default=None, metadata={"help": "None: the family's default"})
    tie_word_embeddings: bool | None = field(default=None, metadata={"help": "None: the family's default"})
    model_overrides: str = field(
        default="", metadata={"help": "JSON object of extra model-config fields, e.g. '{\"depth_alpha\": 0.5}'"}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": f"one of {ATTN_IMPLEMENTATIONS}"})
    # Data
    data_dir: str = field(default="data/stdlib", metadata={"help": "a prepared data folder (lrtransfer prepare)"})
    seq_len: int = field(default=256)
    global_batch_size: int = field(default=32, metadata={"help": "sequences per optimizer step (all ranks)"})
    micro_batch_size: int | None = field(
        default=None, metadata={"help": "sequences per forward per rank (None: global / world size)"}
    )
    total_tokens: int = field(default=0, metadata={"help": "D: training tokens, a multiple of tokens per step"})
    # Optimizer and schedule
    optimizer: str = field(default="adamw", metadata={"help": f"one of {OPTIMIZERS}"})
    lr: float = field(default=1e-3, metadata={"help": "base LR eta (AdamH: the effective LR)"})
    weight_decay: float = field(default=0.1, metadata={"help": "lambda (torch AdamW decays by lr * lambda)"})
    beta1: float = field(default=0.9)
    beta2: float = field(default=0.95)
    eps: float = field(default=1e-8)
    adam_lr: float | None = field(default=None, metadata={"help": "AdamH: LR of the plain-Adam groups"})
    adam_lr_ratio: float = field(default=1.0, metadata={"help": "AdamH: adam_lr = ratio * lr when adam_lr is None"})
    grad_clip: float = field(default=1.0, metadata={"help": "global grad-norm clip (0: off)"})
    schedule: str = field(default="wsd", metadata={"help": f"one of {SCHEDULES}"})
    warmup_steps: int = field(default=0)
    decay_fraction: float = field(default=0.2, metadata={"help": "WSD: decay over the last fraction, in (0, 1]"})
    decay_shape: str = field(default="linear", metadata={"help": f"one of {DECAY_SHAPES}"})
    final_lr_ratio: float = field(default=0.0, metadata={"help": "final LR / peak LR, in [0, 1]"})
    base_steps: int | None = field(
        default=None, metadata={"help": "horizon of the base run: horizon_mult = steps / base_steps (nuGPT)"}
    )
    # Run
    seed: int = field(default=0)
    output_dir: str = field(default="runs/run", metadata={"help": "the run folder"})
    resume: str = field(default="auto", metadata={"help": f"one of {RESUME_MODES}"})
    init_from: str | None = field(
        default=None, metadata={"help": "a checkpoint folder of another run (a WSD decay branch starts there)"}
    )
    stop_at_step: int | None = field(default=None, metadata={"help": "end after this step, status 'stopped'"})
    checkpoint_steps: list[int] = field(default_factory=list, metadata={"help": "steps to checkpoint at (kept)"})
    checkpoint_every: int = field(default=0, metadata={"help": "checkpoint interval in steps (0: off)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "interval checkpoints kept (the newest k)"})
    cleanup_checkpoints: bool = field(
        default=True, metadata={"help": "delete interval checkpoints when the run ends ok/diverged"}
    )
    save_model: bool = field(default=False, metadata={"help": "write the final HF model folder to <run>/model"})
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU) | no | bf16"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the forward + loss"})
    # Evaluation, logging, tracking
    eval_every: int = field(default=0, metadata={"help": "validation interval in steps (0: only at the end)"})
    eval_tokens: int = field(default=131_072, metadata={"help": "validation tokens (the fixed first windows)"})
    log_every: int = field(default=10, metadata={"help": "metrics.jsonl / tracker interval in steps"})
    track_every: int = field(default=10, metadata={"help": "effective-LR tracker interval in steps (0: off)"})
    report_to: list[str] = field(default_factory=list, metadata={"help": f"accelerate trackers from {TRACKERS}"})
    project_name: str = field(default="lrtransfer", metadata={"help": "tracker project name"})
    divergence_margin: float = field(
        default=1.0, metadata={"help": "diverged when the EMA loss exceeds the initial loss by this (nats)"}
    )
    divergence_ema: float = field(default=0.9, metadata={"help": "EMA coefficient of the smoothed loss, in [0, 1)"})
    accelerate_config: str | None = field(
        default=None, metadata={"help": "accelerate_configs/<name>.yaml (or a path): main() launches with it"}
    )
    peak_tflops: float | None = field(default=None, metadata={"help": "peak TFLOP/s for MFU (None: by GPU name)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar (main process)"})


@dataclass
class Plan:
    """What the validated config implies: shapes of the run, derived once, before any compute."""

    world_size: int
    micro_batch_size: int
    grad_accum: int
    tokens_per_step: int
    steps: int
    last_step: int
    horizon_mult: float
    data_fingerprint: str
    run_id: str
    val_tokens: int


# --------------------------------------------------------------------------------------------------
# Validation


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is invalid; allowed values: {allowed}")


def _choice(name: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is unknown; allowed values: {list(allowed)}")


def resolve_accelerate_config(value: str) -> Path:
    """A bare name (`ddp`) means accelerate_configs/ddp.yaml; anything else must be an existing YAML file."""
    shipped = sorted(p.stem for p in ACCELERATE_CONFIG_DIR.glob("*.yaml"))
    path = ACCELERATE_CONFIG_DIR / f"{value}.yaml" if value in shipped else Path(value)
    if not (path.is_file() and path.suffix in (".yaml", ".yml")):
        raise ValueError(f"accelerate_config={value!r}: no such accelerate config; allowed values: {shipped} "
                         "or the path of an existing .yaml file")
    return path


def _tracker_available(name: str) -> bool:
    from accelerate.utils import is_tensorboard_available, is_trackio_available, is_wandb_available

    return {"tensorboard": is_tensorboard_available, "trackio": is_trackio_available,
            "wandb": is_wandb_available}[name]()


def _parameterizations(family: str) -> tuple[str, ...]:
    from lrtransfer.modeling import get_family

    config_cls, _ = get_family(family)
    return tuple(sys.modules[config_cls.__module__].PARAMETERIZATIONS)


def _data_fingerprint(manifest: dict[str, Any]) -> str:
    """Identity of the prepared data (not its path): prepare's own config hash, tokenizer and token counts."""
    keys = ("config_hash", "tokenizer_hash", "vocab_size", "content_hash", "dtype")
    ident = {k: manifest.get(k) for k in keys}
    ident["train_tokens"] = manifest["train"]["tokens"]
    ident["val_tokens"] = manifest["val"]["tokens"]
    return config_hash(ident)


def identity(cfg: TrainConfig, data_fingerprint: str) -> dict[str, Any]:
    """The fields that define what a run computes; run_id = config_hash(identity)."""
    d = dataclasses.asdict(cfg)
    for name in BOOKKEEPING_FIELDS:
        d.pop(name)
    d["data_dir"] = data_fingerprint
    return d


def validate_config(cfg: TrainConfig, *, world_size: int = 1) -> tuple[TrainConfig, Plan]:
    """Check every field, resolve the None defaults, derive the run's shape; ValueError on any mistake.

    Reads only the data manifest, the shard sizes on disk and small JSON/YAML files: no compute.
    """
    from lrtransfer.data import load_manifest, validation_token_count

    c = dataclasses.replace(cfg, checkpoint_steps=list(cfg.checkpoint_steps), report_to=list(cfg.report_to))
    # Names from closed sets.
    _choice("model_family", c.model_family, MODEL_FAMILY_NAMES)
    _choice("parameterization", c.parameterization, _parameterizations(c.model_family))
    _choice("optimizer", c.optimizer, OPTIMIZERS)
    _choice("schedule", c.schedule, SCHEDULES)
    _choice("decay_shape", c.decay_shape, DECAY_SHAPES)
    _choice("resume", c.resume, RESUME_MODES)
    _choice("mixed_precision", c.mixed_precision, MIXED_PRECISION)
    _choice("attn_implementation", c.attn_implementation, ATTN_IMPLEMENTATIONS)
    for name in c.report_to:
        _choice("report_to", name, TRACKERS)
        if not _tracker_available(name):
            raise ValueError(f"report_to={name!r}: the package is not installed "
                             f"(pip install 'lrtransfer[{name}]'); installed trackers: "
                             f"{[t for t in TRACKERS if _tracker_available(t)]}")
    if c.accelerate_config is not None:
        resolve_accelerate_config(c.accelerate_config)
    # Numbers.
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "seq_len", "global_batch_size",
                 "total_tokens", "eval_tokens", "log_every"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            _fail(name, v, "a positive integer")
    for name in ("base_hidden_size", "base_num_layers", "vocab_size", "max_position_embeddings",
                 "micro_batch_size", "base_steps", "stop_at_step"):
        v = getattr(c, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            _fail(name, v, "None or a positive integer")
    for name in ("warmup_steps", "checkpoint_every", "eval_every", "track_every", "seed"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            _fail(name, v, "an integer >= 0")
    if c.keep_checkpoints < 1:
        _fail("keep_checkpoints", c.keep_checkpoints, "an integer >= 1")
    if c.hidden_size % c.num_attention_heads:
        raise ValueError(f"hidden_size={c.hidden_size} is not divisible by num_attention_heads="
                         f"{c.num_attention_heads}; allowed: a multiple of num_attention_heads")
    if not (math.isfinite(c.lr) and c.lr > 0):
        _fail("lr", c.lr, "a finite float > 0")
    if c.adam_lr is not None and not (math.isfinite(c.adam_lr) and c.adam_lr > 0):
        _fail("adam_lr", c.adam_lr, "None or a finite float > 0")
    if not (math.isfinite(c.adam_lr_ratio) and c.adam_lr_ratio > 0):
        _fail("adam_lr_ratio", c.adam_lr_ratio, "a finite float > 0")
    if not (math.isfinite(c.weight_decay) and c.weight_decay >= 0):
        _fail("weight_decay", c.weight_decay, "a finite float >= 0")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(c, name) < 1:
            _fail(name, getattr(c, name), "a float in [0, 1)")
    if not c.eps > 0:
        _fail("eps", c.eps, "a float > 0")
    if not (math.isfinite(c.grad_clip) and c.grad_clip >= 0):
        _fail("grad_clip", c.grad_clip, "a float >= 0 (0 turns clipping off)")
    if not 0 < c.decay_fraction <= 1:
        _fail("decay_fraction", c.decay_fraction, "a float in (0, 1]")
    if not 0 <= c.final_lr_ratio <= 1:
        _fail("final_lr_ratio", c.final_lr_ratio, "a float in [0, 1]")
    if not c.divergence_margin > 0:
        _fail("divergence_margin", c.divergence_margin, "a float > 0")
    if not 0 <= c.divergence_ema < 1:
        _fail("divergence_ema", c.divergence_ema, "a float in [0, 1)")
    if c.peak_tflops is not None and not c.peak_tflops > 0:
        _fail("peak_tflops", c.peak_tflops, "None or a float > 0")
    overrides = parse_model_overrides(c)
    # Data.
    data_dir = Path(c.data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data_dir={c.data_dir!r}: no such folder; allowed: a folder written by `lrtransfer prepare`")
    manifest = load_manifest(data_dir)
    for split in ("train", "val"):
        for shard in manifest[split]["shards"]:
            if not (data_dir / shard["file"]).is_file():
                raise ValueError(f"data_dir={c.data_dir!r}: shard {shard['file']} listed in manifest.json is "
                                 "missing; allowed: a complete prepared folder (re-run `lrtransfer prepare`)")
    data_vocab = int(manifest["vocab_size"])
    if c.vocab_size is None:
        c.vocab_size = data_vocab
    elif c.vocab_size < data_vocab:
        raise ValueError(f"vocab_size={c.vocab_size} is smaller than the data's vocab {data_vocab} "
                         f"(manifest of {c.data_dir}); allowed: None or an integer >= {data_vocab}")
    c.base_hidden_size = c.base_hidden_size or c.hidden_size
    c.base_num_layers = c.base_num_layers or c.num_hidden_layers
    if c.max_position_embeddings is None:
        c.max_position_embeddings = c.seq_len
    elif c.max_position_embeddings < c.seq_len:
        raise ValueError(f"max_position_embeddings={c.max_position_embeddings} is shorter than seq_len={c.seq_len}; "
                         f"allowed: None or an integer >= {c.seq_len}")
    if c.mixed_precision == "auto":
        c.mixed_precision = "bf16" if torch.cuda.is_available() and not _use_cpu() else "no"
    # Batch shape.
    if c.global_batch_size % world_size:
        raise ValueError(f"global_batch_size={c.global_batch_size} is not divisible by the world size "
                         f"{world_size}; allowed: a multiple of {world_size}")
    per_rank = c.global_batch_size // world_size
    micro = c.micro_batch_size or per_rank
    if per_rank % micro:
        raise ValueError(f"micro_batch_size={micro}: global_batch_size {c.global_batch_size} is not divisible by "
                         f"world size {world_size} x micro_batch_size {micro}; allowed: a divisor of {per_rank}")
    c.micro_batch_size = micro
    tokens_per_step = c.global_batch_size * c.seq_len
    if c.total_tokens % tokens_per_step:
        lo = c.total_tokens // tokens_per_step * tokens_per_step
        raise ValueError(f"total_tokens={c.total_tokens} is not a multiple of the tokens per step {tokens_per_step} "
                         f"(global_batch_size x seq_len); allowed: e.g. {max(lo, tokens_per_step)} or "
                         f"{lo + tokens_per_step}")
    windows = max((int(manifest["train"]["tokens"]) - 1) // c.seq_len, 0)
    available = windows // c.global_batch_size * tokens_per_step
    if c.total_tokens > available:
        raise ValueError(f"total_tokens={c.total_tokens} is larger than the data: {c.data_dir} holds {available} "
                         f"training tokens in whole steps of {tokens_per_step}; allowed: <= {available}")
    try:
        val_tokens = validation_token_count(data_dir, seq_len=c.seq_len, world_size=world_size,
                                            max_tokens=c.eval_tokens)
    except ValueError as e:
        raise ValueError(f"eval_tokens={c.eval_tokens}: {e}; allowed: at least seq_len x world size "
                         f"= {c.seq_len * world_size} tokens of validation data") from None
    steps = c.total_tokens // tokens_per_step
    # Schedule.
    if c.warmup_steps >= steps:
        raise ValueError(f"warmup_steps={c.warmup_steps} is not shorter than the run ({steps} steps); "
                         f"allowed: 0 <= warmup_steps < {steps}")
    if c.schedule == "wsd":
        decay_start = steps - round(c.decay_fraction * steps)
        if c.warmup_steps > decay_start:
            raise ValueError(f"warmup_steps={c.warmup_steps} runs into the WSD decay, which starts at step "
                             f"{decay_start} (decay_fraction={c.decay_fraction} of {steps} steps); allowed: "
                             f"warmup_steps <= {decay_start}")
    if c.base_steps is not None and c.base_steps <= 0:
        _fail("base_steps", c.base_steps, "None or a positive integer")
    horizon_mult = steps / c.base_steps if c.base_steps else 1.0
    # Run bookkeeping.
    if c.stop_at_step is not None and c.stop_at_step > steps:
        _fail("stop_at_step", c.stop_at_step, f"None or an integer in [1, {steps}]")
    bad = [s for s in c.checkpoint_steps if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= steps]
    if bad:
        _fail("checkpoint_steps", bad, f"integers in [1, {steps}]")
    c.checkpoint_steps = sorted(set(c.checkpoint_steps))
    fingerprint = _data_fingerprint(manifest)
    run_id = config_hash(identity(c, fingerprint))
    if c.init_from is not None:
        _check_init_from(c, steps, fingerprint)
    out = Path(c.output_dir)
    if c.resume == "never" and out.is_dir() and not _finished_result(out):
        leftovers = [p.name for p in (out / "checkpoints", out / "metrics.jsonl") if p.exists()]
        if leftovers:
            raise ValueError(f"resume='never' but output_dir={c.output_dir!r} holds {leftovers} of an earlier "
                             f"attempt; allowed: resume='auto' (continue it) or a new output_dir")
    _ = overrides
    plan = Plan(world_size=world_size, micro_batch_size=micro, grad_accum=per_rank // micro,
                tokens_per_step=tokens_per_step, steps=steps, last_step=c.stop_at_step or steps,
                horizon_mult=horizon_mult, data_fingerprint=fingerprint, run_id=run_id, val_tokens=val_tokens)
    return c, plan


def parse_model_overrides(c: TrainConfig) -> dict[str, Any]:
    if not c.model_overrides:
        return {}
    try:
        overrides = json.loads(c.model_overrides)
    except json.JSONDecodeError as e:
        raise ValueError(f"model_overrides={c.model_overrides!r} is not valid JSON ({e}); allowed: a JSON object "
                         "of model-config fields") from None
    if not isinstance(overrides, dict):
        _fail("model_overrides", c.model_overrides, "a JSON object of model-config fields")
    from lrtransfer.modeling import get_family

    config_cls, _ = get_family(c.model_family)
    from transformers import PreTrainedConfig

    base = {f.name for f in dataclasses.fields(PreTrainedConfig)} - {"bos_token_id", "pad_token_id"}
    allowed = sorted(f.name for f in dataclasses.fields(config_cls) if f.name not in base)
    owned = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
             "parameterization", "base_hidden_size", "base_num_layers", "initializer_range", "tie_word_embeddings"}
    extra = sorted(k for k in overrides if k not in allowed or k in owned)
    if extra:
        raise ValueError(f"model_overrides: unknown or TrainConfig-owned field(s) {extra}; allowed values: "
                         f"{[k for k in allowed if k not in owned]}")
    return overrides


def _use_cpu() -> bool:
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def _partial_state() -> Any:
    """accelerate's process state; on a machine without a GPU the processes talk over gloo (MULTI_CPU)."""
    from accelerate import PartialState

    return PartialState(cpu=_use_cpu() or not torch.cuda.is_available())


def _finished_result(out: Path) -> dict[str, Any] | None:
    path = out / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("status") in ("ok", "diverged") else None


def _check_init_from(c: TrainConfig, steps: int, fingerprint: str) -> None:
    """A branch starts from a valid checkpoint of a trunk that followed this run's trajectory so far."""
    from lrtransfer.optim import lr_multiplier

    ckpt = Path(c.init_from)
    meta = _read_checkpoint_meta(ckpt)
    if meta is None:
        raise ValueError(f"init_from={c.init_from!r} is not a checkpoint folder (no {CHECKPOINT_META}); allowed: "
                         "<run>/checkpoints/step_XXXXXXXX of a run")
    problem = _verify_checkpoint(ckpt, meta)
    if problem:
        raise ValueError(f"init_from={c.init_from!r}: corrupted checkpoint ({problem})")
    step = int(meta["step"])
    if step >= steps:
        raise ValueError(f"init_from={c.init_from!r} is at step {step}, not before the end of this run ({steps} "
                         f"steps); allowed: a checkpoint at a step < {steps}")
    trunk_cfg_path = ckpt.parent.parent / "config.yaml"
    if not trunk_cfg_path.is_file():
        raise ValueError(f"init_from={c.init_from!r}: the run folder has no config.yaml to check compatibility")
    trunk = yaml.safe_load(trunk_cfg_path.read_text())
    differ = [k for k in _BRANCH_FIELDS if trunk.get(k) != getattr(c, k)]
    trunk_run = ckpt.parent.parent / "run.json"
    trunk_fp = json.loads(trunk_run.read_text()).get("data_fingerprint") if trunk_run.is_file() else None
    if trunk_fp not in (None, fingerprint):
        differ.append("data_dir (other data)")
    trunk_steps = int(trunk["total_tokens"]) // (int(trunk["global_batch_size"]) * int(trunk["seq_len"]))
    trunk_mult = trunk_steps / trunk["base_steps"] if trunk.get("base_steps") else 1.0
    mult = steps / c.base_steps if c.base_steps else 1.0
    if trunk_mult != mult:
        differ.append(f"horizon_mult ({trunk_mult} in the trunk, {mult} here: per-group LRs differ)")
    if differ:
        raise ValueError(f"init_from={c.init_from!r}: the trunk differs from this run in {differ}; allowed: a "
                         "checkpoint of a run with the same model, data, optimizer and warmup")

    def sched(s: int, total: int, cf: dict[str, Any]) -> float:
        return lr_multiplier(s, kind=cf["schedule"], total_steps=total, warmup_steps=cf["warmup_steps"],
                             decay_fraction=cf["decay_fraction"], decay_shape=cf["decay_shape"],
                             final_ratio=cf["final_lr_ratio"])

    mine = dataclasses.asdict(c)
    for s in range(step):  # the trunk's steps 1..step used multipliers 0..step-1
        if sched(s, trunk_steps, trunk) != sched(s, steps, mine):
            raise ValueError(f"init_from={c.init_from!r}: the trunk's LR schedule differs from this run's at step "
                             f"{s + 1} <= {step}; allowed: a trunk checkpoint at or before this run's decay start")


# --------------------------------------------------------------------------------------------------
# Checkpoints: accelerate save_state into a temp folder + a manifest of file hashes, then one rename.


class TrainState:
    """Everything besides model/optimizer/RNG that a resumed run needs (registered for checkpointing)."""

    def __init__(self, loader: Any, tracker: Any | None) -> None:
        self.loader, self.tracker = loader, tracker
        self.step = 0
        self.initial_loss: float | None = None
        self.ema_loss: float | None = None
        self.elapsed_s = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "initial_loss": self.initial_loss, "ema_loss": self.ema_loss,
                "elapsed_s": self.elapsed_s, "loader": self.loader.state_dict(),
                "tracker": self.tracker.state_dict() if self.tracker is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.initial_loss, self.ema_loss = state["initial_loss"], state["ema_loss"]
        self.elapsed_s = float(state["elapsed_s"])
        self.loader.load_state_dict(state["loader"])
        if self.tracker is not None and state["tracker"] is not None:
            self.tracker.load_state_dict(state["tracker"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_checkpoint_meta(ckpt: Path) -> dict[str, Any] | None:
    try:
        return json.loads((ckpt / CHECKPOINT_META).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _verify_checkpoint(ckpt: Path, meta: dict[str, Any] | None = None) -> str | None:
    """None when every file listed at save time is there with its size and sha256; else what is wrong."""
    meta = meta if meta is not None else _read_checkpoint_meta(ckpt)
    if meta is None:
        return f"{CHECKPOINT_META} missing or unreadable"
    for rel, info in meta.get("files", {}).items():
        p = ckpt / rel
        if not p.is_file():
            return f"{rel} missing"
        if p.stat().st_size != info["size"]:
            return f"{rel} has {p.stat().st_size} bytes, {info['size']} when saved"
        if _sha256(p) != info["sha256"]:
            return f"{rel} sha256 differs from the one recorded at save time"
    return None


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints of a run (step_XXXXXXXX with a meta file), oldest first."""
    root = run_dir / "checkpoints"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit():
                found.append((int(p.name[5:]), p))
    return sorted(found)


def _find_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that verifies; corrupted newer ones are reported and moved aside (`*.corrupt`)."""
    for step, ckpt in reversed(_checkpoints(run_dir)):
        problem = _verify_checkpoint(ckpt)
        if problem is None:
            return ckpt
        print(f"[lrtransfer] checkpoint {ckpt} is corrupted ({problem}); falling back to the previous one",
              file=sys.stderr, flush=True)
        ckpt.rename(ckpt.with_name(f"{ckpt.name}.corrupt-{int(time.time())}"))
        del step
    return None


# --------------------------------------------------------------------------------------------------
# Helpers of the loop


def _peak_flops(cfg: TrainConfig) -> float | None:
    if cfg.peak_tflops is not None:
        return cfg.peak_tflops * 1e12
    if not torch.cuda.is_available() or _use_cpu():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def flops_per_token(n_matmul: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """Training FLOPs per token, 6N + 12·L·d·T (DESIGN §5): weights x 6 plus attention scores/values."""
    return 6.0 * n_matmul + 12.0 * num_layers * hidden_size * seq_len


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to `step` (a resumed run rewrites the rest); a torn last line is dropped."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= step:
            keep.append(line)
    from lrtransfer.utils import atomic_write_text

    atomic_write_text(path, "".join(k + "\n" for k in keep))


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from lrtransfer.data import load_manifest
    from lrtransfer.modeling import get_family

    config_cls, _ = get_family(cfg.model_family)
    kwargs: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, max_position_embeddings=cfg.max_position_embeddings,
        parameterization=cfg.parameterization, base_hidden_size=cfg.base_hidden_size,
        base_num_layers=cfg.base_num_layers, eos_token_id=load_manifest(cfg.data_dir)["eos_token_id"],
    )
    if cfg.initializer_range is not None:
        kwargs["initializer_range"] = cfg.initializer_range
    if cfg.tie_word_embeddings is not None:
        kwargs["tie_word_embeddings"] = cfg.tie_word_embeddings
    kwargs.update(parse_model_overrides(cfg))
    config = config_cls(**kwargs)
    return AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation)


def _reset_accelerate_state() -> None:
    """Let the next in-process run build its own Accelerator (e.g. with another precision)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


# --------------------------------------------------------------------------------------------------
# The run


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train one run to its result.json (see the module docstring for statuses and re-runs)."""
    world_size = _partial_state().num_processes
    cfg, plan = validate_config(cfg, world_size=world_size)
    out = Path(cfg.output_dir)
    existing = _existing_result(cfg, plan, out)
    if existing is not None:
        return existing
    try:
        return _Run(cfg, plan).run()
    finally:
        _reset_accelerate_state()


def _existing_result(cfg: TrainConfig, plan: Plan, out: Path) -> dict[str, Any] | None:
    """The stored result of this very run when it is finished; a ValueError when the folder is another run's."""
    run_path, cfg_path = out / "run.json", out / "config.yaml"
    if run_path.is_file() and cfg_path.is_file():
        stored_id = json.loads(run_path.read_text()).get("run_id")
        stored = yaml.safe_load(cfg_path.read_text()) or {}
        if stored_id != plan.run_id:
            theirs = {k: v for k, v in stored.items() if k not in BOOKKEEPING_FIELDS}
            mine = identity(cfg, plan.data_fingerprint)
            differ = sorted(k for k in mine if k != "data_dir" and theirs.get(k) != mine[k])
            raise ValueError(f"output_dir={cfg.output_dir!r} holds run {stored_id}, whose config differs "
                             f"in {differ or ['data_dir']}; allowed: a new output_dir (a run folder is never reused "
                             "for another config)")
    path = out / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result.get("status") in ("ok", "diverged") or (
        result.get("status") == "stopped" and result.get("steps") == plan.last_step
    ):
        if _partial_state().is_main_process:
            print(f"[lrtransfer] {out} is finished ({result['status']}); returning its result.json", flush=True)
        return result
    return None


class _Run:
    """One run's objects and loop; a class only to keep the pieces of state together."""

    def __init__(self, cfg: TrainConfig, plan: Plan) -> None:
        self.cfg, self.plan = cfg, plan
        self.out = Path(cfg.output_dir)
        self.t_start = time.time()

    # ---- setup
    def _setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        from lrtransfer.data import TokenLoader
        from lrtransfer.optim import EffectiveLRTracker, build_optimizer, build_scheduler

        cfg, plan = self.cfg, self.plan
        self.acc = acc = Accelerator(
            mixed_precision=cfg.mixed_precision, cpu=_use_cpu() or not torch.cuda.is_available(),
            log_with=cfg.report_to or None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
        )
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and acc.distributed_type.value != "FSDP":
            print(f"[lrtransfer] warning: an FSDP launch, but accelerate runs {acc.distributed_type.value} "
                  "(accelerate enables FSDP on GPUs/accelerators only)", file=sys.stderr, flush=True)
        if acc.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        set_seed(cfg.seed)
        model = build_model(cfg)
        self.normalize = getattr(model, "normalize_weights", None) is not None
        if self.normalize:
            model.normalize_weights()
        self.n_params = model.num_non_embedding_params()
        self.n_total = model.num_parameters()
        groups = model.param_groups(horizon_mult=plan.horizon_mult)
        optimizer = build_optimizer(
            groups, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps, adam_lr=cfg.adam_lr, adam_lr_ratio=cfg.adam_lr_ratio,
        )
        self.sched_kwargs = dict(kind=cfg.schedule, total_steps=plan.steps, warmup_steps=cfg.warmup_steps,
                                 decay_fraction=cfg.decay_fraction, decay_shape=cfg.decay_shape,
                                 final_ratio=cfg.final_lr_ratio)
        # The scheduler is not prepared (accelerate would step it once per process) and not checkpointed:
        # it is a pure function of the step, re-positioned after every load (`_seek_schedule`).
        self.scheduler = build_scheduler(optimizer, **self.sched_kwargs)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.inner_opt = getattr(self.optimizer, "optimizer", self.optimizer)
        self.tracker = EffectiveLRTracker(self.inner_opt, every=cfg.track_every) if cfg.track_every else None
        self.loader = TokenLoader(cfg.data_dir, seq_len=cfg.seq_len, global_batch_size=cfg.global_batch_size,
                                  rank=acc.process_index, world_size=acc.num_processes, seed=cfg.seed,
                                  total_tokens=cfg.total_tokens)
        self.state = TrainState(self.loader, self.tracker)
        acc.register_for_checkpointing(self.state)
        model_for_loss = self.model

        def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = model_for_loss(input_ids=x).logits
            return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

        self.forward_loss = torch.compile(forward_loss) if cfg.compile else forward_loss
        self.matmul_params = self.n_params + cfg.vocab_size * cfg.hidden_size
        self.flops_per_token = flops_per_token(self.matmul_params, cfg.num_hidden_layers, cfg.hidden_size,
                                               cfg.seq_len)
        self.peak = _peak_flops(cfg) if acc.device.type == "cuda" else None

    def _seek_schedule(self, step: int) -> None:
        """Put the LambdaLR at `step` of *this* run's horizon (exact: the schedule is a pure function)."""
        from lrtransfer.optim import lr_multiplier

        s = self.scheduler
        s.last_epoch = step
        lrs = [base * lr_multiplier(step, **self.sched_kwargs) for base in s.base_lrs]
        for group, lr in zip(self.inner_opt.param_groups, lrs):
            group["lr"] = lr
        s._last_lr = lrs

    def _load(self, ckpt: Path) -> None:
        self.acc.load_state(str(ckpt))
        self._seek_schedule(self.state.step)

    def _start(self) -> str:
        """Resume / branch / fresh start; returns a line saying which."""
        cfg, acc = self.cfg, self.acc
        from accelerate.utils import broadcast_object_list

        choice: list[Any] = [None]
        if acc.is_main_process:
            root = self.out / "checkpoints"
            for tmp in root.glob(".tmp_step_*") if root.is_dir() else []:
                shutil.rmtree(tmp)  # a save that was interrupted before its rename
            if cfg.resume == "auto":
                found = _find_resume_checkpoint(self.out)
                choice = [str(found) if found is not None else None]
        if acc.num_processes > 1:
            broadcast_object_list(choice)
        ckpt = Path(choice[0]) if choice[0] is not None else None
        if ckpt is not None:
            self._load(ckpt)
            how = f"resumed from {ckpt} (step {self.state.step})"
        elif cfg.init_from is not None:
            self._load(Path(cfg.init_from))
            how = f"branch from {cfg.init_from} (step {self.state.step}, horizon {self.plan.steps} steps)"
        else:
            how = "fresh start"
        if acc.is_main_process:
            _truncate_metrics(self.out / "metrics.jsonl", self.state.step)
        return how

    # ---- checkpoints
    def _save_checkpoint(self, step: int) -> None:
        acc, cfg = self.acc, self.cfg
        root = self.out / "checkpoints"
        final = root / f"step_{step:08d}"
        tmp = root / f".tmp_step_{step:08d}"
        if acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            files = {}
            for p in sorted(tmp.rglob("*")):
                if p.is_file():
                    files[str(p.relative_to(tmp))] = {"size": p.stat().st_size, "sha256": _sha256(p)}
            keep = step in cfg.checkpoint_steps or step == cfg.stop_at_step
            atomic_write_json(tmp / CHECKPOINT_META, {"step": step, "run_id": self.plan.run_id, "keep": keep,
                                                      "files": files})
            if final.exists():  # the same step saved again after a resume: identical state
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._rotate()
        acc.wait_for_everyone()

    def _rotate(self, keep_last: int | None = None) -> None:
        """Delete all but the newest k interval checkpoints; requested ones (meta keep=true) stay."""
        k = self.cfg.keep_checkpoints if keep_last is None else keep_last
        interval = [p for _, p in _checkpoints(self.out) if not (_read_checkpoint_meta(p) or {}).get("keep")]
        for p in interval[: max(len(interval) - k, 0)]:
            shutil.rmtree(p)

    # ---- evaluation
    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted validation loss: sum of NLL over every target token / token count, over all ranks."""
        from lrtransfer.data import validation_batches

        acc, cfg = self.acc, self.cfg
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=acc.device)
        for b in validation_batches(cfg.data_dir, seq_len=cfg.seq_len, batch_size=self.plan.micro_batch_size,
                                    rank=acc.process_index, world_size=acc.num_processes,
                                    max_tokens=cfg.eval_tokens):
            b = b.to(acc.device)
            logits = self.model(input_ids=b[:, :-1]).logits
            nll = F.cross_entropy(logits.flatten(0, 1).float(), b[:, 1:].flatten(), reduction="sum")
            total[0] += nll.double()
            total[1] += b[:, 1:].numel()
        total = acc.reduce(total, reduction="sum")
        self.model.train()
        return float(total[0] / total[1])

    # ---- the loop
    def run(self) -> dict[str, Any]:
        cfg, plan = self.cfg, self.plan
        is_main = _partial_state().is_main_process
        self.acc = None
        try:
            self._setup()
            acc = self.acc
            if is_main:
                self._write_run_files()
            how = self._start()
            if is_main:
                if cfg.progress:  # interactive runs show the resolved config; sweeps keep one line per run
                    print(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), end="")
                print(f"[lrtransfer] run {plan.run_id} -> {self.out}: {how}\n"
                      f"  N={self.n_params:,} (non-embedding), N_total={self.n_total:,}, "
                      f"tokens/step={plan.tokens_per_step:,}, steps={plan.steps:,} (D={cfg.total_tokens:,}), "
                      f"world={plan.world_size} x micro {plan.micro_batch_size} x accum {plan.grad_accum}, "
                      f"precision={cfg.mixed_precision}, device={acc.device}", flush=True)
            if cfg.report_to:
                acc.init_trackers(cfg.project_name, config={k: (v if isinstance(v, (int, float, str, bool)) else
                                                                str(v)) for k, v in dataclasses.asdict(cfg).items()})
            status, val_loss = self._loop()
            result = self._result(status, val_loss)
        except Exception as e:  # a sweep needs a result for every run: record the failure and return it
            traceback.print_exc()
            result = self._result("failed", None, error=f"{type(e).__name__}: {e}")
        if is_main:
            atomic_write_json(self.out / "result.json", result)
        if self.acc is not None:
            self.acc.end_training()
        return result

    def _write_run_files(self) -> None:
        """config.yaml (the resolved TrainConfig, reusable as --config) and run.json (identity and shape)."""
        cfg, plan = self.cfg, self.plan
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(self.out / "config.yaml", dataclasses.asdict(cfg))
        atomic_write_json(self.out / "run.json", {
            "run_id": plan.run_id, "config_hash": plan.run_id, "data_fingerprint": plan.data_fingerprint,
            "world_size": plan.world_size, "micro_batch_size": plan.micro_batch_size,
            "grad_accum": plan.grad_accum, "tokens_per_step": plan.tokens_per_step, "steps": plan.steps,
            "horizon_mult": plan.horizon_mult, "N": self.n_params, "N_total": self.n_total,
            "flops_per_token": self.flops_per_token, "val_tokens": plan.val_tokens,
        })

    def _loop(self) -> tuple[str, float | None]:
        cfg, plan, acc, st = self.cfg, self.plan, self.acc, self.state
        is_main = acc.is_main_process
        metrics = open(self.out / "metrics.jsonl", "a") if is_main else None
        bar = None
        if is_main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=plan.last_step, initial=st.step, desc="train", dynamic_ncols=True)
        status, val_loss = "ok", None
        t_interval, tokens_interval = time.time(), 0
        t_segment = time.time()
        params = [p for p in self.model.parameters() if p.requires_grad]
        try:
            while st.step < plan.last_step:
                step = st.step + 1
                batch = self.loader.next_batch().to(acc.device, non_blocking=True)
                loss_sum = torch.zeros((), device=acc.device)
                for i, mb in enumerate(batch.split(plan.micro_batch_size)):
                    last = i == plan.grad_accum - 1
                    with contextlib.nullcontext() if last else acc.no_sync(self.model):
                        loss = self.forward_loss(mb[:, :-1], mb[:, 1:])
                        acc.backward(loss / plan.grad_accum)
                    loss_sum += loss.detach()
                grad_norm = self._clip(params)
                lrs = [g["lr"] for g in self.inner_opt.param_groups]
                if self.tracker is not None:
                    self.tracker.before_step(step)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.normalize:
                    acc.unwrap_model(self.model).normalize_weights()
                tracked = self.tracker.after_step(step) if self.tracker is not None else None
                loss_val = float(acc.reduce(loss_sum / plan.grad_accum, reduction="mean"))
                st.step = step
                tokens_interval += plan.tokens_per_step
                diverged = self._diverged(step, loss_val)
                log_now = step % cfg.log_every == 0 or step == plan.last_step or diverged or tracked is not None
                eval_now = not diverged and cfg.eval_every and step % cfg.eval_every == 0 and step < plan.last_step
                row: dict[str, Any] = {}
                if log_now:
                    dt = max(time.time() - t_interval, 1e-9)
                    tps = tokens_interval / dt
                    row = {"step": step, "tokens": step * plan.tokens_per_step, "loss": loss_val,
                           "lr": cfg.lr * self._multiplier(step - 1),
                           "grad_norm": grad_norm, "tokens_per_s": tps}
                    for g, lr in zip(self.inner_opt.param_groups, lrs):
                        row[f"lr/{g.get('name', len(row))}"] = lr
                    if self.peak:
                        row["mfu"] = tps * self.flops_per_token / (self.peak * plan.world_size)
                    if tracked:
                        row.update(tracked)
                    t_interval, tokens_interval = time.time(), 0
                if eval_now:
                    v = self.evaluate()
                    row = row or {"step": step, "tokens": step * plan.tokens_per_step}
                    row.update(val_loss=v, val_ppl=math.exp(min(v, 700.0)))
                    t_interval = time.time()
                if row:
                    if metrics is not None:
                        metrics.write(json.dumps(row) + "\n")
                        metrics.flush()
                    acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)
                if bar is not None:
                    bar.update(1)
                    if "tokens_per_s" in row:
                        bar.set_postfix(loss=f"{loss_val:.4f}", tok_s=f"{row['tokens_per_s']:,.0f}")
                if diverged:
                    status = "diverged"
                    if is_main:
                        print(f"[lrtransfer] diverged at step {step} (loss {loss_val}, EMA {st.ema_loss}, initial "
                              f"{st.initial_loss})", flush=True)
                    break
                if self._checkpoint_due(step):
                    st.elapsed_s += time.time() - t_segment
                    t_segment = time.time()
                    self._save_checkpoint(step)
                    t_interval = time.time()
            st.elapsed_s += time.time() - t_segment
            if status == "ok":
                val_loss = self.evaluate()
                if metrics is not None:
                    metrics.write(json.dumps({"step": st.step, "tokens": st.step * plan.tokens_per_step,
                                              "val_loss": val_loss,
                                              "val_ppl": math.exp(min(val_loss, 700.0))}) + "\n")
                if st.step < plan.steps:
                    status = "stopped"
                elif cfg.save_model:
                    self._save_model()
            if status in ("ok", "diverged") and cfg.cleanup_checkpoints and is_main:
                self._rotate(keep_last=0)
        finally:
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
        return status, val_loss

    def _clip(self, params: list[torch.nn.Parameter]) -> float:
        """Global grad norm (DDP / FSDP2 aware); with grad_clip=0 an unreachable bound only measures it."""
        from lrtransfer.optim import clip_grad_norm_

        return float(clip_grad_norm_(params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else sys.float_info.max))

    def _multiplier(self, step: int) -> float:
        from lrtransfer.optim import lr_multiplier

        return lr_multiplier(step, **self.sched_kwargs)

    def _checkpoint_due(self, step: int) -> bool:
        cfg = self.cfg
        return (step in cfg.checkpoint_steps or step == cfg.stop_at_step
                or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0))

    def _diverged(self, step: int, loss: float) -> bool:
        """Non-finite loss, or (after warmup) the EMA loss above the initial loss by the margin."""
        st, cfg = self.state, self.cfg
        if not math.isfinite(loss):
            return True
        if st.initial_loss is None:
            st.initial_loss = st.ema_loss = loss
            return False
        st.ema_loss = cfg.divergence_ema * st.ema_loss + (1 - cfg.divergence_ema) * loss
        return step > cfg.warmup_steps and st.ema_loss > st.initial_loss + cfg.divergence_margin

    def _save_model(self) -> None:
        """HF model folder: safetensors + config + modeling code + the data's tokenizer."""
        from transformers import AutoTokenizer

        from lrtransfer.data import save_tokenizer

        acc = self.acc
        unwrapped = acc.unwrap_model(self.model)
        state_dict = acc.get_state_dict(self.model)
        if acc.is_main_process:
            target = self.out / "model"
            tmp = self.out / ".tmp_model"
            if tmp.exists():
                shutil.rmtree(tmp)
            type(unwrapped.config).register_for_auto_class()
            type(unwrapped).register_for_auto_class("AutoModelForCausalLM")
            unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            save_tokenizer(AutoTokenizer.from_pretrained(self.cfg.data_dir), tmp,
                           model_max_length=unwrapped.config.max_position_embeddings)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        acc.wait_for_everyone()

    def _result(self, status: str, val_loss: float | None, error: str | None = None) -> dict[str, Any]:
        cfg, plan = self.cfg, self.plan
        st = getattr(self, "state", None)
        steps = st.step if st is not None else 0
        eta = self.tracker.eta_eff_mean if getattr(self, "tracker", None) is not None else None
        result = {
            "status": status, "run_id": plan.run_id, "config_hash": plan.run_id,
            "model_family": cfg.model_family, "parameterization": cfg.parameterization, "optimizer": cfg.optimizer,
            "N": getattr(self, "n_params", None), "N_total": getattr(self, "n_total", None),
            "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers, "D": cfg.total_tokens,
            "tokens": steps * plan.tokens_per_step, "steps": steps, "lr": cfg.lr, "seed": cfg.seed,
            "final_val_loss": val_loss, "final_val_ppl": math.exp(min(val_loss, 700.0)) if val_loss is not None
            else None, "eta_eff_mean": eta,
            "wall_time_s": (st.elapsed_s if st is not None else 0.0) if status != "failed"
            else time.time() - self.t_start,
        }
        if error is not None:
            result["error"] = error
        return result


# --------------------------------------------------------------------------------------------------
# Entry points


def _launched() -> bool:
    """True inside `accelerate launch` / torchrun (or our own relaunch): never launch twice."""
    return any(k in os.environ for k in ("LRTRANSFER_LAUNCHED", "LOCAL_RANK", "ACCELERATE_CONFIG_DS_FIELDS")) or \
        "ACCELERATE_MIXED_PRECISION" in os.environ


def main(argv: list[str] | None = None) -> int:
    """`lrtransfer train` / recipes/train.py: parse, (re)launch with `accelerate_config` if given, train.

    Exit status: 0 for ok / diverged / stopped (a diverged run is a result), 1 for failed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    (cfg,) = parse_config([TrainConfig], argv)
    if cfg.accelerate_config is not None and not _launched():
        path = resolve_accelerate_config(cfg.accelerate_config)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path),
               "-m", "lrtransfer.train", *argv]
        return subprocess.call(cmd, env={**os.environ, "LRTRANSFER_LAUNCHED": "1"})
    result = run_training(cfg)
    if _partial_state().is_main_process:
        print(json.dumps(result, indent=2))
    return 1 if result["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
