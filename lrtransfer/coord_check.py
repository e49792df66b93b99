"""Coordinate check (DESIGN §2.3): does a parameterization keep activations O(1) across width or depth?

Train a ladder of models that differ only in width (hidden_size at a fixed head dim; base = smallest) or
only in depth (base = shallowest) for a few AdamW steps at one LR with the parameterization's own groups,
on the same token batches. Forward hooks record mean |output| of every module per step, averaged over the
layers of a module type ("transformer.h.*.mlp.c_fc") and over seeds. The verdict fits, per module type
and step, the slope of log2 mean|x| against log2 size: a correct parameterization is flat, a wrong one
grows. The check is one-sided on purpose: μP's logits *shrink* at init by design (ω = 1/m_N), which is
not a failure; growth is what breaks LR transfer.

Works for any model family of `lrtransfer.modeling` (config field names are shared); a model with
`normalize_weights()` (νGPT) is renormalized before the first step and after every step.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrtransfer.modeling import get_family
from lrtransfer.optim import build_optimizer
from lrtransfer.utils import atomic_write_bytes, atomic_write_json, parse_config

AXES = ("width", "depth")
DEFAULT_SIZES = {"width": (32, 64, 128, 256), "depth": (2, 4, 8, 16)}


@dataclasses.dataclass
class CoordCheckResult:
    """coords[module][step][i] = seed-averaged mean |output| at sizes[i]; slopes[module][step] its log2-log2 slope."""

    model_family: str
    parameterization: str
    axis: str
    sizes: list[int]
    steps: int
    threshold: float
    coords: dict[str, list[list[float]]]
    slopes: dict[str, list[float]]
    passed: bool
    worst_module: str
    worst_step: int
    worst_slope: float
    plot_path: str | None = None

    def max_slope(self, step: int | None = None) -> float:
        """Largest slope over modules (at one step, or over all steps)."""
        return max(s[step] if step is not None else max(s) for s in self.slopes.values())

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        per_step = ", ".join(f"{self.max_slope(t):+.2f}" for t in range(self.steps))
        return (
            f"coord-check {self.model_family}/{self.parameterization} {self.axis} {self.sizes}: {verdict} "
            f"(max slope per step [{per_step}], threshold {self.threshold:+.2f}; worst {self.worst_module} "
            f"at step {self.worst_step}: {self.worst_slope:+.2f})"
        )


def synthetic_tokens(num_sequences: int, seq_len: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """Token sequences from a fixed random bigram model: learnable structure, no files, deterministic."""
    g = torch.Generator().manual_seed(seed)
    transitions = torch.softmax(3.0 * torch.randn(vocab_size, vocab_size, generator=g), dim=-1)
    tokens = torch.empty(num_sequences, seq_len, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, vocab_size, (num_sequences,), generator=g)
    for t in range(1, seq_len):
        tokens[:, t] = torch.multinomial(transitions[tokens[:, t - 1]], 1, generator=g).squeeze(1)
    return tokens


def _module_type(name: str) -> str:
    """'transformer.h.3.attn.c_attn' -> 'transformer.h.*.attn.c_attn' (layers of one type are averaged)."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", name)


def _record_step(model: torch.nn.Module) -> tuple[dict[str, list[float]], list[Any]]:
    """Hook every submodule whose output is a float tensor (first element of a tuple output)."""
    sums: dict[str, list[float]] = {}
    handles = []

    def hook(key: str):
        def fn(_module: torch.nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, (tuple, list)) and out:
                out = out[0]
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                acc = sums.setdefault(key, [0.0, 0.0])
                acc[0] += out.detach().abs().mean().item()
                acc[1] += 1.0

        return fn

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(_module_type(name))))
    return sums, handles


def _train_and_record(
    model: torch.nn.Module, batches: torch.Tensor, lr: float
) -> list[dict[str, float]]:
    """Mean |output| per module type at each training step (step t sees the weights after t updates)."""
    optimizer = build_optimizer(model.param_groups(), lr=lr, weight_decay=0.0)
    normalize = getattr(model, "normalize_weights", None)
    if normalize is not None:
        normalize()
    model.train()
    per_step = []
    for batch in batches:
        sums, handles = _record_step(model)
        out = model(input_ids=batch, labels=batch, use_cache=False)
        for h in handles:
            h.remove()
        record = {k: s / n for k, (s, n) in sums.items()}
        record["logits"] = out.logits.detach().abs().mean().item()
        per_step.append(record)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if normalize is not None:
            normalize()
    return per_step


def _slope(sizes: list[int], values: list[float]) -> float:
    return float(np.polyfit(np.log2(sizes), np.log2(values), 1)[0])


def coord_check(
    model_family: str = "gpt2",
    parameterization: str = "mup",
    axis: str = "width",
    *,
    sizes: list[int] | tuple[int, ...] | None = None,
    head_dim: int = 16,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    vocab_size: int = 256,
    seq_len: int = 32,
    batch_size: int = 8,
    steps: int = 4,
    lr: float = 1e-2,
    seeds: int = 2,
    threshold: float = 0.25,
    tokens: torch.Tensor | None = None,
    config_kwargs: dict[str, Any] | None = None,
    output_dir: str | Path | None = None,
) -> CoordCheckResult:
    """Run the ladder and return the verdict; with `output_dir`, also write coord_check.png and coord_check.json.

    width axis: hidden_size ∈ sizes, heads = size // head_dim, `num_hidden_layers` layers, base = min(sizes).
    depth axis: num_hidden_layers ∈ sizes at `hidden_size`, base = min(sizes).
    tokens: optional LongTensor (n, ≥ seq_len) of real token ids (< vocab_size); rows are reused in order.
    """
    config_cls, model_cls = get_family(model_family)
    if axis not in AXES:
        raise ValueError(f"axis={axis!r} is unknown; allowed values: {list(AXES)}")
    sizes = sorted(int(s) for s in (sizes or DEFAULT_SIZES[axis]))
    if len(sizes) < 2 or len(set(sizes)) != len(sizes) or sizes[0] <= 0:
        raise ValueError(f"sizes={sizes} is invalid; allowed values: at least 2 distinct positive integers")
    if axis == "width" and any(s % head_dim for s in sizes):
        raise ValueError(f"sizes={sizes} are not multiples of head_dim={head_dim}; allowed values: multiples of it")
    for name, value in dict(steps=steps, seeds=seeds, seq_len=seq_len, batch_size=batch_size).items():
        if value <= 0:
            raise ValueError(f"{name}={value} is invalid; allowed values: integers > 0")
    if not lr > 0:
        raise ValueError(f"lr={lr} is invalid; allowed values: numbers > 0")
    if tokens is None:
        tokens = synthetic_tokens(steps * batch_size, seq_len, vocab_size)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.ndim != 2 or tokens.shape[1] < seq_len or tokens.shape[0] < batch_size:
        raise ValueError(
            f"tokens has shape {tuple(tokens.shape)}; allowed values: (n >= batch_size={batch_size}, >= seq_len={seq_len})"
        )
    if int(tokens.max()) >= vocab_size or int(tokens.min()) < 0:
        raise ValueError(f"tokens hold ids outside [0, vocab_size={vocab_size}); allowed values: ids < vocab_size")
    rows = torch.arange(steps * batch_size) % tokens.shape[0]
    batches = tokens[rows, :seq_len].view(steps, batch_size, seq_len)

    # coords_by_seed[seed][size_index][step][module]
    runs: list[list[list[dict[str, float]]]] = []
    for seed in range(seeds):
        per_size = []
        for size in sizes:
            if axis == "width":
                shape = dict(hidden_size=size, num_attention_heads=size // head_dim, num_hidden_layers=num_hidden_layers)
                base = dict(base_hidden_size=sizes[0], base_num_layers=num_hidden_layers)
            else:
                shape = dict(
                    hidden_size=hidden_size, num_attention_heads=hidden_size // head_dim, num_hidden_layers=size
                )
                base = dict(base_hidden_size=hidden_size, base_num_layers=sizes[0])
            config = config_cls(
                vocab_size=vocab_size,
                max_position_embeddings=seq_len,
                parameterization=parameterization,
                **shape,
                **base,
                **(config_kwargs or {}),
            )
            torch.manual_seed(seed)
            model = model_cls(config)
            per_size.append(_train_and_record(model, batches, lr))
        runs.append(per_size)

    modules = [m for m in runs[0][0][0] if all(m in step for run in runs for sz in run for step in sz)]
    coords = {
        m: [[float(np.mean([runs[s][i][t][m] for s in range(seeds)])) for i in range(len(sizes))] for t in range(steps)]
        for m in modules
    }
    slopes = {m: [_slope(sizes, coords[m][t]) for t in range(steps)] for m in modules}
    worst_module, worst_step = max(((m, t) for m in modules for t in range(steps)), key=lambda mt: slopes[mt[0]][mt[1]])
    worst = slopes[worst_module][worst_step]
    result = CoordCheckResult(
        model_family=model_family,
        parameterization=parameterization,
        axis=axis,
        sizes=sizes,
        steps=steps,
        threshold=threshold,
        coords=coords,
        slopes=slopes,
        passed=bool(worst <= threshold),
        worst_module=worst_module,
        worst_step=worst_step,
        worst_slope=worst,
    )
    if output_dir is not None:
        out = Path(output_dir)
        result.plot_path = str(out / "coord_check.png")
        _plot(result, out / "coord_check.png")
        atomic_write_json(out / "coord_check.json", dataclasses.asdict(result))
    return result


def _plot(result: CoordCheckResult, path: Path) -> None:
    """One panel per step; x = log2 size, y = log mean |x|, one line per module type."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(result.steps, 4)
    rows = math.ceil(result.steps / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False, sharey=True)
    x = np.log2(result.sizes)
    cmap = plt.get_cmap("tab20")
    for t in range(result.steps):
        ax = axes[t // cols][t % cols]
        for j, (module, values) in enumerate(result.coords.items()):
            ax.plot(x, values, marker="o", ms=3, lw=1, color=cmap(j % 20), label=module)
        ax.set_yscale("log")
        ax.set_title(f"step {t}  (max slope {result.max_slope(t):+.2f})", fontsize=9)
        ax.set_xlabel(f"log2 {result.axis}")
        if t % cols == 0:
            ax.set_ylabel("mean |x|")
    for k in range(result.steps, rows * cols):
        axes[k // cols][k % cols].axis("off")
    verdict = "PASS" if result.passed else "FAIL"
    fig.suptitle(
        f"{result.model_family} / {result.parameterization}: {result.axis} coordinate check — {verdict} "
        f"(threshold {result.threshold:+.2f})",
        fontsize=10,
    )
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


@dataclasses.dataclass
class CoordCheckConfig:
    """`lrtransfer coord-check`: a width or depth ladder of a model family under one parameterization."""

    model_family: str = dataclasses.field(default="gpt2", metadata={"help": "gpt2 or nugpt"})
    parameterization: str = dataclasses.field(default="mup", metadata={"help": "e.g. sp, mup, completep, ngpt, nugpt"})
    axis: str = dataclasses.field(default="width", metadata={"help": "width or depth", "choices": AXES})
    output_dir: str = dataclasses.field(default="coord_check", metadata={"help": "where the PNG and JSON go"})
    sizes: list[int] | None = dataclasses.field(default=None, metadata={"help": "widths or depths of the ladder"})
    head_dim: int = 16
    hidden_size: int = dataclasses.field(default=64, metadata={"help": "width of the depth ladder"})
    num_hidden_layers: int = dataclasses.field(default=2, metadata={"help": "depth of the width ladder"})
    vocab_size: int = dataclasses.field(default=256, metadata={"help": "synthetic tokens only"})
    seq_len: int = 32
    batch_size: int = 8
    steps: int = 4
    lr: float = 1e-2
    seeds: int = 2
    threshold: float = 0.25
    data_dir: str | None = dataclasses.field(default=None, metadata={"help": "prepared data folder (real tokens)"})


def main(argv: list[str] | None = None) -> int:
    (cfg,) = parse_config([CoordCheckConfig], argv)
    tokens, vocab_size = None, cfg.vocab_size
    if cfg.data_dir is not None:
        from lrtransfer.data import TokenLoader

        loader = TokenLoader(cfg.data_dir, seq_len=cfg.seq_len, global_batch_size=cfg.batch_size, seed=0)
        tokens = torch.cat([loader.next_batch()[:, : cfg.seq_len] for _ in range(cfg.steps)])
        vocab_size = int(loader.manifest["vocab_size"])
    result = coord_check(
        cfg.model_family,
        cfg.parameterization,
        cfg.axis,
        sizes=cfg.sizes,
        head_dim=cfg.head_dim,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        vocab_size=vocab_size,
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        steps=cfg.steps,
        lr=cfg.lr,
        seeds=cfg.seeds,
        threshold=cfg.threshold,
        tokens=tokens,
        output_dir=cfg.output_dir,
    )
    print(result.summary())
    print(f"wrote {result.plot_path}")
    return 0 if result.passed else 1
