"""Learning-rate schedules as multipliers of each group's own base LR (DESIGN §3.3).

`step` is the number of optimizer steps already taken (0 for the first step), which is what
`LambdaLR` passes. The multiplier is a pure function of the step and the schedule's own horizon:

- warmup (all kinds): (step + 1) / warmup_steps for step < warmup_steps — a fixed number of steps,
  not a fraction of the run, so runs that differ only in D share their trunk;
- wsd: 1 until the decay start T − K (K = decay_steps, else round(decay_fraction · T)), then
  r + (1 − r) · shape(p) with p = (step − (T − K)) / K, shape linear 1 − p, 1-sqrt 1 − √p or
  cosine (1 + cos πp) / 2. The first decay step still has multiplier 1, so a branch restored from a
  trunk checkpoint at its decay start continues exactly;
- cosine: r + (1 − r) · (1 + cos πp) / 2 with p = (step − warmup) / (T − warmup);
- constant: 1 after warmup.
Steps past the horizon keep the final value.
"""

from __future__ import annotations

import math
from typing import Any

import torch

KINDS = ("wsd", "cosine", "constant")
DECAY_SHAPES = ("linear", "1-sqrt", "cosine")


def lr_multiplier(
    step: int,
    *,
    kind: str,
    total_steps: int,
    warmup_steps: int = 0,
    decay_fraction: float = 0.2,
    decay_steps: int | None = None,
    decay_shape: str = "linear",
    final_ratio: float = 0.0,
) -> float:
    """The schedule's multiplier of the base LR for the optimizer step with index `step` (0-based)."""
    decay = _validate(kind, total_steps, warmup_steps, decay_fraction, decay_steps, decay_shape, final_ratio)
    if not _is_int(step) or step < 0:
        raise ValueError(f"step={step!r} is invalid; allowed values: an int >= 0")
    return _multiplier(step, kind, total_steps, warmup_steps, decay, decay_shape, final_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    kind: str = "wsd",
    total_steps: int,
    warmup_steps: int = 0,
    decay_fraction: float = 0.2,
    decay_steps: int | None = None,
    decay_shape: str = "linear",
    final_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR multiplying every group's own base LR by `lr_multiplier` (validated up front).

    The lambda is a plain closure, so LambdaLR's state_dict holds only the step and base LRs: loading
    a trunk's scheduler state into a branch's scheduler keeps the branch's own horizon.
    """
    decay = _validate(kind, total_steps, warmup_steps, decay_fraction, decay_steps, decay_shape, final_ratio)

    def multiplier(step: int) -> float:
        return _multiplier(step, kind, total_steps, warmup_steps, decay, decay_shape, final_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def _multiplier(
    step: int, kind: str, total: int, warmup: int, decay: int, shape: str, final_ratio: float
) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        span = total - warmup
        p = min(1.0, (step - warmup) / span) if span > 0 else 1.0
        return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    start = total - decay
    if decay == 0 or step < start:
        return 1.0
    p = min(1.0, (step - start) / decay)
    if shape == "linear":
        frac = 1.0 - p
    elif shape == "1-sqrt":
        frac = 1.0 - math.sqrt(p)
    else:
        frac = 0.5 * (1.0 + math.cos(math.pi * p))
    return final_ratio + (1.0 - final_ratio) * frac


def _validate(
    kind: Any,
    total_steps: Any,
    warmup_steps: Any,
    decay_fraction: Any,
    decay_steps: Any,
    decay_shape: Any,
    final_ratio: Any,
) -> int:
    """Check every field (errors name the field and the allowed values); return the decay length K."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; allowed values: {list(KINDS)}")
    if not _is_int(total_steps) or total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r} is invalid; allowed values: an int >= 1")
    if not _is_int(warmup_steps) or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps!r} is invalid; allowed values: an int in [0, total_steps={total_steps}]")
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"decay_shape={decay_shape!r} is unknown; allowed values: {list(DECAY_SHAPES)}")
    if not _is_real(final_ratio) or not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"final_ratio={final_ratio!r} is invalid; allowed values: a float in [0, 1]")
    if not _is_real(decay_fraction) or not 0.0 <= decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction={decay_fraction!r} is invalid; allowed values: a float in [0, 1]")
    if decay_steps is not None and (not _is_int(decay_steps) or not 0 <= decay_steps <= total_steps):
        raise ValueError(
            f"decay_steps={decay_steps!r} is invalid; allowed values: None or an int in [0, total_steps={total_steps}]"
        )
    if kind != "wsd":
        return 0
    decay = decay_steps if decay_steps is not None else round(decay_fraction * total_steps)
    if warmup_steps > total_steps - decay:
        raise ValueError(
            f"warmup_steps={warmup_steps} overlaps the decay, which starts at step {total_steps - decay} "
            f"(total_steps={total_steps}, decay of {decay} steps); allowed values: warmup_steps <= {total_steps - decay}"
        )
    return decay


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
