"""Fits of DESIGN §6: η* per cell, η*_eff, scaling laws, curvature, extrapolation and budget.

Everything works in log2 units (x = log2 η, log2 D, log2 N) so intervals, curvature and errors read
as "factors of two". The input is the sweep's results table (one row per run, CONTRACTS.md); the
output is `fits.json`. Fits never raise on thin data: a single LR, an edge minimum, a missing cell
or one model size give flags and nulls, because a real sweep has all of these.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lrtransfer.utils import atomic_write_json, parse_config

GROUP_KEYS = ("model_family", "parameterization", "optimizer")
REQUIRED_COLUMNS = ("model_family", "parameterization", "optimizer", "N", "D", "lr", "status", "val_loss")
STATUSES = ("ok", "diverged", "failed", "stopped")
QUANTITIES = ("eta_star", "eta_eff_star")
FLAG_CI = (2.5, 97.5)  # curvature flags need the 95% interval to exclude 0
# Pairs compared by the study (DESIGN §8): groups that differ only in `field`, values a vs b.
COMPARISONS = (
    ("parameterization", "sp", "mup"),
    ("parameterization", "sp", "completep"),
    ("parameterization", "mup", "completep"),
    ("parameterization", "ngpt", "nugpt"),
    ("optimizer", "adamw", "adamh"),
)


# ----------------------------------------------------------------------------------------------
# small numerics
# ----------------------------------------------------------------------------------------------


def _t_factor(df: int, q_hi: float) -> float:
    """Student-t over normal quantile: widens a bootstrap from few residual degrees of freedom.

    With 5 points and 3 parameters the residuals carry 2 degrees of freedom; a plain bootstrap then
    covers the truth ~58% of the time instead of 68%. Scaling resampled residuals by t/z restores
    the nominal rate for estimators that are close to linear in the data (the vertex near a clear
    minimum is).
    """
    if df <= 0:
        return float("nan")
    return float(stats.t.ppf(q_hi, df) / stats.norm.ppf(q_hi))


def _polyfit(x: np.ndarray, y: np.ndarray, deg: int) -> tuple[np.ndarray, np.ndarray]:
    """Least squares y ≈ Σ c_k x^k; returns (coefs increasing order, the pseudo-inverse rows)."""
    A = np.vander(x, deg + 1, increasing=True)
    pinv = np.linalg.pinv(A)
    return pinv @ y, pinv


def _leverage_residuals(x: np.ndarray, y: np.ndarray, deg: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coefs, fitted, residuals scaled by 1/sqrt(1-h), centered): each has variance σ² again."""
    A = np.vander(x, deg + 1, increasing=True)
    coefs, pinv = _polyfit(x, y, deg)
    fitted = A @ coefs
    h = np.einsum("ij,ji->i", A, pinv)
    r = (y - fitted) / np.sqrt(np.clip(1.0 - h, 1e-12, None))
    return coefs, fitted, r - r.mean()


def _r2(y: np.ndarray, yhat: np.ndarray) -> float | None:
    """1 − SS_res/SS_tot around the mean of y itself; None when y has no spread (undefined)."""
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if len(y) < 2 or ss_tot <= 1e-24:
        return None
    return 1.0 - float(np.sum((y - yhat) ** 2)) / ss_tot


def _f(v: Any) -> float | None:
    """JSON-friendly float: None for None/NaN/inf."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------------------------
# η* per cell
# ----------------------------------------------------------------------------------------------


def _vertex_estimator(coefs: np.ndarray, yw: np.ndarray, xc: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """DESIGN §6 rule, vectorized over bootstrap rows: the vertex when the parabola opens upward
    and its vertex is within one grid step of j*, else the (replicate's) grid argmin.

    coefs: (B, 3) centered at x[j*]; yw: (B, m) window losses; xc: (m,) centered window x.
    Returns (estimate, used_vertex mask).
    """
    c1, c2 = coefs[:, 1], coefs[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = -c1 / (2.0 * c2)
    ok = (c2 > 0) & np.isfinite(v) & (np.abs(v) <= step * (1 + 1e-9))
    argmin = xc[np.argmin(yw, axis=1)]
    return np.where(ok, v, argmin), ok


def fit_cell(
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    diverged_lrs: Sequence[float] = (),
    window: int = 2,
    ci: tuple[float, float] = (16.0, 84.0),
    cubic_tol_log2: float = 0.5,
) -> dict[str, Any]:
    """η* of one (N, D) cell from (LR, loss) pairs (DESIGN §6).

    x = log2 η over the finite points (duplicates averaged); j* = best point; window j*±`window`;
    least-squares quadratic; η* = 2^vertex if curvature > 0 and the vertex is within one grid step
    of j*, else the grid argmin (flag `nonpositive_curvature` / `vertex_far`). j* on an open edge of
    the grid → no η*, flag `extend_grid` (+ `extend_direction`). A diverged LR beyond the edge
    closes that side: extending there cannot help, so the edge point is used (flag `edge_diverged`).
    Interval: residual bootstrap of the whole estimator (leverage-adjusted, t-scaled residuals),
    percentiles `ci`. Cubic cross-check on ≥ 5 window points, flag `cubic_disagrees` beyond
    `cubic_tol_log2`. Non-finite losses are ignored (pass their LRs as `diverged_lrs`).
    """
    lrs_a = np.asarray(lrs, dtype=float).ravel()
    losses_a = np.asarray(losses, dtype=float).ravel()
    if lrs_a.shape != losses_a.shape:
        raise ValueError(f"lrs and losses must have the same length, got {lrs_a.size} and {losses_a.size}")
    if np.any(~(lrs_a > 0)):
        raise ValueError(f"lrs must all be > 0 (finite positive learning rates), got {lrs_a.tolist()}")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be an int >= 0, got {n_boot!r}")
    if window < 1:
        raise ValueError(f"window must be >= 1 grid points, got {window}")
    if not (0 < ci[0] < ci[1] < 100):
        raise ValueError(f"ci must be two percentiles 0 < lo < hi < 100, got {ci}")
    div = np.log2(np.asarray(list(diverged_lrs), dtype=float)) if len(diverged_lrs) else np.zeros(0)

    out: dict[str, Any] = {
        "eta_star": None, "eta_star_lo": None, "eta_star_hi": None,
        "log2_eta_star": None, "log2_eta_star_lo": None, "log2_eta_star_hi": None,
        "method": None, "flags": [], "cubic_log2_eta_star": None,
        "best_loss": None, "best_lr": None, "n_points": 0, "window_lrs": [],
        "quad_center_log2": None, "quad_coefs": None, "extend_direction": None,
    }  # fmt: skip
    flags: list[str] = out["flags"]
    finite = np.isfinite(losses_a)
    if not finite.any():
        flags.append("no_finite_runs")
        return out
    # average duplicate LRs (seeds) in log2 space
    x_all = np.log2(lrs_a[finite])
    x, inv = np.unique(np.round(x_all, 9), return_inverse=True)
    y = np.bincount(inv, weights=losses_a[finite]) / np.bincount(inv)
    n = len(x)
    j = int(np.argmin(y))
    out.update(n_points=n, best_loss=float(y[j]), best_lr=float(2.0 ** x[j]))
    if n == 1:
        flags.append("single_lr")

    open_low = j == 0 and not np.any(div < x[0])
    open_high = j == n - 1 and not np.any(div > x[-1])
    if open_low or open_high:
        flags.append("extend_grid")
        out["extend_direction"] = "both" if (open_low and open_high) else ("down" if open_low else "up")
        return out
    if j == 0 or j == n - 1:
        flags.append("edge_diverged")

    lo, hi = max(0, j - window), min(n - 1, j + window)
    xw, yw = x[lo : hi + 1], y[lo : hi + 1]
    m = len(xw)
    xc = xw - x[j]
    gaps = [x[j] - x[j - 1]] if j > 0 else []
    gaps += [x[j + 1] - x[j]] if j < n - 1 else []
    step = float(max(gaps)) if gaps else 1.0
    out["window_lrs"] = [float(2.0**v) for v in xw]

    if m < 3:
        flags.append("too_few_points")
        out.update(method="grid_argmin", log2_eta_star=float(x[j]), eta_star=float(2.0 ** x[j]))
        flags.append("no_interval")
        return out

    coefs, fitted, r_adj = _leverage_residuals(xc, yw, 2)
    out["quad_center_log2"] = float(x[j])
    out["quad_coefs"] = [float(c) for c in coefs]
    est, used = _vertex_estimator(coefs[None, :], yw[None, :], xc, step)
    v = float(est[0])
    if used[0]:
        out["method"] = "vertex"
    else:
        out["method"] = "grid_argmin"
        flags.append("nonpositive_curvature" if coefs[2] <= 0 else "vertex_far")
    out.update(log2_eta_star=float(x[j] + v), eta_star=float(2.0 ** (x[j] + v)))

    df = m - 3
    if df > 0 and n_boot > 0 and np.any(np.abs(r_adj) > 0):
        kappa = _t_factor(df, ci[1] / 100.0)
        rng = np.random.default_rng(seed)
        ystar = fitted[None, :] + kappa * r_adj[rng.integers(0, m, size=(n_boot, m))]
        _, pinv = _polyfit(xc, yw, 2)
        cstar = ystar @ pinv.T
        vstar, _ = _vertex_estimator(cstar, ystar, xc, step)
        qlo, qhi = np.percentile(vstar, ci)
        out.update(
            log2_eta_star_lo=float(x[j] + qlo), log2_eta_star_hi=float(x[j] + qhi),
            eta_star_lo=float(2.0 ** (x[j] + qlo)), eta_star_hi=float(2.0 ** (x[j] + qhi)),
        )  # fmt: skip
    elif df > 0 and n_boot > 0:  # exact parabola: zero-width interval
        out.update(
            log2_eta_star_lo=out["log2_eta_star"], log2_eta_star_hi=out["log2_eta_star"],
            eta_star_lo=out["eta_star"], eta_star_hi=out["eta_star"],
        )  # fmt: skip
    else:
        flags.append("no_interval")

    if m >= 5:
        cc, _ = _polyfit(xc, yw, 3)
        # stationary points of c0 + c1 x + c2 x² + c3 x³; the local minimum has y'' = 2c2 + 6c3 x > 0
        roots = np.roots([3 * cc[3], 2 * cc[2], cc[1]]) if abs(cc[3]) > 1e-15 else (
            np.array([-cc[1] / (2 * cc[2])]) if cc[2] > 0 else np.zeros(0))  # fmt: skip
        roots = roots[np.isreal(roots)].real
        mins = [r for r in roots if 2 * cc[2] + 6 * cc[3] * r > 0 and xc[0] - step <= r <= xc[-1] + step]
        if mins:
            out["cubic_log2_eta_star"] = float(x[j] + mins[0])
            if abs(mins[0] - v) > cubic_tol_log2:
                flags.append("cubic_disagrees")
        else:
            flags.append("cubic_no_minimum")
    return out


# ----------------------------------------------------------------------------------------------
# laws, extrapolation, budget
# ----------------------------------------------------------------------------------------------


def _poly_bootstrap(
    x: np.ndarray, fitted: np.ndarray, sigma: np.ndarray, deg: int, n_boot: int, seed: int
) -> np.ndarray:
    """Parametric bootstrap of polynomial coefficients: y* = ŷ + σ_i·z (B, deg+1)."""
    rng = np.random.default_rng(seed)
    ystar = fitted[None, :] + sigma[None, :] * rng.standard_normal((n_boot, len(x)))
    _, pinv = _polyfit(x, fitted, deg)
    return ystar @ pinv.T


def fit_law(
    x: Sequence[float],
    y: Sequence[float],
    *,
    y_err: Sequence[float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: tuple[float, float] = (16.0, 84.0),
) -> dict[str, Any]:
    """Linear and quadratic law y(x) in log2 units (x = log2 D or log2 N, y = log2 η*).

    c2 (the quadratic coefficient) is the curvature: c2 > 0 bends upward. Its interval comes from a
    parametric bootstrap whose per-point noise is the larger of the fit's residual scale (t-scaled for
    its few degrees of freedom, as in `fit_cell`) and the point's own η* uncertainty `y_err` (half its 16–84%
    width): with 3–4 scales the residuals alone have 0–1 degrees of freedom, so the cell intervals
    are what keeps the curvature honest. Flags `upward_curvature` /
    `downward_curvature` from the 2.5–97.5% interval (`c2_lo95`, `c2_hi95`): a flag at 1σ would
    fire on one straight law in six.
    """
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    ea = np.zeros_like(ya) if y_err is None else np.asarray(y_err, dtype=float).ravel()
    if ea.shape != ya.shape:
        raise ValueError(f"y_err must have the same length as y, got {ea.size} and {ya.size}")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be an int >= 0, got {n_boot!r}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya, ea = xa[keep], ya[keep], np.nan_to_num(ea[keep], nan=0.0, posinf=0.0)
    order = np.argsort(xa)
    xa, ya, ea = xa[order], ya[order], ea[order]
    n, k = len(xa), len(np.unique(xa))
    q = ci[1] / 100.0
    out: dict[str, Any] = {"n": n, "x": xa.tolist(), "y": ya.tolist(), "y_err": ea.tolist(),
                           "linear": None, "quadratic": None, "flags": []}  # fmt: skip
    if k < 2:
        out["flags"].append("too_few_points")
        return out
    x0 = float(xa.mean())
    xc = xa - x0

    # linear
    (b0, b1), _ = _polyfit(xc, ya, 1)
    yhat = b0 + b1 * xc
    rss = float(np.sum((ya - yhat) ** 2))
    sig = math.sqrt(rss / (n - 2)) * _t_factor(n - 2, q) if n > 2 else 0.0
    sigma = np.maximum(sig, ea)
    lin = {"slope": float(b1), "intercept": float(b0 - b1 * x0), "x_center": x0,
           "r2": _r2(ya, yhat), "rmse_log2": math.sqrt(rss / n), "slope_lo": None, "slope_hi": None}  # fmt: skip
    if n_boot > 0 and np.any(sigma > 0):
        cs = _poly_bootstrap(xc, yhat, sigma, 1, n_boot, seed)
        lin["slope_lo"], lin["slope_hi"] = (float(v) for v in np.percentile(cs[:, 1], ci))
    out["linear"] = lin
    if k < 3:
        return out

    # quadratic
    (q0, q1, q2), _ = _polyfit(xc, ya, 2)
    yq = q0 + q1 * xc + q2 * xc**2
    rss_q = float(np.sum((ya - yq) ** 2))
    sig_q = math.sqrt(rss_q / (n - 3)) * _t_factor(n - 3, q) if n > 3 else 0.0
    sigma_q = np.maximum(sig_q, ea)
    quad = {"c0": float(q0 - q1 * x0 + q2 * x0 * x0), "c1": float(q1 - 2 * q2 * x0), "c2": float(q2),
            "x_center": x0, "r2": _r2(ya, yq), "rmse_log2": math.sqrt(rss_q / n),
            "c2_lo": None, "c2_hi": None, "c2_lo95": None, "c2_hi95": None}  # fmt: skip
    if n_boot > 0 and np.any(sigma_q > 0):
        cs = _poly_bootstrap(xc, yq, sigma_q, 2, n_boot, seed + 1)
        quad["c2_lo"], quad["c2_hi"] = (float(v) for v in np.percentile(cs[:, 2], ci))
        quad["c2_lo95"], quad["c2_hi95"] = (float(v) for v in np.percentile(cs[:, 2], FLAG_CI))
        if quad["c2_lo95"] > 0:
            out["flags"].append("upward_curvature")
        elif quad["c2_hi95"] < 0:
            out["flags"].append("downward_curvature")
    elif n_boot > 0 and rss_q <= 1e-20 and n > 3:  # exact parabola through ≥ 4 points
        quad["c2_lo"] = quad["c2_hi"] = quad["c2_lo95"] = quad["c2_hi95"] = float(q2)
        if q2 > 1e-12:
            out["flags"].append("upward_curvature")
        elif q2 < -1e-12:
            out["flags"].append("downward_curvature")
    else:
        out["flags"].append("no_interval")
    out["quadratic"] = quad
    return out


def fit_joint(log2_N: Sequence[float], log2_D: Sequence[float], log2_eta: Sequence[float]) -> dict[str, Any]:
    """Joint law log2 η* = c − a·log2 N − b·log2 D (a, b do not depend on the log base; c does)."""
    ln, ld, y = (np.asarray(v, dtype=float).ravel() for v in (log2_N, log2_D, log2_eta))
    keep = np.isfinite(ln) & np.isfinite(ld) & np.isfinite(y)
    ln, ld, y = ln[keep], ld[keep], y[keep]
    out: dict[str, Any] = {"c": None, "a": None, "b": None, "r2": None, "rmse_log2": None,
                           "n": int(len(y)), "log_base": 2, "flags": []}  # fmt: skip
    if len(np.unique(ln)) < 2 or len(np.unique(ld)) < 2 or len(y) < 3:
        out["flags"].append("underdetermined")
        return out
    A = np.column_stack([np.ones_like(ln), -ln, -ld])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    yhat = A @ coef
    out.update(c=float(coef[0]), a=float(coef[1]), b=float(coef[2]), r2=_r2(y, yhat),
               rmse_log2=float(np.sqrt(np.mean((y - yhat) ** 2))))  # fmt: skip
    return out


def extrapolate(x: Sequence[float], y: Sequence[float], fit_mask: Sequence[bool]) -> dict[str, Any]:
    """Fit the line on the points in `fit_mask` (the small scales), predict the others (DESIGN §6).

    r2_ood = 1 − Σ(y−ŷ)²/Σ(y−ȳ)² over the held-out points (ȳ their mean; None with < 2 held-out
    points or no spread), rmse_ood_log2, and extrapolation_ratio = η*_obs/η*_pred at the largest
    held-out scale (> 1: the law under-predicts).
    """
    xa, ya = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    fm = np.asarray(fit_mask, dtype=bool).ravel()
    if not (xa.shape == ya.shape == fm.shape):
        raise ValueError(f"x, y and fit_mask must have the same length, got {xa.size}, {ya.size}, {fm.size}")
    out: dict[str, Any] = {"fit_x": xa[fm].tolist(), "heldout_x": xa[~fm].tolist(), "slope": None,
                           "intercept": None, "predicted_log2": [], "observed_log2": ya[~fm].tolist(),
                           "r2_ood": None, "rmse_ood_log2": None, "extrapolation_ratio": None, "flags": []}  # fmt: skip
    if len(np.unique(xa[fm])) < 2:
        out["flags"].append("too_few_fit_points")
        return out
    (b0, b1), _ = _polyfit(xa[fm], ya[fm], 1)
    out.update(slope=float(b1), intercept=float(b0))
    if fm.all():
        out["flags"].append("no_heldout")
        return out
    xo, yo = xa[~fm], ya[~fm]
    yp = b0 + b1 * xo
    out["predicted_log2"] = yp.tolist()
    out["r2_ood"] = _r2(yo, yp)
    out["rmse_ood_log2"] = float(np.sqrt(np.mean((yo - yp) ** 2)))
    last = int(np.argmax(xo))
    out["extrapolation_ratio"] = float(2.0 ** (yo[last] - yp[last]))
    return out


def budget_sweep(scales: Sequence[float], y: Sequence[float], *, threshold: float = 0.9) -> dict[str, Any]:
    """r2_ood as a function of ρ = C_fit/C_target along one axis (the other held at its full value).

    Along D (full N) ρ = D_fit_max/D_target; along N (full D) ρ = N_fit_max/N_target, since C = 6ND.
    Each ρ fits the line on the scales ≤ ρ·target and scores the larger ones.
    `budget_to_r2_0.9`: the smallest ρ with r2_ood ≥ threshold (None if none).
    """
    s = np.asarray(scales, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    order = np.argsort(s)
    s, ya = s[order], ya[order]
    out: dict[str, Any] = {"target": _f(s[-1]) if len(s) else None, "sweep": [], f"budget_to_r2_{threshold:g}": None}
    if len(s) < 3:
        return out
    xs = np.log2(s)
    for cut in np.unique(s)[:-1]:
        mask = s <= cut
        if len(np.unique(s[mask])) < 2:
            continue
        e = extrapolate(xs, ya, mask)
        out["sweep"].append({"rho": float(cut / s[-1]), "n_fit": int(mask.sum()), "r2_ood": e["r2_ood"],
                             "rmse_ood_log2": e["rmse_ood_log2"], "extrapolation_ratio": e["extrapolation_ratio"]})  # fmt: skip
    good = [p["rho"] for p in out["sweep"] if p["r2_ood"] is not None and p["r2_ood"] >= threshold]
    out[f"budget_to_r2_{threshold:g}"] = min(good) if good else None
    return out


# ----------------------------------------------------------------------------------------------
# results table -> fits
# ----------------------------------------------------------------------------------------------


@dataclass
class FitConfig:
    """`lrtransfer fit` options."""

    results: str = field(metadata={"help": "results table (parquet, csv or jsonl), one row per run"})
    out: str = field(metadata={"help": "output folder; fits.json is written there"})
    window: int | None = field(
        default=None, metadata={"help": "extrapolation: fit on this many smallest scales (default: half, ≥ 2)"}
    )
    window_D_max: float | None = field(default=None, metadata={"help": "extrapolation along D: fit on D <= this"})
    window_N_max: float | None = field(default=None, metadata={"help": "extrapolation along N: fit on N <= this"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap replicates for intervals"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    cell_window: int = field(default=2, metadata={"help": "η* fit window: j* ± this many grid points"})
    cubic_tol_log2: float = field(default=0.5, metadata={"help": "cubic vs quadratic disagreement flag (log2)"})
    quiet: bool = field(default=False, metadata={"help": "do not print the summary table"})


_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(FitConfig) if f.name not in ("results", "out", "quiet"))


def load_results(table_or_path: pd.DataFrame | str | os.PathLike) -> tuple[pd.DataFrame, str | None]:
    """Read a results table (DataFrame, .parquet, .csv, .json/.jsonl) and check its columns."""
    path = None
    if isinstance(table_or_path, pd.DataFrame):
        df = table_or_path.copy()
    else:
        path = str(table_or_path)
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"results={path}: no such file")
        suffix = p.suffix.lower()
        if suffix == ".parquet":
            df = pd.read_parquet(p)
        elif suffix == ".csv":
            df = pd.read_csv(p)
        elif suffix in (".jsonl", ".json"):
            df = pd.read_json(p, lines=suffix == ".jsonl")
        else:
            raise ValueError(f"results={path}: unknown file type {suffix!r}; allowed: .parquet, .csv, .jsonl, .json")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results table lacks column(s) {missing}; required: {list(REQUIRED_COLUMNS)}")
    bad = sorted(set(df["status"].astype(str)) - set(STATUSES))
    if bad:
        raise ValueError(f"results column 'status' has value(s) {bad}; allowed: {list(STATUSES)}")
    for col, default in (("run_id", None), ("config_hash", None), ("seed", 0), ("eta_eff_mean", np.nan),
                         ("hidden_size", None), ("num_hidden_layers", None)):  # fmt: skip
        if col not in df.columns:
            df[col] = default
    if df["run_id"].isna().any():
        df.loc[df["run_id"].isna(), "run_id"] = [f"row{i}" for i in np.flatnonzero(df["run_id"].isna())]
    for col in ("N", "D", "lr", "val_loss", "eta_eff_mean"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df.reset_index(drop=True), path


def _cell_points(cell: pd.DataFrame) -> dict[str, Any]:
    """Seed-average one cell: finite runs → (lr, mean loss, mean log2 η_eff); diverged LRs kept apart."""
    finite_ok = (cell["status"] == "ok") & np.isfinite(cell["val_loss"])
    ok = cell[finite_ok]
    # a run marked ok with a non-finite loss diverged in all but name
    diverged = cell[(cell["status"] == "diverged") | ((cell["status"] == "ok") & ~finite_ok)]
    failed = cell[cell["status"] == "failed"]
    lrs, losses, effs, nseeds = [], [], [], []
    for lr, g in ok.groupby("lr", sort=True):
        lrs.append(float(lr))
        losses.append(float(g["val_loss"].mean()))
        e = g["eta_eff_mean"].to_numpy(dtype=float)
        e = e[np.isfinite(e) & (e > 0)]
        effs.append(float(2.0 ** np.mean(np.log2(e))) if len(e) else None)
        nseeds.append(int(len(g)))
    div_lrs = sorted(set(diverged["lr"].astype(float)) - set(lrs))
    partial = sorted(set(diverged["lr"].astype(float)) & set(lrs))
    return {"lrs": lrs, "losses": losses, "eta_effs": effs, "n_seeds": nseeds, "diverged_lrs": div_lrs,
            "partially_diverged_lrs": partial, "failed_lrs": sorted(set(failed["lr"].astype(float)) - set(lrs)),
            "run_ids": [str(r) for r in cell["run_id"]],
            "used_run_ids": [str(r) for r in ok["run_id"]]}  # fmt: skip


def _fit_one_cell(cell: pd.DataFrame, opts: dict[str, Any], seed: int) -> dict[str, Any]:
    pts = _cell_points(cell)
    kw = dict(n_boot=opts["n_boot"], seed=seed, window=opts["cell_window"], cubic_tol_log2=opts["cubic_tol_log2"])
    r = fit_cell(pts["lrs"], pts["losses"] if pts["lrs"] else [], diverged_lrs=pts["diverged_lrs"], **kw)
    # η*_eff: the same fit with x = log2 eta_eff_mean. A diverged LR has no η_eff, but its side of
    # the LR grid still closes the bowl; map it beyond the finite η_eff range on the same side.
    have = [i for i, e in enumerate(pts["eta_effs"]) if e is not None]
    if have:
        lr_f = [pts["lrs"][i] for i in have]
        div_eff = [math.inf for d in pts["diverged_lrs"] if d > max(lr_f)]
        div_eff += [1e-300 for d in pts["diverged_lrs"] if d < min(lr_f)]
        re = fit_cell([pts["eta_effs"][i] for i in have], [pts["losses"][i] for i in have],
                      diverged_lrs=div_eff, **kw)  # fmt: skip
    else:
        re = {"eta_star": None, "eta_star_lo": None, "eta_star_hi": None, "log2_eta_star": None,
              "log2_eta_star_lo": None, "log2_eta_star_hi": None, "flags": ["no_eta_eff"],
              "quad_center_log2": None, "quad_coefs": None, "window_lrs": []}  # fmt: skip
    first = cell.iloc[0]
    flags = list(r["flags"]) + (["partially_diverged"] if pts["partially_diverged_lrs"] else [])
    return {
        "N": int(first["N"]), "D": int(first["D"]),
        "hidden_size": None if pd.isna(first["hidden_size"]) else int(first["hidden_size"]),
        "num_hidden_layers": None if pd.isna(first["num_hidden_layers"]) else int(first["num_hidden_layers"]),
        "eta_star": r["eta_star"], "eta_star_lo": r["eta_star_lo"], "eta_star_hi": r["eta_star_hi"],
        "log2_eta_star": r["log2_eta_star"], "log2_eta_star_lo": r["log2_eta_star_lo"],
        "log2_eta_star_hi": r["log2_eta_star_hi"], "method": r["method"], "flags": flags,
        "extend_direction": r["extend_direction"], "cubic_log2_eta_star": r["cubic_log2_eta_star"],
        "eta_eff_star": re["eta_star"], "eta_eff_star_lo": re["eta_star_lo"], "eta_eff_star_hi": re["eta_star_hi"],
        "log2_eta_eff_star": re["log2_eta_star"], "log2_eta_eff_star_lo": re["log2_eta_star_lo"],
        "log2_eta_eff_star_hi": re["log2_eta_star_hi"], "eta_eff_flags": re["flags"],
        "best_loss": r["best_loss"], "best_lr": r["best_lr"],
        "lrs": pts["lrs"], "losses": pts["losses"], "eta_effs": pts["eta_effs"], "n_seeds": pts["n_seeds"],
        "diverged_lrs": pts["diverged_lrs"], "failed_lrs": pts["failed_lrs"],
        "window_lrs": r["window_lrs"], "quad_center_log2": r["quad_center_log2"], "quad_coefs": r["quad_coefs"],
        "eff_window": re["window_lrs"], "eff_quad_center_log2": re["quad_center_log2"],
        "eff_quad_coefs": re["quad_coefs"],
        "run_ids": pts["run_ids"], "used_run_ids": pts["used_run_ids"],
        "config_hashes": sorted({str(h) for h in cell["config_hash"] if h is not None and not pd.isna(h)}),
    }  # fmt: skip


def _series(cells: list[dict], q: str, axis: str) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per fixed value of the other axis: (scales, log2 η, log2 half-interval) of cells with a value."""
    fixed_key, scale_key = ("N", "D") if axis == "along_D" else ("D", "N")
    key = "log2_eta_star" if q == "eta_star" else "log2_eta_eff_star"
    out: dict[int, list] = {}
    for c in cells:
        if c[key] is None:
            continue
        lo, hi = c[key + "_lo"], c[key + "_hi"]
        err = 0.5 * (hi - lo) if lo is not None and hi is not None else 0.0
        out.setdefault(c[fixed_key], []).append((c[scale_key], c[key], err))
    return {k: tuple(np.array(v, dtype=float).T) for k, v in sorted(out.items()) if v}  # type: ignore[misc]


def _fit_mask(scales: np.ndarray, axis: str, opts: dict[str, Any]) -> np.ndarray:
    vmax = opts["window_D_max"] if axis == "along_D" else opts["window_N_max"]
    if vmax is not None:
        return scales <= vmax * (1 + 1e-9)
    uniq = np.unique(scales)
    k = opts["window"] if opts["window"] is not None else max(2, math.ceil(len(uniq) / 2))
    return scales <= uniq[min(k, len(uniq)) - 1]


def _full_value(series: dict[int, tuple], min_points: int = 3) -> int | None:
    """The 'full' fixed value for the budget sweep: the largest one with ≥ min_points scales."""
    if not series:
        return None
    rich = [k for k, v in series.items() if len(v[0]) >= min_points]
    return max(rich) if rich else max(series)


def _fit_group(gdf: pd.DataFrame, opts: dict[str, Any]) -> dict[str, Any]:
    cells = []
    for i, (_, cell) in enumerate(gdf.groupby(["N", "D"], sort=True)):
        cells.append(_fit_one_cell(cell, opts, opts["seed"] + i))
    laws: dict[str, Any] = {}
    extrap: dict[str, Any] = {}
    budget: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for q in QUANTITIES:
        laws[q], extrap[q], budget[q], summary[q] = {}, {}, {}, {}
        for axis in ("along_D", "along_N"):
            series = _series(cells, q, axis)
            laws[q][axis], extrap[q][axis] = {}, {}
            for fixed, (s, y, e) in series.items():
                law = fit_law(np.log2(s), y, y_err=e, n_boot=opts["n_boot"], seed=opts["seed"])
                law["scales"] = s.tolist()
                laws[q][axis][str(fixed)] = law
                ex = extrapolate(np.log2(s), y, _fit_mask(s, axis, opts))
                ex["fit_scales"] = s[_fit_mask(s, axis, opts)].tolist()
                ex["heldout_scales"] = s[~_fit_mask(s, axis, opts)].tolist()
                extrap[q][axis][str(fixed)] = ex
            full = _full_value(series)
            if full is not None:
                s, y, _ = series[full]
                b = budget_sweep(s, y)
                b["fixed"] = full
                budget[q][axis] = b
            else:
                budget[q][axis] = {"target": None, "sweep": [], "budget_to_r2_0.9": None, "fixed": None}
            lin = [v["linear"] for v in laws[q][axis].values() if v["linear"] is not None]
            c2s = [v["quadratic"]["c2"] for v in laws[q][axis].values() if v["quadratic"] is not None]
            ranges = [float(np.ptp(v["y"])) for v in laws[q][axis].values() if v["n"] >= 2]
            summary[q][axis] = {
                "slope_mean": _f(np.mean([v["slope"] for v in lin])) if lin else None,
                "linear_rmse_log2_mean": _f(np.mean([v["rmse_log2"] for v in lin])) if lin else None,
                "c2_mean": _f(np.mean(c2s)) if c2s else None,
                "range_log2_mean": _f(np.mean(ranges)) if ranges else None,
                "r2_ood_full": extrap[q][axis].get(str(full), {}).get("r2_ood") if full is not None else None,
                "extrapolation_ratio_full": extrap[q][axis].get(str(full), {}).get("extrapolation_ratio")
                if full is not None else None,
                "budget_to_r2_0.9": budget[q][axis]["budget_to_r2_0.9"],
            }  # fmt: skip
        pts = [(c["N"], c["D"], c["log2_eta_star" if q == "eta_star" else "log2_eta_eff_star"]) for c in cells]
        pts = [p for p in pts if p[2] is not None]
        joint = fit_joint([math.log2(p[0]) for p in pts], [math.log2(p[1]) for p in pts], [p[2] for p in pts])
        laws[q]["joint"] = joint
    status_counts = {s: int((gdf["status"] == s).sum()) for s in STATUSES}
    first = gdf.iloc[0]
    return {
        **{k: str(first[k]) for k in GROUP_KEYS},
        "n_runs": int(len(gdf)), "status_counts": status_counts,
        "Ns": sorted({int(v) for v in gdf["N"]}), "Ds": sorted({int(v) for v in gdf["D"]}),
        "cells": cells, "laws": laws, "extrapolation": extrap, "budget": budget, "summary": summary,
    }  # fmt: skip


def _comparisons(groups: list[dict]) -> list[dict[str, Any]]:
    """Pairs of groups that differ in one field only (SP vs μP, nGPT vs νGPT, AdamW vs AdamH)."""
    out = []
    for fld, a, b in COMPARISONS:
        for ga in groups:
            if ga[fld] != a:
                continue
            for gb in groups:
                if gb[fld] != b or any(ga[k] != gb[k] for k in GROUP_KEYS if k != fld):
                    continue
                entry: dict[str, Any] = {"field": fld, "a": a, "b": b,
                                         **{k: ga[k] for k in GROUP_KEYS if k != fld}}  # fmt: skip
                for q in QUANTITIES:
                    entry[q] = {side: {axis: ga_["summary"][q][axis] for axis in ("along_D", "along_N")}
                                for side, ga_ in (("a", ga), ("b", gb))}  # fmt: skip
                out.append(entry)
    return out


def fit_results(table_or_path: pd.DataFrame | str | os.PathLike, **options: Any) -> dict[str, Any]:
    """All fits of DESIGN §6 for a results table, per (model_family, parameterization, optimizer).

    options: window, window_D_max, window_N_max, n_boot, seed, cell_window, cubic_tol_log2 (see
    FitConfig). Returns the fits.json dict (write it with `write_fits`).
    """
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise ValueError(f"fit_results: unknown option(s) {unknown}; allowed: {list(_OPTION_NAMES)}")
    defaults = {f.name: f.default for f in dataclasses.fields(FitConfig) if f.name in _OPTION_NAMES}
    opts = {**defaults, **options}
    if opts["window"] is not None and opts["window"] < 2:
        raise ValueError(f"window must be >= 2 scales (a line needs two points), got {opts['window']}")
    for k in ("window_D_max", "window_N_max"):
        if opts[k] is not None and not opts[k] > 0:
            raise ValueError(f"{k} must be > 0, got {opts[k]}")
    if not isinstance(opts["n_boot"], (int, np.integer)) or opts["n_boot"] < 0:
        raise ValueError(f"n_boot must be an int >= 0, got {opts['n_boot']!r}")
    if opts["cell_window"] < 1:
        raise ValueError(f"cell_window must be >= 1, got {opts['cell_window']}")
    df, path = load_results(table_or_path)
    groups = [_fit_group(gdf, opts) for _, gdf in df.groupby(list(GROUP_KEYS), sort=True)]
    provenance: dict[str, Any] = {
        "results": path,
        "run_ids": [str(r) for r in df["run_id"]],
        "config_hashes": sorted({str(h) for h in df["config_hash"] if h is not None and not pd.isna(h)}),
        "used_run_ids": sorted({r for g in groups for c in g["cells"] for r in c["used_run_ids"]}),
        "excluded_run_ids": {s: [str(r) for r in df.loc[df["status"] == s, "run_id"]]
                             for s in ("diverged", "failed", "stopped")},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    if path is not None:
        provenance["results_sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"provenance": provenance, "options": opts, "groups": groups, "comparisons": _comparisons(groups)}


def write_fits(fits: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write `fits.json` atomically into out_dir."""
    path = Path(out_dir) / "fits.json"
    atomic_write_json(path, fits)
    return path


# ----------------------------------------------------------------------------------------------
# terminal table + CLI
# ----------------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def format_table(fits: dict[str, Any]) -> str:
    """A concise text summary: η* per cell with interval and flags, then the laws per group."""
    lines: list[str] = []
    for g in fits["groups"]:
        sc = g["status_counts"]
        lines.append(f"== {g['model_family']} / {g['parameterization']} / {g['optimizer']}  "
                     f"({g['n_runs']} runs: {sc['ok']} ok, {sc['diverged']} diverged, {sc['failed']} failed)")  # fmt: skip
        lines.append(f"  {'N':>10} {'D':>12} {'eta*':>9} {'[16%':>9} {'84%]':>9} {'eta*_eff':>9} {'loss':>7}  flags")
        for c in g["cells"]:
            lines.append(f"  {c['N']:>10,} {c['D']:>12,} {_fmt(c['eta_star']):>9} {_fmt(c['eta_star_lo']):>9} "
                         f"{_fmt(c['eta_star_hi']):>9} {_fmt(c['eta_eff_star']):>9} {_fmt(c['best_loss'], '.4f'):>7}  "
                         f"{','.join(c['flags'])}")  # fmt: skip
        for q in QUANTITIES:
            for axis in ("along_D", "along_N"):
                for fixed, law in g["laws"][q][axis].items():
                    lin, quad = law["linear"], law["quadratic"]
                    if lin is None:
                        continue
                    ex = g["extrapolation"][q][axis][fixed]
                    c2 = "" if quad is None else (f" c2={quad['c2']:+.3f} [{_fmt(quad['c2_lo'], '+.3f')}, "
                                                  f"{_fmt(quad['c2_hi'], '+.3f')}]")  # fmt: skip
                    lines.append(f"  {q:<12} {axis} {'N' if axis == 'along_D' else 'D'}={int(fixed):,}: "
                                 f"slope={lin['slope']:+.3f}{c2} r2_ood={_fmt(ex['r2_ood'], '.3f')} "
                                 f"ratio={_fmt(ex['extrapolation_ratio'], '.3f')} {','.join(law['flags'])}")  # fmt: skip
            j = g["laws"][q]["joint"]
            if j["a"] is not None:
                lines.append(f"  {q:<12} joint: log2 eta = {j['c']:.3f} - {j['a']:.3f} log2 N - {j['b']:.3f} log2 D"
                             f" (rmse {j['rmse_log2']:.3f} log2)")  # fmt: skip
            b = g["budget"][q]
            lines.append(f"  {q:<12} budget_to_r2_0.9: along_D={_fmt(b['along_D']['budget_to_r2_0.9'])} "
                         f"along_N={_fmt(b['along_N']['budget_to_r2_0.9'])}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`lrtransfer fit --results results.parquet --out DIR [--window K] ...`"""
    (cfg,) = parse_config([FitConfig], argv)
    options = {k: getattr(cfg, k) for k in _OPTION_NAMES}
    fits = fit_results(cfg.results, **options)
    path = write_fits(fits, cfg.out)
    if not cfg.quiet:
        print(format_table(fits))
        print(f"wrote {path}")
    return 0
