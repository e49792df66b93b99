"""AdamH: Adam on the hyperball (DESIGN §3.2; Wen et al. 2025, cf. Marin/levanter `adamh.py`).

Every hyperball matrix W keeps the Frobenius norm R it had when the optimizer first saw it:

    u  = m̂ / (√v̂ + ε)                          (plain Adam direction)
    W' = W − η_t · R · u / max(‖u‖, 1e-10)      (the relative step is exactly η_t)
    W  ← R · W' / max(‖W'‖, 1e-10)

so the scheduled η_t *is* the effective learning rate. ‖W'‖ comes from the closed form
‖W'‖² = ‖W‖² − 2s⟨W,u⟩ + s²‖u‖² (s = η_t R / max(‖u‖, 1e-10)), which needs three reductions per
matrix that can all be taken before the update. Under FSDP2 (DTensor parameters) each rank computes
its local partial sums for every matrix and ONE all-reduce per step, over the sharded mesh dimensions
only, completes them; under DDP every rank already holds the same values and nothing is
communicated. Groups with `hyperball=False` are plain Adam (decoupled weight decay as in AdamW).

R is captured at the first step (so it is the norm of the weights as initialized or loaded), stored
in the optimizer state as a Python float (exact, device- and dtype-free) and never recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed support
    DTensor = None  # type: ignore[assignment,misc]

_NORM_FLOOR = 1e-10  # DESIGN §3.2: max(‖·‖, 1e-10) in both divisions


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The rank-local shard of a DTensor (a view: in-place ops write through), or `t` itself."""
    if DTensor is not None and isinstance(t, DTensor):
        return t.to_local()
    return t


def shard_key(t: torch.Tensor) -> tuple[Any, tuple[int, ...]] | None:
    """(device mesh, sharded mesh dims) of a DTensor; None when sums over `t` need no communication."""
    if DTensor is None or not isinstance(t, DTensor):
        return None
    dims = tuple(i for i, pl in enumerate(t.placements) if pl.is_shard())
    return (t.device_mesh, dims) if dims else None


def all_reduce_partials(partials: torch.Tensor, keys: list[tuple[Any, tuple[int, ...]] | None]) -> torch.Tensor:
    """Sum the columns of `partials` (rows: statistics, columns: tensors) over each tensor's shard group.

    Columns that share a (mesh, sharded dims) key travel in one all-reduce; a model sharded by FSDP2
    on one mesh therefore costs exactly one collective, whatever the number of matrices.
    """
    buckets: dict[tuple[Any, tuple[int, ...]], list[int]] = {}
    for j, key in enumerate(keys):
        if key is not None:
            buckets.setdefault(key, []).append(j)
    if not buckets:
        return partials
    partials = partials.clone()
    for (mesh, dims), cols in buckets.items():
        idx = torch.tensor(cols, device=partials.device)
        block = partials.index_select(1, idx)
        for d in dims:
            dist.all_reduce(block, group=mesh.get_group(d))
        partials.index_copy_(1, idx, block)
    return partials


def adam_direction(optimizer: torch.optim.Optimizer, group: dict[str, Any], p: torch.Tensor) -> torch.Tensor | None:
    """u = m̂ / (√v̂ + ε) after the latest step, in fp64 on the rank-local shard (None before any step).

    The optimizer's own direction before the learning rate, for both AdamH and torch Adam/AdamW
    (same state keys): what the effective-LR tracker needs (DESIGN §3.4).
    """
    state = optimizer.state.get(p)
    if not state or "exp_avg" not in state:
        return None
    beta1, beta2 = group["betas"]
    step = float(state["step"])
    denom = local_tensor(state["exp_avg_sq"]).double().div_(1.0 - beta2**step).sqrt_().add_(float(group["eps"]))
    return local_tensor(state["exp_avg"]).double().div_(1.0 - beta1**step).div_(denom)


class AdamH(torch.optim.Optimizer):
    """Adam with hyperball (fixed-norm) updates for groups with `hyperball=True`, plain Adam elsewhere.

    Group keys: lr, betas, eps, weight_decay (decoupled, Adam groups only), hyperball (bool).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        hyperball: bool = False,
    ) -> None:
        _check_hparams(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, hyperball=hyperball)
        super().__init__(params, defaults)
        self._r_cache: dict[tuple[Any, ...], torch.Tensor] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        _check_hparams(lr=g["lr"], betas=g["betas"], eps=g["eps"], weight_decay=g["weight_decay"])
        if g["hyperball"]:
            if g["weight_decay"] != 0:
                raise ValueError(
                    f"weight_decay={g['weight_decay']!r} on a hyperball group: the norm is fixed, so "
                    "weight decay is meaningless there; allowed value: 0.0"
                )
            for p in g["params"]:
                if p.ndim < 2:
                    raise ValueError(
                        f"hyperball=True needs matrices (ndim >= 2); got a parameter of shape {tuple(p.shape)}"
                    )

    def direction(self, p: torch.Tensor) -> torch.Tensor | None:
        """The Adam direction u (before the LR) of `p` after the latest step; see `adam_direction`."""
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return adam_direction(self, group, p)
        raise ValueError("direction(p): p is not a parameter of this optimizer")

    def _gather(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], ...]:
        """Rank-local params / grads / moments / steps of the params that have a gradient (state made lazily)."""
        params, grads, exp_avgs, exp_avg_sqs, steps, owners = [], [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("AdamH does not support sparse gradients")
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            owners.append(p)
            params.append(local_tensor(p))
            grads.append(local_tensor(p.grad))
            exp_avgs.append(local_tensor(state["exp_avg"]))
            exp_avg_sqs.append(local_tensor(state["exp_avg_sq"]))
            steps.append(state["step"])
        return owners, params, grads, exp_avgs, exp_avg_sqs, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        pending = []  # hyperball groups: (group, owners, params, u_raw, kappas)
        for group in self.param_groups:
            owners, params, grads, exp_avgs, exp_avg_sqs, steps = self._gather(group)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            lr = float(group["lr"])
            torch._foreach_add_(steps, 1.0)
            t = [float(s) for s in steps]
            bc1 = [1.0 - beta1**s for s in t]
            bc2_sqrt = [(1.0 - beta2**s) ** 0.5 for s in t]  # as torch's Adam: same bits
            torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
            denom = torch._foreach_sqrt(exp_avg_sqs)
            if group["hyperball"]:
                # u = κ · m / (√v + ε·√bc2) with κ = √bc2 / bc1 (one pass fewer than dividing √v by √bc2).
                torch._foreach_add_(denom, [group["eps"] * b for b in bc2_sqrt])
                for m, d in zip(exp_avgs, denom):  # u_raw = m / denom, written over denom: no new buffer
                    torch.div(m, d, out=d)
                u_raw = denom
                kappas = [b2 / b1 for b1, b2 in zip(bc1, bc2_sqrt)]
                pending.append((group, owners, params, u_raw, kappas))
            else:
                if group["weight_decay"] != 0:
                    torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])
                torch._foreach_div_(denom, bc2_sqrt)
                torch._foreach_add_(denom, group["eps"])
                torch._foreach_addcdiv_(params, exp_avgs, denom, [(lr / b) * -1 for b in bc1])
        if pending:
            self._hyperball_update(pending)
        return loss

    def _hyperball_update(self, pending: list[tuple[Any, ...]]) -> None:
        """Closed-form projected step for every hyperball matrix, with one all-reduce for all of them."""
        all_params = [p for _, _, params, _, _ in pending for p in params]
        all_u = [u for _, _, _, u_raw, _ in pending for u in u_raw]
        all_owners = [o for _, owners, _, _, _ in pending for o in owners]
        device = all_params[0].device
        acc = torch.float64 if any(p.dtype == torch.float64 for p in all_params) else torch.float32
        u_norm = torch._foreach_norm(all_u, 2, dtype=acc)
        w_norm = torch._foreach_norm(all_params, 2, dtype=acc)
        dots = [torch.dot(_flat(w, acc), _flat(u, acc)) for w, u in zip(all_params, all_u)]
        partials = torch.stack(
            [torch.stack(u_norm).square(), torch.stack(dots), torch.stack(w_norm).square()]
        ).to(device)
        partials = all_reduce_partials(partials, [shard_key(o) for o in all_owners]).double()
        uu, wu, ww = partials[0], partials[1], partials[2]

        missing = [j for j, o in enumerate(all_owners) if "R" not in self.state[o]]
        if missing:  # first step of these matrices: R = ‖W₀‖ (one host sync, once per matrix ever)
            captured = ww.index_select(0, torch.tensor(missing, device=device)).sqrt().tolist()
            for j, r in zip(missing, captured):
                self.state[all_owners[j]]["R"] = float(r)
        radius = self._radius_tensor(all_owners, device)

        col = 0
        for group, _owners, params, u_raw, kappas in pending:
            n = len(params)
            sl = slice(col, col + n)
            col += n
            kappa = _scalar_or_tensor(kappas, device)
            u_norm_true = uu[sl].sqrt() * kappa
            s = float(group["lr"]) * radius[sl] / u_norm_true.clamp_min(_NORM_FLOOR)
            b = s * kappa  # coefficient on u_raw
            new_sq = (ww[sl] - 2.0 * b * wu[sl] + b.square() * uu[sl]).clamp_min(0.0)
            a = radius[sl] / new_sq.sqrt().clamp_min(_NORM_FLOOR)
            c = -a * b
            dtype = params[0].dtype
            # W ← a·W + c·u_raw, per-matrix 0-dim coefficients: no host sync on any device.
            torch._foreach_mul_(params, list(a.to(dtype).unbind()))
            torch._foreach_addcmul_(params, u_raw, list(c.to(dtype).unbind()))

    def _radius_tensor(self, owners: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """R of each matrix as an fp64 device tensor, cached by value so it is uploaded once, not per step."""
        values = tuple(self.state[o]["R"] for o in owners)
        key = (device, values)
        cached = self._r_cache.get(key)
        if cached is None:
            self._r_cache.clear()
            cached = torch.tensor(values, dtype=torch.float64, device=device)
            self._r_cache[key] = cached
        return cached

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._r_cache.clear()


def _flat(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1-D view in the accumulation dtype (fp32, or fp64 for fp64 parameters): sums never run in bf16."""
    return t.reshape(-1).to(dtype)


def _scalar_or_tensor(values: list[float], device: torch.device) -> float | torch.Tensor:
    """A Python scalar when all entries agree (the usual case: one step count per group), else a tensor."""
    first = values[0]
    if all(v == first for v in values):
        return first
    return torch.tensor(values, dtype=torch.float64, device=device)


def _check_hparams(*, lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    """Reject bad hyperparameters with errors naming the field and the allowed range."""
    if isinstance(lr, torch.Tensor):
        lr = float(lr)
    if not _is_real(lr) or not lr >= 0 or not math.isfinite(lr):
        raise ValueError(f"lr={lr!r} is invalid; allowed values: a finite float >= 0")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(_is_real(b) and 0 <= b < 1 for b in betas):
        raise ValueError(f"betas={betas!r} is invalid; allowed values: two floats in [0, 1)")
    if not _is_real(eps) or not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"eps={eps!r} is invalid; allowed values: a finite float > 0")
    if not _is_real(weight_decay) or not weight_decay >= 0 or not math.isfinite(weight_decay):
        raise ValueError(f"weight_decay={weight_decay!r} is invalid; allowed values: a finite float >= 0")


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
