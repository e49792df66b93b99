"""PNG plots of DESIGN §7 from fits.json, results.parquet and run folders.

Figures are built on `matplotlib.figure.Figure` (Agg, no pyplot state), so plotting never touches a
display or another caller's figures, and written atomically. Every axis says what it measures and
in which unit; every η* is a star with its 16–84% interval; held-out points are hollow.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, Locator, NullLocator

from lrtransfer.fit import QUANTITIES, load_results
from lrtransfer.utils import atomic_write_bytes, parse_config

QLABEL = {"eta_star": "η*", "eta_eff_star": "η*_eff"}
QKEY = {"eta_star": "log2_eta_star", "eta_eff_star": "log2_eta_eff_star"}
PAIR_COLORS = ("tab:blue", "tab:red")
NON_BLOCK = ("wte", "wpe", "lm_head", "embed")  # matrices outside the transformer blocks


def _si(v: float) -> str:
    """1_600_000 -> '1.6M': compact labels for N and D."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def _tag(group: dict[str, Any]) -> str:
    return f"{group['model_family']}_{group['parameterization']}_{group['optimizer']}"


def _title(group: dict[str, Any]) -> str:
    return f"{group['model_family']} · {group['parameterization']} · {group['optimizer']}"


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _grid(
    n: int, *, width: float = 3.6, height: float = 2.8, max_cols: int = 3, right: float = 0.25, bottom: float = 0.6
) -> tuple[Figure, list[Axes]]:
    """A grid of `n` panels of width × height inches with fixed margins (inches).

    Fixed margins instead of constrained layout: half the rendering time, and the room for a
    figure legend (`right`) or legends under the panels (`bottom`) is explicit.
    """
    cols = min(max(n, 1), max_cols)
    rows = math.ceil(max(n, 1) / cols)
    left, top, wgap, hgap = 1.1, 0.75, 1.15, 0.85
    W = left + cols * width + (cols - 1) * wgap + right
    H = top + rows * height + (rows - 1) * hgap + bottom
    fig = Figure(figsize=(W, H))
    fig.subplots_adjust(left=left / W, right=1 - right / W, bottom=bottom / H, top=1 - top / H,
                        wspace=wgap / width, hspace=hgap / height)  # fmt: skip
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(max(n, 1))]
    return fig, axes


def _empty(ax: Axes, message: str) -> None:
    """A panel with nothing to show says why, without meaningless ticks."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=9)


def _colors(n: int) -> list:
    cmap = colormaps["viridis"]
    return [cmap(0.05 + 0.8 * i / max(n - 1, 1)) for i in range(n)]


class _Log2Locator(Locator):
    """Ticks at 2^(k·step), step ∈ {…, 2, 1, ½, ¼, ⅛} (≥ min_step) chosen for 3–8 ticks: a range
    under a factor of two (common for η*) still gets readable ticks, where matplotlib's log locator
    leaves one or none. Swept counts (D, N, width, ρ) keep whole powers of two (min_step=1)."""

    def __init__(self, min_step: float = 0.125) -> None:
        self.min_step = min_step

    def __call__(self) -> np.ndarray:
        vmin, vmax = self.axis.get_view_interval()
        return self.tick_values(vmin, vmax)

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        if not (vmin > 0 and vmax > 0):
            return np.zeros(0)
        lo, hi = sorted((math.log2(vmin), math.log2(vmax)))
        step = 2.0 ** math.ceil(math.log2(max((hi - lo) / 8, 1e-9)))
        step = max(step, self.min_step)
        while step > self.min_step and math.floor(hi / step) - math.ceil(lo / step) + 1 < 3:
            step /= 2
        return 2.0 ** (np.arange(math.ceil(lo / step), math.floor(hi / step) + 1) * step)


def _log2_axis(ax: Axes, which: str, *, si: bool = False, whole: bool = False) -> None:
    """Log axis in base 2 (η, D and N are swept in powers of two): decimal η values, SI counts."""
    getattr(ax, f"set_{which}scale")("log", base=2)
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(_Log2Locator(1.0 if (si or whole) else 0.125))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: (_si(v) if si else f"{v:.3g}") if v > 0 else ""))
    axis.set_minor_locator(NullLocator())


# ----------------------------------------------------------------------------------------------
# loss vs log2 η per cell
# ----------------------------------------------------------------------------------------------


def _draw_cell(ax: Axes, cell: dict[str, Any], color: Any, label: str | None, seeds: pd.DataFrame | None) -> None:
    x = np.log2(cell["lrs"]) if cell["lrs"] else np.zeros(0)
    y = np.asarray(cell["losses"], dtype=float)
    ax.plot(x, y, "o-", color=color, ms=4, lw=1.2, label=label)
    if seeds is not None and len(seeds) and (seeds.groupby("lr").size() > 1).any():
        ok = seeds[(seeds["status"] == "ok") & np.isfinite(seeds["val_loss"])]
        ax.plot(np.log2(ok["lr"]), ok["val_loss"], ".", color=color, ms=3, alpha=0.45)
    if cell.get("quad_coefs") is not None and cell.get("window_lrs"):
        xw = np.log2(cell["window_lrs"])
        xs = np.linspace(xw.min(), xw.max(), 60)
        c0, c1, c2 = cell["quad_coefs"]
        d = xs - cell["quad_center_log2"]
        ax.plot(xs, c0 + c1 * d + c2 * d * d, "--", color=color, lw=1.0, alpha=0.9)
    if cell.get("log2_eta_star") is not None:
        xv = cell["log2_eta_star"]
        if cell.get("quad_coefs") is not None:
            c0, c1, c2 = cell["quad_coefs"]
            d = xv - cell["quad_center_log2"]
            yv = c0 + c1 * d + c2 * d * d
        else:
            yv = cell["best_loss"]
        lo, hi = cell.get("log2_eta_star_lo"), cell.get("log2_eta_star_hi")
        xerr = None if lo is None else [[max(xv - lo, 0.0)], [max(hi - xv, 0.0)]]
        ax.errorbar([xv], [yv], xerr=xerr, fmt="*", color=color, mec="black", mew=0.6, ms=13, capsize=3,
                    elinewidth=1.2, zorder=5)  # fmt: skip
    elif cell["lrs"]:  # no η*: mark the best grid point and say why
        j = int(np.argmin(y))
        ax.plot([x[j]], [y[j]], "s", mfc="none", mec=color, ms=9, mew=1.5)


def _loss_ylim(ax: Axes, cells: list[dict[str, Any]]) -> None:
    """Show each bowl's fit window (j* ± 2) in full and cut the far tails, whose losses at bad LRs
    would otherwise flatten every minimum."""
    lo, top = math.inf, -math.inf
    for c in cells:
        y = np.asarray(c["losses"], float)
        if not len(y):
            continue
        j = int(np.argmin(y))
        lo, top = min(lo, y[j]), max(top, y[max(0, j - 2) : j + 3].max())
    if math.isfinite(lo):
        pad = max(top - lo, 1e-3)
        ax.set_ylim(lo - 0.08 * pad, top + 0.12 * pad)


def _mark_diverged(ax: Axes, cells: list[dict[str, Any]], colors: list) -> bool:
    any_div = False
    for c, color in zip(cells, colors):
        for lr in c.get("diverged_lrs", []):
            ax.plot([math.log2(lr)], [0.97], "x", color=color, ms=7, mew=1.6, transform=ax.get_xaxis_transform(),
                    clip_on=False)  # fmt: skip
            any_div = True
    return any_div


def _legend_extra(any_div: bool) -> list[Line2D]:
    h = [Line2D([], [], ls="--", color="gray", label="quadratic fit (window j*±2)"),
         Line2D([], [], marker="*", ls="", color="gray", mec="black", ms=11, label="η* (16–84%)"),
         Line2D([], [], marker="s", ls="", mfc="none", mec="gray", ms=8, label="best grid LR, no η*")]  # fmt: skip
    if any_div:
        h.append(Line2D([], [], marker="x", ls="", color="gray", ms=7, mew=1.6, label="diverged"))
    return h


def plot_lr_curves(group: dict[str, Any], out_dir: str | os.PathLike, results: pd.DataFrame | None = None) -> list[Path]:
    """Loss vs log2 η: one panel per N with one line per D, and one panel per D with one line per width.

    A line's colour means the same D (or width) in every panel, so one legend serves the figure;
    a cell's flags are written next to its best point.
    """
    out_dir = Path(out_dir)
    cells = group["cells"]
    paths = []
    for by, fixed_key, line_key in (("D", "N", "D"), ("width", "D", "N")):
        fixed_vals = sorted({c[fixed_key] for c in cells})
        line_vals = sorted({c[line_key] for c in cells})
        color_of = dict(zip(line_vals, _colors(len(line_vals))))
        fig, axes = _grid(len(fixed_vals), max_cols=4, right=2.3)
        any_div = False
        for ax, fv in zip(axes, fixed_vals):
            sel = sorted([c for c in cells if c[fixed_key] == fv], key=lambda c: c[line_key])
            colors = [color_of[c[line_key]] for c in sel]
            for c, color in zip(sel, colors):
                seeds = None
                if results is not None:
                    seeds = results[(results["N"] == c["N"]) & (results["D"] == c["D"])]
                    for k in ("model_family", "parameterization", "optimizer"):
                        seeds = seeds[seeds[k] == group[k]]
                _draw_cell(ax, c, color, None, seeds)
                flags = [f for f in c.get("flags", []) if f != "no_interval"]
                if flags and c["lrs"]:
                    j = int(np.argmin(c["losses"]))
                    right_half = j > (len(c["lrs"]) - 1) / 2
                    ax.annotate(", ".join(flags), (math.log2(c["lrs"][j]), c["losses"][j]),
                                xytext=(-6 if right_half else 6, -12), textcoords="offset points", fontsize=7,
                                color=color, ha="right" if right_half else "left")  # fmt: skip
            any_div |= _mark_diverged(ax, sel, colors)
            _loss_ylim(ax, sel)
            if fixed_key == "N":
                w = next((c.get("hidden_size") for c in sel if c.get("hidden_size")), None)
                ax.set_title(f"N = {_si(fv)} params" + (f" (d={w})" if w else ""), fontsize=10)
            else:
                ax.set_title(f"D = {_si(fv)} tokens", fontsize=10)
            ax.set_xlabel("log2 η (peak learning rate)")
            ax.set_ylabel("validation loss (nats/token)")
            ax.grid(alpha=0.3)
        handles = []
        for v in line_vals:
            if line_key == "D":
                label = f"D = {_si(v)} tokens"
            else:
                w = next((c.get("hidden_size") for c in cells if c["N"] == v and c.get("hidden_size")), None)
                label = f"d = {w} (N = {_si(v)})" if w else f"N = {_si(v)}"
            handles.append(Line2D([], [], color=color_of[v], marker="o", ms=4, label=label))
        W, H = fig.get_size_inches()
        fig.legend(handles=handles + _legend_extra(any_div), loc="upper left", fontsize=8,
                   bbox_to_anchor=(1 - 2.2 / W, 1 - 0.75 / H))  # fmt: skip
        fig.suptitle(f"{_title(group)}: loss vs learning rate, one line per {by}")
        paths.append(_save(fig, out_dir / f"lr_curves_{_tag(group)}_by_{by}.png"))
    return paths


# ----------------------------------------------------------------------------------------------
# η* and η*_eff vs D and vs N
# ----------------------------------------------------------------------------------------------


def _draw_law(ax: Axes, law: dict, ex: dict, color: Any, label: str) -> None:
    s = np.asarray(law["scales"], float)
    y = 2.0 ** np.asarray(law["y"], float)
    err = np.asarray(law["y_err"], float)
    held = np.isin(s, np.asarray(ex.get("heldout_scales", []), float))
    yerr = np.maximum(np.vstack([y - 2.0 ** (np.log2(y) - err), 2.0 ** (np.log2(y) + err) - y]), 0.0)
    for mask, filled in ((~held, True), (held, False)):
        if mask.any():
            ax.errorbar(s[mask], y[mask], yerr=yerr[:, mask], fmt="o", color=color, mfc=color if filled else "white",
                        ms=6, capsize=2, label=label if filled else None)  # fmt: skip
    xs = np.geomspace(s.min(), s.max(), 80)
    lx = np.log2(xs)
    if ex.get("slope") is not None:
        fit_s = np.asarray(ex["fit_scales"], float)
        inside = xs <= fit_s.max() * (1 + 1e-9)
        line = 2.0 ** (ex["intercept"] + ex["slope"] * lx)
        ax.plot(xs[inside], line[inside], "-", color=color, lw=1.5)
        ax.plot(xs[~inside], line[~inside], "--", color=color, lw=1.5)
    if law.get("quadratic") is not None:
        q = law["quadratic"]
        ax.plot(xs, 2.0 ** (q["c0"] + q["c1"] * lx + q["c2"] * lx**2), ":", color=color, lw=1.3)


def plot_laws(group: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """η* and η*_eff vs D (one series per N) and vs N (one series per D), log-log."""
    out_dir = Path(out_dir)
    paths = []
    for axis, xlabel, fixed_name in (("along_D", "D (training tokens)", "N"), ("along_N", "N (non-embedding params)", "D")):
        fig, axes = _grid(2, width=4.4, height=3.3, bottom=1.55)
        for ax, q in zip(axes, QUANTITIES):
            laws = dict(sorted(group["laws"][q][axis].items(), key=lambda kv: float(kv[0])))
            colors = _colors(len(laws))
            for (fixed, law), color in zip(laws.items(), colors):
                if law["n"] == 0:
                    continue
                ex = group["extrapolation"][q][axis][fixed]
                q_ = law.get("quadratic") or {}
                c2 = f", c2={q_['c2']:+.2f}" if q_.get("c2") is not None else ""
                r2 = f", r2_ood={ex['r2_ood']:.2f}" if ex.get("r2_ood") is not None else ""
                if ex.get("extrapolation_ratio") is not None:
                    r2 += f", ratio={ex['extrapolation_ratio']:.2f}"
                _draw_law(ax, law, ex, color, f"{fixed_name}={_si(float(fixed))}{c2}{r2}")
            ax.set_xlabel(xlabel + ", log2 scale")
            ax.set_ylabel(f"{QLABEL[q]} (" + ("peak LR" if q == "eta_star" else "per-step angle, rad") + "), log2 scale")
            ax.set_title(f"{QLABEL[q]} vs {axis[-1]}", fontsize=10)
            if not any(law["n"] for law in laws.values()):
                _empty(ax, f"no cell has an {QLABEL[q]}")
                continue
            _log2_axis(ax, "x", si=True)
            _log2_axis(ax, "y")
            ax.grid(alpha=0.3, which="both")
            handles, _ = ax.get_legend_handles_labels()
            handles += [Line2D([], [], color="gray", ls="-", label="linear fit (window)"),
                        Line2D([], [], color="gray", ls="--", label="extrapolation"),
                        Line2D([], [], color="gray", ls=":", label="quadratic (all points)"),
                        Line2D([], [], color="gray", marker="o", mfc="white", ls="", label="held out")]  # fmt: skip
            ax.legend(handles=handles, fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
        fig.suptitle(f"{_title(group)}: optimal LR vs {axis[-1]}")
        paths.append(_save(fig, out_dir / f"eta_star_vs_{axis[-1]}_{_tag(group)}.png"))
    return paths


def plot_budget(group: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """r2_ood and rmse_ood_log2 vs compute-budget ratio ρ, for η* and η*_eff along D and along N.

    r2_ood needs ≥ 2 held-out scales, so small ladders have few r2 points; the rmse panel has one
    point per ρ with ≥ 2 fitted scales. r2 is clipped below at −1 (▼ marks clipped points).
    """
    fig, (ax, ax2) = _grid(2, width=4.4, height=3.3)
    floor = -1.0
    any_pt = False
    for q, marker, ls in zip(QUANTITIES, ("o", "s"), ("-", "--")):
        for axis, color in zip(("along_D", "along_N"), PAIR_COLORS):
            b = group["budget"][q][axis]
            if not b["sweep"]:
                continue
            fixed = "N" if axis == "along_D" else "D"
            label = f"{QLABEL[q]} {axis.replace('_', ' ')} ({fixed}={_si(b['fixed'])})"
            rho_all = np.array([p["rho"] for p in b["sweep"]])
            rmse = np.array([np.nan if p["rmse_ood_log2"] is None else p["rmse_ood_log2"] for p in b["sweep"]])
            ax2.plot(rho_all, rmse, ls, marker=marker, color=color, label=label)
            pts = [(p["rho"], p["r2_ood"]) for p in b["sweep"] if p["r2_ood"] is not None]
            if not pts:
                continue
            any_pt = True
            rho, r2 = np.array(pts).T
            ax.plot(rho, np.maximum(r2, floor), ls, marker=marker, color=color, label=label)
            low = r2 < floor
            ax.plot(rho[low], np.full(low.sum(), floor), "v", color=color, ms=10)
    if any_pt:
        ax.axhline(0.9, color="gray", lw=1, ls=":", label="r2_ood = 0.9")
        ax.set_ylim(floor - 0.08, 1.05)
    ax.set_ylabel("r2_ood on held-out scales (clipped at −1: ▼)")
    ax.set_title("r2_ood (needs ≥ 2 held-out scales)", fontsize=10)
    ax2.set_ylabel("rmse_ood_log2 (factors of 2 in η*)")
    ax2.set_title("rmse of the extrapolated log2 η*", fontsize=10)
    tops = [np.nanmax(ln.get_ydata()) for ln in ax2.lines if np.isfinite(ln.get_ydata()).any()]
    if tops:
        ax2.set_ylim(0, 1.15 * max(max(tops), 1e-3))
    for a_, loc, has, empty in ((ax, "lower right", any_pt, "no r2_ood: needs ≥ 2 fitted\nand ≥ 2 held-out scales"),
                                (ax2, "best", bool(ax2.lines), "no extrapolation: needs ≥ 3 scales")):  # fmt: skip
        a_.set_xlabel("ρ = C_fit / C_target (C = 6ND), log2 scale")
        if not has:
            _empty(a_, empty)
            continue
        _log2_axis(a_, "x", whole=True)
        a_.grid(alpha=0.3, which="both")
        a_.legend(fontsize=7, loc=loc)
    fig.suptitle(f"{_title(group)}: extrapolation quality vs fit budget")
    return _save(fig, Path(out_dir) / f"r2_ood_vs_budget_{_tag(group)}.png")


# ----------------------------------------------------------------------------------------------
# comparisons (SP vs μP, nGPT vs νGPT, AdamW vs AdamH)
# ----------------------------------------------------------------------------------------------


def _pick_fixed(ga: dict, gb: dict, key: str) -> int | None:
    """The largest value of `key` at which both groups have ≥ 2 cells with an η*."""
    def counts(g: dict) -> dict[int, int]:
        out: dict[int, int] = {}
        for c in g["cells"]:
            if c["log2_eta_star"] is not None:
                out[c[key]] = out.get(c[key], 0) + 1
        return out
    ca, cb = counts(ga), counts(gb)
    common = [v for v in ca if ca[v] >= 2 and cb.get(v, 0) >= 2]
    return max(common) if common else None


def plot_comparison(ga: dict[str, Any], gb: dict[str, Any], field_: str, out_dir: str | os.PathLike) -> Path:
    """η* (top) and η*_eff (bottom) across width (at the largest shared D) and across D (largest shared N)."""
    fig, axes = _grid(4, width=4.2, height=3.0, max_cols=2)
    for row, q in enumerate(QUANTITIES):
        for col, (axis, fixed_key, scale_key) in enumerate((("width", "D", "N"), ("D", "N", "D"))):
            ax = axes[2 * row + col]
            fixed = _pick_fixed(ga, gb, fixed_key)
            use_width = scale_key == "N" and all(c.get("hidden_size") for g in (ga, gb) for c in g["cells"])
            for g, color in zip((ga, gb), PAIR_COLORS):
                cells = sorted([c for c in g["cells"] if c[fixed_key] == fixed and c[QKEY[q]] is not None],
                               key=lambda c: c[scale_key])  # fmt: skip
                if not cells:
                    continue
                xs = np.array([c["hidden_size"] if use_width else c[scale_key] for c in cells], float)
                ly = np.array([c[QKEY[q]] for c in cells])
                lo = np.array([c[QKEY[q] + "_lo"] if c[QKEY[q] + "_lo"] is not None else v for c, v in zip(cells, ly)])
                hi = np.array([c[QKEY[q] + "_hi"] if c[QKEY[q] + "_hi"] is not None else v for c, v in zip(cells, ly)])
                spread = float(np.ptp(ly))
                # a flagged cell (e.g. grid argmin) can sit outside its bootstrap interval: no negative bars
                yerr = np.maximum([2.0**ly - 2.0**lo, 2.0**hi - 2.0**ly], 0.0)
                ax.errorbar(xs, 2.0**ly, yerr=yerr, fmt="o-", color=color,
                            capsize=2, label=f"{g[field_]} (range {spread:.2f} log2)")  # fmt: skip
            _log2_axis(ax, "x", si=not use_width, whole=True)
            _log2_axis(ax, "y")
            xl = ("width d (hidden size)" if use_width else "N (non-embedding params)") if axis == "width" else "D (training tokens)"
            ax.set_xlabel(xl + ", log2 scale")
            ax.set_ylabel(f"{QLABEL[q]}, log2 scale")
            if fixed is None:
                ax.set_title(f"{QLABEL[q]}: no shared cells with η*", fontsize=10)
            else:
                at = f"D={_si(fixed)} tokens" if fixed_key == "D" else f"N={_si(fixed)}"
                ax.set_title(f"{QLABEL[q]} across {axis} at {at}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    other = " · ".join(str(ga[k]) for k in ("model_family", "parameterization", "optimizer") if k != field_)
    fig.suptitle(f"{ga[field_]} vs {gb[field_]} ({other}): does the optimal LR transfer?")
    name = f"compare_{ga[field_]}_vs_{gb[field_]}_" + "_".join(
        str(ga[k]) for k in ("model_family", "parameterization", "optimizer") if k != field_)
    return _save(fig, Path(out_dir) / f"{name}.png")


def plot_comparisons(fits: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    groups = {(g["model_family"], g["parameterization"], g["optimizer"]): g for g in fits["groups"]}
    paths = []
    for comp in fits.get("comparisons", []):
        fld = comp["field"]
        ga, gb = (groups.get(tuple(comp[side] if k == fld else comp[k] for k in ("model_family", "parameterization",
                  "optimizer"))) for side in ("a", "b"))  # fmt: skip
        if ga is not None and gb is not None:
            paths.append(plot_comparison(ga, gb, fld, out_dir))
    return paths


# ----------------------------------------------------------------------------------------------
# η_eff and ‖W‖ over training, with theory
# ----------------------------------------------------------------------------------------------


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"run folder {run_dir}: no metrics.jsonl")
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash; the rest is still good
    return rows


def run_history(run_dir: str | os.PathLike, config: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's metrics from step 0: a WSD decay branch (`init_from` a trunk checkpoint) logs only from
    its branch point, so the trunk's rows before it are put in front when the trunk folder is there."""
    rows = read_metrics(run_dir)
    init = config.get("init_from")
    if not init or not rows:
        return rows
    ckpt = Path(init)
    trunk = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    if trunk is None or not (trunk / "metrics.jsonl").is_file():
        return rows
    first = min(r.get("step", 0) for r in rows)
    return [r for r in read_metrics(trunk) if r.get("step", first) < first] + rows


def _lr_key(rows: list[dict[str, Any]], lr_key: str | None) -> str:
    """The LR of the block matrices: lr/hidden_matrix when logged, else the base schedule LR."""
    keys = {k for r in rows for k in r if k.startswith("lr/")}
    if lr_key is not None:
        if lr_key not in keys | {"lr"}:
            raise ValueError(f"lr_key={lr_key!r} is not in metrics.jsonl; allowed: {sorted(keys | {'lr'})}")
        return lr_key
    for k in sorted(keys):
        if "matrix" in k:
            return k
    return "lr"


def training_theory(rows: list[dict[str, Any]], config: dict[str, Any], lr_key: str) -> dict[str, np.ndarray] | None:
    """Theory curves on the sampled steps' grid, averaged over the transformer-block matrices.

    AdamW (unnormalized weights): ‖W_{t+1}‖² = (1−η_tλ)²‖W_t‖² + η_t²U_t² from the first sampled
    ‖W‖, with U_t² the momentum random walk's per-step variance, ‖u_t‖²·(1+β1)/(1−β1) (the measured
    ‖u‖², interpolated between samples; = n_entries for pure noise). Consecutive Adam directions are
    correlated through β1, so the raw ‖u‖² would put the equilibrium ‖W‖² (1+β1)/(1−β1) ≈ 19× too
    low; with the walk variance the recursion reproduces DESIGN §3.4's equilibria ‖W‖² ≈ ηn/(2λ) and
    η_eff ≈ √(2ηλ(1−β1)/(1+β1)). η_eff,t = η_t‖u_t‖/‖W_t‖ (u ⟂ W on average). AdamH or normalized weights: η_eff,t ≈ η_t·sin∠(u, W) per
    sample (AdamH), resp. η_t‖u‖sin∠(u, W)/‖W‖ (AdamW on the sphere); ‖W‖ is held fixed.
    """
    from lrtransfer.optim import adamw_norm_theory

    sampled = [r for r in rows if "eta_eff/block_mean" in r]
    lr_rows = [r for r in rows if lr_key in r and "step" in r]
    if not sampled or not lr_rows:
        return None
    names = sorted({k[len("wnorm/"):] for r in sampled for k in r if k.startswith("wnorm/")} - {"block_mean"})
    names = [n for n in names if not any(t in n for t in NON_BLOCK)]
    if not names:
        return None
    steps = np.array([r["step"] for r in sampled], dtype=float)
    lr_steps = np.array([r["step"] for r in lr_rows], float)
    lr_vals = np.array([r[lr_key] for r in lr_rows], float)
    optimizer = str(config.get("optimizer", "adamw")).lower()
    beta1 = float(config.get("beta1", 0.9))
    wd = float(config.get("weight_decay", 0.0))
    normalized = str(config.get("model_family", "")).lower() == "nugpt"
    s0, s1 = int(steps[0]), int(steps[-1])
    eta_t = np.interp(np.arange(s0, s1 + 1), lr_steps, lr_vals)
    wn, ee = [], []
    for name in names:
        w = np.array([r.get(f"wnorm/{name}", np.nan) for r in sampled], float)
        u2 = np.array([r.get(f"unorm2/{name}", np.nan) for r in sampled], float)
        c = np.array([r.get(f"c/{name}", np.nan) for r in sampled], float)
        if optimizer == "adamw" and not normalized:
            u2_t = np.interp(np.arange(s0, s1), steps, u2)
            walk = u2_t * (1 + beta1) / (1 - beta1)
            norms = np.asarray(adamw_norm_theory(eta_t[:-1].tolist(), wd, float(w[0]) ** 2, walk.tolist()))
            w_th = norms[(steps - s0).astype(int)]
            wn.append(w_th)
            ee.append(np.interp(steps, np.arange(s0, s1 + 1), eta_t) * np.sqrt(u2) / w_th)
        else:
            cos = np.clip(-c * np.sqrt(u2) / w, -1.0, 1.0)
            sin = np.sqrt(1.0 - cos**2)
            eta_s = np.interp(steps, lr_steps, lr_vals)
            wn.append(w)
            ee.append(eta_s * sin if optimizer == "adamh" else eta_s * np.sqrt(u2) * sin / w)
    kind = "AdamW norm recursion" if optimizer == "adamw" and not normalized else (
        "η_t·sin∠(u,W)" if optimizer == "adamh" else "η_t‖u‖sin∠(u,W)/‖W‖")  # fmt: skip
    return {"steps": steps, "wnorm": np.nanmean(wn, axis=0), "eta_eff": np.nanmean(ee, axis=0), "kind": kind,
            "recursion": optimizer == "adamw" and not normalized}  # fmt: skip


def plot_training(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, lr_key: str | None = None) -> Path:
    """η_eff (block mean) and ‖W‖ (block mean) over training from a run folder, with theory curves.

    A decay branch is drawn from step 0, its trunk's metrics first (see `run_history`)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    config = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.is_file() else {}
    rows = run_history(run_dir, config)
    sampled = [r for r in rows if "eta_eff/block_mean" in r]
    if not sampled:
        raise ValueError(f"run folder {run_dir}: metrics.jsonl has no 'eta_eff/block_mean' rows (tracker off?)")
    key = _lr_key(rows, lr_key)
    th = training_theory(rows, config, key)
    steps = np.array([r["step"] for r in sampled], float)
    fig, axes = _grid(2, width=4.6, height=3.2)
    ax_e, ax_w = axes
    ax_e.plot(steps, [r["eta_eff/block_mean"] for r in sampled], "-", color="tab:blue", lw=1.2, label="measured")
    ax_w.plot(steps, [r.get("wnorm/block_mean", np.nan) for r in sampled], "-", color="tab:blue", lw=1.2,
              label="measured")  # fmt: skip
    if th is not None:
        ax_e.plot(th["steps"], th["eta_eff"], "--", color="black", lw=1.2, label=f"theory: {th['kind']}")
        if th["recursion"]:
            ax_w.plot(th["steps"], th["wnorm"], "--", color="black", lw=1.2, label=f"theory: {th['kind']}")
        wd = float(config.get("weight_decay", 0.0))
        b1 = float(config.get("beta1", 0.9))
        lr_peak = max(r[key] for r in rows if key in r)
        if th["recursion"] and wd > 0:
            eq = math.sqrt(2 * lr_peak * wd * (1 - b1) / (1 + b1))
            ax_e.axhline(eq, color="gray", ls=":", lw=1, label=f"equilibrium √(2ηλ(1−β1)/(1+β1)) at peak η: {eq:.3g}")
    ax_e.set_yscale("log")
    ax_e.set_xlabel("training step")
    ax_e.set_ylabel("η_eff (angle per step, rad)")
    ax_e.set_title("effective LR, mean over block matrices", fontsize=10)
    ax_w.set_xlabel("training step")
    ax_w.set_ylabel("‖W‖_F, mean over block matrices")
    ax_w.set_title("weight norm", fontsize=10)
    wvals = np.array([r.get("wnorm/block_mean", np.nan) for r in sampled], float)
    ax_w.ticklabel_format(axis="y", useOffset=False)
    if np.nanmean(wvals) > 0 and np.nanmax(wvals) - np.nanmin(wvals) < 1e-3 * np.nanmean(wvals):
        ax_w.set_ylim(0.9 * np.nanmean(wvals), 1.1 * np.nanmean(wvals))  # a fixed norm (hyperball, sphere)
    for ax, loc in zip(axes, ("best", "lower right")):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc=loc)
    desc = " · ".join(str(config[k]) for k in ("model_family", "parameterization", "optimizer") if k in config)
    hp = f"η={config.get('lr', '?')}, λ={config.get('weight_decay', '?')}, LR key {key}"
    fig.suptitle(f"{run_dir.name}: {desc} ({hp})", fontsize=10)
    return _save(fig, Path(out_dir) / f"training_{run_dir.name}.png")


# ----------------------------------------------------------------------------------------------
# everything + CLI
# ----------------------------------------------------------------------------------------------


def _load_fits(fits_or_path: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    if isinstance(fits_or_path, dict):
        return fits_or_path
    p = Path(fits_or_path)
    if not p.is_file():
        raise FileNotFoundError(f"fits={fits_or_path}: no such file")
    fits = json.loads(p.read_text())
    if "groups" not in fits:
        raise ValueError(f"fits={fits_or_path}: not a fits.json (no 'groups' key)")
    return fits


def plot_all(
    fits_or_path: dict[str, Any] | str | os.PathLike,
    results: pd.DataFrame | str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    runs: Sequence[str | os.PathLike] = (),
    lr_key: str | None = None,
) -> list[Path]:
    """Every plot of DESIGN §7 for a study: per group LR curves, laws and budget; comparisons; runs."""
    fits = _load_fits(fits_or_path)
    table = load_results(results)[0] if results is not None else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for g in fits["groups"]:
        paths += plot_lr_curves(g, out_dir, table)
        paths += plot_laws(g, out_dir)
        paths.append(plot_budget(g, out_dir))
    paths += plot_comparisons(fits, out_dir)
    for run in runs:
        paths.append(plot_training(run, out_dir, lr_key=lr_key))
    return paths


@dataclass
class PlotConfig:
    """`lrtransfer plot` options."""

    fits: str = field(metadata={"help": "fits.json written by `lrtransfer fit`"})
    out: str = field(metadata={"help": "output folder for the PNGs"})
    results: str | None = field(default=None, metadata={"help": "results table (adds per-seed points)"})
    runs: list[str] = field(default_factory=list, metadata={"help": "run folders to plot η_eff and ‖W‖ for"})
    lr_key: str | None = field(default=None, metadata={"help": "metrics key of the block-matrix LR (default: lr/*matrix*, else lr)"})


def main(argv: list[str] | None = None) -> int:
    """`lrtransfer plot --fits fits.json --results results.parquet --out DIR [--runs RUN_DIR ...]`"""
    (cfg,) = parse_config([PlotConfig], argv)
    paths = plot_all(cfg.fits, cfg.results, cfg.out, runs=cfg.runs, lr_key=cfg.lr_key)
    for p in paths:
        print(p)
    return 0
