"""Global gradient-norm clipping that is right for plain tensors, DDP and FSDP2 (DTensor) gradients.

torch's `get_total_norm` reduces DTensor gradients correctly (the per-shard norms carry a norm-partial
placement), but returns a DTensor; as in torchtitan we materialize it with `full_tensor()` and clip
with `clip_grads_with_norm_`. DTensor and plain gradients (a partly sharded model) are normed
separately and combined, since torch cannot stack the two kinds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed support
    DTensor = None  # type: ignore[assignment,misc]


@torch.no_grad()
def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """Scale all gradients so that their global L2 norm is at most `max_norm`; return the norm before."""
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0 or not math.isfinite(max_norm):
        raise ValueError(f"max_norm={max_norm!r} is invalid; allowed values: a finite float > 0")
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    is_dt = [DTensor is not None and isinstance(p.grad, DTensor) for p in params]
    squares = []
    for kind in (True, False):
        grads = [p.grad for p, d in zip(params, is_dt) if d is kind]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
            if DTensor is not None and isinstance(norm, DTensor):
                norm = norm.full_tensor()
            squares.append(norm.double().square())
    total = torch.stack([s.to(squares[0].device) for s in squares]).sum().sqrt()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total.float())
    return float(total)
