"""Effective learning rate and weight-norm tracking (DESIGN §3.4).

At a sampled step t (step % every == 0; the step t → t+1 itself, never a difference over k steps)
for each tracked matrix W:

- η_eff,t = ‖W_{t+1}/‖W_{t+1}‖ − W_t/‖W_t‖‖ (chord on the unit sphere ≈ angle moved),
- ‖W_t‖, ‖u_t‖² and c_t = −⟨u_t, W_t⟩/‖u_t‖², u_t = m̂/(√v̂ + ε) the optimizer's direction before
  the LR (read back from the Adam state after the step; AdamH exposes the same via `direction`).

Tracked: every ≥2-D parameter of groups with role matrix / lm_head / embedding (all ≥2-D params of
groups without a role). "eta_eff/block_mean" and "wnorm/block_mean" average role "matrix" only (the
transformer-block matrices); embeddings and lm_head appear under their own names. Non-sampled steps
cost one modulo. On a sampled step, W_t is copied (param dtype), the sums are computed per matrix
from rank-local shards (fp32 elementwise, fp64 accumulation) and travel in one all-reduce under FSDP2.

`adamw_norm_theory` is the noise-dominated AdamW norm recursion used for theory curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .adamh import AdamH, all_reduce_partials, local_tensor, shard_key

TRACKED_ROLES = ("matrix", "lm_head", "embedding")
BLOCK_ROLE = "matrix"
_CPU_CHUNK = 1 << 16  # elements per chunk on CPU (256 KiB in fp32): temporaries stay in cache


class EffectiveLRTracker:
    """Per-matrix η_eff, ‖W‖, ‖u‖², c at every `every`-th step of an Adam/AdamW/AdamH optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r} is invalid; allowed values: an int >= 1")
        if not isinstance(optimizer, (AdamH, torch.optim.Adam)):
            raise ValueError(
                f"optimizer {type(optimizer).__name__} is unsupported; allowed: AdamH, torch.optim.Adam, torch.optim.AdamW"
            )
        for g in optimizer.param_groups:
            if g.get("amsgrad") or g.get("maximize"):
                raise ValueError("amsgrad=True / maximize=True are unsupported by the tracker; allowed: False")
        self.optimizer = optimizer
        self.every = every
        self._tracked: list[tuple[int, torch.Tensor, str, str]] = []  # (group index, param, name, role)
        for gi, g in enumerate(optimizer.param_groups):
            role = g.get("role")
            if role is not None and role not in TRACKED_ROLES:
                continue
            names = g.get("param_names") or [f"group{gi}.param{j}" for j in range(len(g["params"]))]
            for p, name in zip(g["params"], names):
                if p.ndim >= 2:
                    self._tracked.append((gi, p, name, role or BLOCK_ROLE))
        self._pending: tuple[int, list[torch.Tensor]] | None = None
        self._sum = 0.0
        self._count = 0

    @property
    def eta_eff_mean(self) -> float | None:
        """Mean over all sampled steps of the block-mean η_eff (the one number per run the fits use)."""
        return self._sum / self._count if self._count else None

    def before_step(self, step: int) -> None:
        """Call right before `optimizer.step()`: snapshots W_t on sampled steps, nothing otherwise."""
        if step % self.every != 0 or not self._tracked:
            self._pending = None
            return
        self._pending = (step, [local_tensor(p.detach()).clone() for _, p, _, _ in self._tracked])

    def after_step(self, step: int) -> dict[str, float] | None:
        """Call right after `optimizer.step()`: the metrics dict on sampled steps, else None."""
        if self._pending is None or self._pending[0] != step:
            return None
        snapshot = self._pending[1]
        self._pending = None
        groups = self.optimizer.param_groups
        rows = [
            _matrix_sums(w0, local_tensor(p.detach()), self.optimizer.state.get(p), groups[gi])
            for (gi, p, _, _), w0 in zip(self._tracked, snapshot)
        ]
        partials = all_reduce_partials(torch.stack(rows, dim=1), [shard_key(p) for _, p, _, _ in self._tracked])
        ww0, dd, dw, uu, uw = partials.cpu().tolist()

        out: dict[str, float] = {}
        block_eta, block_w = [], []
        for j, (_, _, name, role) in enumerate(self._tracked):
            n0 = math.sqrt(ww0[j])
            n1 = math.sqrt(max(ww0[j] + 2.0 * dw[j] + dd[j], 0.0))
            eta = _chord(n0, n1, dd[j], dw[j])
            c = -uw[j] / uu[j] if uu[j] > 0 else 0.0
            out[f"eta_eff/{name}"] = eta
            out[f"wnorm/{name}"] = n0
            out[f"unorm2/{name}"] = uu[j]
            out[f"c/{name}"] = c
            if role == BLOCK_ROLE:
                block_eta.append(eta)
                block_w.append(n0)
        if block_eta:
            out["eta_eff/block_mean"] = sum(block_eta) / len(block_eta)
            out["wnorm/block_mean"] = sum(block_w) / len(block_w)
            self._sum += out["eta_eff/block_mean"]
            self._count += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"every": self.every, "sum": self._sum, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("every") != self.every:
            raise ValueError(f"tracker state has every={state.get('every')!r}, this tracker every={self.every}")
        self._sum = float(state["sum"])
        self._count = int(state["count"])


def _matrix_sums(
    w0: torch.Tensor, w1: torch.Tensor, state: dict[str, Any] | None, group: dict[str, Any]
) -> torch.Tensor:
    """[‖W0‖², ‖Δ‖², ⟨Δ,W0⟩, ‖u‖², ⟨u,W0⟩] (Δ = W1 − W0), rank-local, accumulated in fp64.

    Elementwise work runs in fp32 (fp64 for fp64 parameters) over chunks that stay in cache; Δ of
    two nearby fp32 values is exact (Sterbenz), and the chunk sums are added in fp64.
    """
    dtype = torch.float64 if w0.dtype == torch.float64 else torch.float32
    w0, w1 = w0.reshape(-1), w1.reshape(-1)
    has_u = bool(state) and "exp_avg" in state
    if has_u:
        m, v = local_tensor(state["exp_avg"]).reshape(-1), local_tensor(state["exp_avg_sq"]).reshape(-1)
        beta1, beta2 = group["betas"]
        step, eps = float(state["step"]), float(group["eps"])
        bc1, bc2 = 1.0 - beta1**step, 1.0 - beta2**step
    sums = torch.zeros(5, dtype=torch.float64, device=w0.device)
    chunk = _CPU_CHUNK if w0.device.type == "cpu" else max(w0.numel(), 1)
    for i in range(0, w0.numel(), chunk):
        a = w0[i : i + chunk].to(dtype)
        d = w1[i : i + chunk].to(dtype) - a
        parts = [torch.dot(a, a), torch.dot(d, d), torch.dot(d, a)]
        if has_u:  # u = m̂ / (√v̂ + ε), as `adam_direction`
            den = v[i : i + chunk].to(dtype).div(bc2).sqrt_().add_(eps)
            u = m[i : i + chunk].to(dtype).div(bc1).div_(den)
            parts += [torch.dot(u, u), torch.dot(u, a)]
            sums += torch.stack(parts).double()
        else:
            sums[:3] += torch.stack(parts).double()
    return sums


def _chord(n0: float, n1: float, dd: float, dw: float) -> float:
    """‖W1/n1 − W0/n0‖ from ‖Δ‖², ⟨Δ, W0⟩ and the norms (Δ = W1 − W0), without cancellation.

    W1/n1 − W0/n0 = Δ/n1 + α·W0 with α = 1/n1 − 1/n0, so the squared chord is
    ‖Δ‖²/n1² + 2α⟨Δ, W0⟩/n1 + α²n0² — every sum is local, so one all-reduce covers them all.
    """
    if n0 == 0.0 or n1 == 0.0:
        return math.nan
    alpha = (n0 - n1) / (n0 * n1)
    sq = dd / n1**2 + 2.0 * alpha * dw / n1 + alpha**2 * n0**2
    return math.sqrt(max(sq, 0.0))


def adamw_norm_theory(
    lrs: Sequence[float], weight_decay: float, w0_sq: float, u_sq: float | Sequence[float]
) -> list[float]:
    """‖W_t‖ for t = 0..len(lrs) from ‖W_{t+1}‖² = (1 − η_tλ)²‖W_t‖² + η_t²U² (DESIGN §3.4).

    The noise-dominated AdamW recursion (c_t ≈ 0). `u_sq` is U² (one value, e.g. the measured mean
    ‖u‖² or n_entries·(1−β1)/(1+β1), or one value per step); element t is the norm before step t,
    matching the tracker's "wnorm/<name>" at step t.
    """
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} is invalid; allowed values: a finite float >= 0")
    if not math.isfinite(w0_sq) or w0_sq < 0:
        raise ValueError(f"w0_sq={w0_sq!r} is invalid; allowed values: a finite float >= 0")
    lrs = [float(x) for x in lrs]
    u_seq = [float(u_sq)] * len(lrs) if isinstance(u_sq, (int, float)) else [float(x) for x in u_sq]
    if len(u_seq) != len(lrs):
        raise ValueError(f"u_sq has {len(u_seq)} values for {len(lrs)} learning rates; give one value or one per step")
    sq = float(w0_sq)
    out = [math.sqrt(sq)]
    for lr, u2 in zip(lrs, u_seq):
        sq = (1.0 - lr * weight_decay) ** 2 * sq + lr * lr * u2
        out.append(math.sqrt(sq))
    return out


def adamw_equilibrium_eta_eff(lr: float, weight_decay: float, beta1: float = 0.9) -> float:
    """Equilibrium η_eff ≈ √(2ηλ(1−β1)/(1+β1)) of AdamW (also the matching AdamH LR, DESIGN §3.2)."""
    return math.sqrt(2.0 * lr * weight_decay * (1.0 - beta1) / (1.0 + beta1))
