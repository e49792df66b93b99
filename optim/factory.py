"""Build an optimizer from a model's group spec (`model.param_groups(horizon_mult)`).

The spec is the one source of truth for per-parameter multipliers; this module only consumes it.
Each spec entry is a dict with keys: name, params, param_names, role ("embedding" | "matrix" |
"lm_head" | "vector"), lr_mult, weight_decay_mult, eps_mult and optionally eps (an absolute ε).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .adamh import AdamH

OPTIMIZERS = ("adamw", "adamh")
ROLES = ("embedding", "matrix", "lm_head", "vector")
HYPERBALL_ROLES = ("matrix", "lm_head")  # DESIGN §3.2: every 2-D non-embedding matrix
_REQUIRED_KEYS = ("name", "params", "param_names", "role", "lr_mult", "weight_decay_mult", "eps_mult")


def build_optimizer(
    groups: list[dict[str, Any]],
    *,
    name: str = "adamw",
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    adam_lr: float | None = None,
    adam_lr_ratio: float = 1.0,
) -> torch.optim.Optimizer:
    """One torch param group per spec group; each group's `lr` is the base the schedule multiplies.

    adamw: torch AdamW (foreach), lr = lr·lr_mult, weight_decay = weight_decay·weight_decay_mult
    (torch decays by lr·weight_decay), eps = spec eps or eps·eps_mult.
    adamh: hyperball on roles matrix/lm_head with lr = lr·lr_mult and no weight decay; Adam on the
    rest with lr = (adam_lr or adam_lr_ratio·lr)·lr_mult and weight_decay·weight_decay_mult.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r} is unknown; allowed values: {list(OPTIMIZERS)}")
    _check_positive("lr", lr)
    _check_nonnegative("weight_decay", weight_decay)
    _check_positive("eps", eps)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(_real(b) and 0 <= b < 1 for b in betas):
        raise ValueError(f"betas={betas!r} is invalid; allowed values: two floats in [0, 1)")
    if adam_lr is not None:
        _check_positive("adam_lr", adam_lr)
    _check_positive("adam_lr_ratio", adam_lr_ratio)
    if name == "adamw" and (adam_lr is not None or adam_lr_ratio != 1.0):
        raise ValueError("adam_lr / adam_lr_ratio apply to optimizer='adamh' only; leave them unset for 'adamw'")
    _check_spec(groups, hyperball=name == "adamh")

    base_adam_lr = adam_lr if adam_lr is not None else adam_lr_ratio * lr
    torch_groups = []
    for g in groups:
        hyperball = name == "adamh" and g["role"] in HYPERBALL_ROLES
        group_lr = (lr if name == "adamw" or hyperball else base_adam_lr) * g["lr_mult"]
        entry = {
            "params": list(g["params"]),
            "lr": group_lr,
            "weight_decay": 0.0 if hyperball else weight_decay * g["weight_decay_mult"],
            "eps": g["eps"] if g.get("eps") is not None else eps * g["eps_mult"],
            "name": g["name"],
            "role": g["role"],
            "param_names": list(g["param_names"]),
            "lr_mult": g["lr_mult"],
        }
        if name == "adamh":
            entry["hyperball"] = hyperball
        torch_groups.append(entry)
    if name == "adamw":
        return torch.optim.AdamW(
            torch_groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=True
        )
    return AdamH(torch_groups, lr=lr, betas=tuple(betas), eps=eps)


def _check_spec(groups: list[dict[str, Any]], *, hyperball: bool) -> None:
    """The spec must name every field, use known roles and list each parameter exactly once."""
    if not isinstance(groups, (list, tuple)) or not groups:
        raise ValueError("groups must be a non-empty list of group-spec dicts (model.param_groups())")
    seen: dict[int, str] = {}
    for i, g in enumerate(groups):
        if not isinstance(g, dict):
            raise ValueError(f"groups[{i}] must be a dict, got {type(g).__name__}")
        missing = [k for k in _REQUIRED_KEYS if k not in g]
        if missing:
            raise ValueError(f"groups[{i}] lacks key(s) {missing}; required keys: {list(_REQUIRED_KEYS)}")
        label = f"groups[{i}] ({g['name']!r})"
        if g["role"] not in ROLES:
            raise ValueError(f"{label}: role={g['role']!r} is unknown; allowed values: {list(ROLES)}")
        params, names = list(g["params"]), list(g["param_names"])
        if len(params) != len(names):
            raise ValueError(f"{label}: {len(params)} params but {len(names)} param_names; they must be parallel")
        for key in ("lr_mult", "weight_decay_mult", "eps_mult"):
            if not _real(g[key]) or not math.isfinite(g[key]) or g[key] < 0:
                raise ValueError(f"{label}: {key}={g[key]!r} is invalid; allowed values: a finite float >= 0")
        if g.get("eps") is not None and (not _real(g["eps"]) or not g["eps"] > 0 or not math.isfinite(g["eps"])):
            raise ValueError(f"{label}: eps={g['eps']!r} is invalid; allowed values: a finite float > 0 or None")
        for p, pname in zip(params, names):
            if not isinstance(p, torch.Tensor):
                raise ValueError(f"{label}: param {pname!r} is a {type(p).__name__}, not a tensor")
            if id(p) in seen:
                raise ValueError(f"parameter {pname!r} appears in both {seen[id(p)]} and {label}")
            seen[id(p)] = label
            if hyperball and g["role"] in HYPERBALL_ROLES and p.ndim != 2:
                raise ValueError(f"{label}: role={g['role']!r} needs 2-D matrices; {pname!r} has shape {tuple(p.shape)}")


def _real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_positive(field: str, value: Any) -> None:
    if not _real(value) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{field}={value!r} is invalid; allowed values: a finite float > 0")


def _check_nonnegative(field: str, value: Any) -> None:
    if not _real(value) or not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{field}={value!r} is invalid; allowed values: a finite float >= 0")
