"""Build an optimizer from a model's group spec (`model.param_groups(horizon_mult)`).

The spec is the one source of truth for per-parameter multipliers; this module only consumes it.
Each spec entry is a dict with keys: name, params, param_names, role ("embedding" | "matrix" |
"lm_head" | "vector"), lr_mult, weight_decay_mult, eps_mult and optionally eps (an absolute ε).
"""

from __future__ import annotations

from typing import Any

import torch


def build_optimizer(
    groups: list[dict[str, Any]],
    *,
    name: str = "adamw",
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """AdamW with one torch param group per spec group; the group's `lr` is the schedule's base."""
    if name != "adamw":
        raise ValueError(f"optimizer={name!r} is unknown; allowed values: ['adamw']")
    torch_groups = []
    for g in groups:
        torch_groups.append(
            {
                "params": list(g["params"]),
                "lr": lr * g["lr_mult"],
                "weight_decay": weight_decay * g["weight_decay_mult"],
                "eps": g.get("eps", eps * g["eps_mult"]),
                "name": g["name"],
                "role": g["role"],
                "param_names": list(g["param_names"]),
                "lr_mult": g["lr_mult"],
            }
        )
    return torch.optim.AdamW(torch_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)
