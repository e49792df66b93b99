"""fit.py on synthetic sweeps with known truth (DESIGN §6)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from lrtransfer.fit import budget_sweep, extrapolate, fit_cell, fit_law, fit_results, main

GRID = np.arange(-10.0, -1.0)  # log2 η, step 1
TABLE_GRID = np.arange(-14.0, 0.0)


def bowl(x: np.ndarray, x_star: float, *, k: float = 0.04, cubic: float = 0.0, base: float = 3.0) -> np.ndarray:
    d = x - x_star
    return base + k * d**2 + cubic * d**3


def law(log2_N: float, log2_D: float, *, curv: float = 0.0) -> float:
    """Truth: log2 η* = −6 − 0.5(log2 N − 17) − 0.3(log2 D − 20) + curv(log2 D − 20)²."""
    return -6.0 - 0.5 * (log2_N - 17) - 0.3 * (log2_D - 20) + curv * (log2_D - 20) ** 2


def make_table(
    *,
    Ns=(2**17, 2**19, 2**21),
    Ds=(2**20, 2**21, 2**22, 2**23),
    curv: float = 0.0,
    noise: float = 0.0,
    seeds=(0,),
    grid=TABLE_GRID,
    diverge_above: float | None = 3.5,
    groups=(("gpt2", "sp", "adamw"),),
    rng_seed: int = 0,
) -> pd.DataFrame:
    """One row per run; runs more than `diverge_above` log2 units above η* diverge (NaN loss)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for fam, par, opt in groups:
        for N in Ns:
            for D in Ds:
                xs = law(math.log2(N), math.log2(D), curv=curv)
                for x in grid:
                    for s in seeds:
                        div = diverge_above is not None and x > xs + diverge_above
                        loss = np.nan if div else float(bowl(np.array(x), xs)) + noise * rng.standard_normal()
                        rows.append(dict(
                            run_id=f"{par}-{opt}-N{N}-D{D}-x{x:g}-s{s}", config_hash=f"h{len(rows):05d}",
                            model_family=fam, parameterization=par, optimizer=opt, N=N, N_total=N + 4096,
                            hidden_size=int(math.sqrt(N / 12)), num_hidden_layers=1, D=D, lr=2.0**x, seed=s,
                            status="diverged" if div else "ok", val_loss=loss,
                            eta_eff_mean=np.nan if div else 0.3 * 2.0 ** (0.5 * x), tokens=D, wall_time_s=1.0,
                            run_path=f"runs/{len(rows)}",
                        ))  # fmt: skip
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- cells


def test_vertex_matches_numpy_polyfit_on_the_window():
    rng = np.random.default_rng(3)
    y = bowl(GRID, -6.3) + 0.01 * rng.standard_normal(len(GRID))
    r = fit_cell(2.0**GRID, y, n_boot=100)
    j = int(np.argmin(y))
    a, b, _ = np.polyfit(GRID[j - 2 : j + 3], y[j - 2 : j + 3], 2)
    assert r["method"] == "vertex"
    assert r["log2_eta_star"] == pytest.approx(-b / (2 * a), abs=1e-10)
    assert r["eta_star"] == pytest.approx(2.0 ** (-b / (2 * a)), rel=1e-10)
    assert r["window_lrs"] == pytest.approx(list(2.0 ** GRID[j - 2 : j + 3]))
    assert r["eta_star_lo"] < r["eta_star"] < r["eta_star_hi"]


def test_noisy_bowl_accuracy_and_interval_coverage():
    """The 16–84% interval covers the true η* at about the nominal 68% over repeated draws."""
    truth, reps = -6.3, 200
    rng = np.random.default_rng(0)
    errs, hits = [], 0
    for i in range(reps):
        y = bowl(GRID, truth) + 0.01 * rng.standard_normal(len(GRID))
        r = fit_cell(2.0**GRID, y, n_boot=200, seed=i)
        errs.append(r["log2_eta_star"] - truth)
        hits += r["log2_eta_star_lo"] <= truth <= r["log2_eta_star_hi"]
    assert np.median(np.abs(errs)) < 0.06 and np.max(np.abs(errs)) < 0.3
    assert abs(np.mean(errs)) < 0.02
    assert 0.60 <= hits / reps <= 0.76


def test_interval_width_tracks_noise():
    z = np.random.default_rng(1).standard_normal(len(GRID))
    widths = []
    for sigma in (0.002, 0.02):
        r = fit_cell(2.0**GRID, bowl(GRID, -5.6) + sigma * z, n_boot=400)
        widths.append(r["log2_eta_star_hi"] - r["log2_eta_star_lo"])
    assert 5 * widths[0] < widths[1] < 20 * widths[0]


def test_exact_parabola_has_zero_width_interval():
    r = fit_cell(2.0**GRID, bowl(GRID, -4.25), n_boot=50)
    assert r["log2_eta_star"] == pytest.approx(-4.25, abs=1e-9)
    assert r["eta_star_lo"] == pytest.approx(r["eta_star"]) and r["eta_star_hi"] == pytest.approx(r["eta_star"])
    assert r["flags"] == []


def test_cubic_cross_check_flags_asymmetric_bowls():
    sym = fit_cell(2.0**GRID, bowl(GRID, -6.0, cubic=0.0005), n_boot=0)
    assert sym["cubic_log2_eta_star"] == pytest.approx(-6.0, abs=0.05)
    assert "cubic_disagrees" not in sym["flags"]
    # a skewed bowl (steep above η*, shallow below): the parabola's vertex drifts low, the cubic does not
    d = GRID + 6.2
    skew = fit_cell(2.0**GRID, 3.0 + 0.05 * (np.exp(d) - d), n_boot=0)
    assert skew["cubic_log2_eta_star"] == pytest.approx(-6.2, abs=0.15)
    assert skew["log2_eta_star"] < -6.5
    assert "cubic_disagrees" in skew["flags"]


def test_too_few_points_for_cubic_skips_it():
    x = GRID[3:7]
    r = fit_cell(2.0**x, bowl(x, -6.2), n_boot=0)
    assert r["cubic_log2_eta_star"] is None and r["eta_star"] is not None


@pytest.mark.parametrize("direction, x_star", [("up", 0.0), ("down", -14.0)])
def test_edge_minimum_is_flagged_extend_grid(direction, x_star):
    r = fit_cell(2.0**GRID, bowl(GRID, x_star), n_boot=50)
    assert "extend_grid" in r["flags"] and r["extend_direction"] == direction
    assert r["eta_star"] is None and r["eta_star_lo"] is None
    assert r["best_lr"] == (2.0 ** GRID[-1] if direction == "up" else 2.0 ** GRID[0])


def test_diverged_lr_closes_the_edge():
    """Best finite LR next to a diverged one: extending upward cannot help, so no extend_grid."""
    x = GRID[GRID <= -5]
    r = fit_cell(2.0**x, bowl(x, -4.8), n_boot=50, diverged_lrs=[2.0**-4, 2.0**-3])
    assert "extend_grid" not in r["flags"] and "edge_diverged" in r["flags"]
    assert r["log2_eta_star"] == pytest.approx(-4.8, abs=1e-9)  # exact bowl: vertex within a step
    far = fit_cell(2.0**x, bowl(x, -2.0), n_boot=0, diverged_lrs=[2.0**-4])
    assert far["method"] == "grid_argmin" and "vertex_far" in far["flags"]
    assert far["log2_eta_star"] == -5.0


def test_nonpositive_curvature_falls_back_to_grid_argmin():
    y = np.array([3.5, 3.2, 3.0, 2.95, 2.9, 2.95, 3.0, 3.3, 3.6])
    y[3:6] = [2.90, 2.90, 2.90]
    y[4] = 2.899  # a flat, slightly dented floor: the window's parabola is ~flat or opens downward
    y[2], y[6] = 2.8995, 2.8995
    r = fit_cell(2.0**GRID, y, n_boot=20)
    assert r["method"] == "grid_argmin" and "nonpositive_curvature" in r["flags"]
    assert r["log2_eta_star"] == GRID[4]


@pytest.mark.parametrize(
    "lrs, losses, flag",
    [
        ([1e-3], [3.0], "extend_grid"),
        ([1e-3, 2e-3], [3.1, 3.0], "extend_grid"),
        ([1e-3, 2e-3, 4e-3], [np.nan, np.inf, np.nan], "no_finite_runs"),
        ([], [], "no_finite_runs"),
    ],
)
def test_thin_cells_return_flags_not_errors(lrs, losses, flag):
    r = fit_cell(lrs, losses, n_boot=10)
    assert flag in r["flags"] and r["eta_star"] is None


def test_three_points_give_an_estimate_without_interval():
    x = np.array([-7.0, -6.0, -5.0])
    r = fit_cell(2.0**x, bowl(x, -5.8) + np.array([0.0, 0.001, 0.0]), n_boot=100, diverged_lrs=[2.0**-4])
    assert r["method"] == "vertex" and "no_interval" in r["flags"] and r["eta_star_lo"] is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lrs=[1e-3, 2e-3], losses=[3.0]), "same length"),
        (dict(lrs=[-1e-3, 2e-3], losses=[3.0, 3.1]), "lrs must all be > 0"),
        (dict(lrs=[1e-3], losses=[3.0], n_boot=-1), "n_boot"),
        (dict(lrs=[1e-3], losses=[3.0], window=0), "window"),
        (dict(lrs=[1e-3], losses=[3.0], ci=(84, 16)), "ci"),
    ],
)
def test_fit_cell_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_cell(**kwargs)


# ---------------------------------------------------------------------------------------------- laws


def test_law_coefficients_match_numpy_polyfit():
    rng = np.random.default_rng(5)
    x = np.arange(20.0, 27.0)
    y = 1.0 - 0.3 * x + 0.02 * (x - 23) ** 2 + 0.03 * rng.standard_normal(len(x))
    r = fit_law(x, y, n_boot=100)
    b1, b0 = np.polyfit(x, y, 1)
    c2, c1, c0 = np.polyfit(x, y, 2)
    assert r["linear"]["slope"] == pytest.approx(b1, abs=1e-9)
    assert r["linear"]["intercept"] == pytest.approx(b0, abs=1e-7)
    q = r["quadratic"]
    assert (q["c0"], q["c1"], q["c2"]) == pytest.approx((c0, c1, c2), abs=1e-7)


def test_curvature_interval_covers_truth_and_flags_upward():
    """Known c2 = 0.04: covered at ~68% over draws; the strong-curvature case is flagged upward."""
    x = np.arange(20.0, 28.0)
    rng = np.random.default_rng(2)
    hits, flagged, reps = 0, 0, 150
    for i in range(reps):
        y = -6 - 0.3 * (x - 20) + 0.04 * (x - 20) ** 2 + 0.05 * rng.standard_normal(len(x))
        r = fit_law(x, y, n_boot=200, seed=i)
        q = r["quadratic"]
        assert q["c2_lo"] <= q["c2"] <= q["c2_hi"]
        hits += q["c2_lo"] <= 0.04 <= q["c2_hi"]
        flagged += "upward_curvature" in r["flags"]
    assert 0.58 <= hits / reps <= 0.80
    assert flagged / reps > 0.95


def test_straight_law_is_rarely_flagged():
    x = np.arange(20.0, 28.0)
    rng = np.random.default_rng(4)
    flagged = 0
    for i in range(100):
        r = fit_law(x, -0.3 * x + 0.05 * rng.standard_normal(len(x)), n_boot=200, seed=i)
        flagged += bool({"upward_curvature", "downward_curvature"} & set(r["flags"]))
    assert flagged <= 10


def test_law_uses_point_uncertainty_when_residuals_have_no_dof():
    x, y = np.array([17.0, 19.0, 21.0]), np.array([-6.0, -7.0, -7.9])
    without = fit_law(x, y, n_boot=200)
    assert "no_interval" in without["flags"] and without["quadratic"]["c2_lo"] is None
    with_err = fit_law(x, y, y_err=[0.05, 0.05, 0.05], n_boot=2000)
    q = with_err["quadratic"]
    # c2 = (y0 − 2y1 + y2)/(2h²) with h = 2: sd = 0.05·√6/8
    assert q["c2_hi"] - q["c2_lo"] == pytest.approx(2 * 0.05 * math.sqrt(6) / 8, rel=0.1)


def test_exactly_linear_data_extrapolates_perfectly():
    x = np.arange(20.0, 25.0)
    y = 3.0 - 0.35 * x
    e = extrapolate(x, y, x <= 21)
    assert e["r2_ood"] == pytest.approx(1.0, abs=1e-12)
    assert e["extrapolation_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert e["rmse_ood_log2"] == pytest.approx(0.0, abs=1e-12)
    b = budget_sweep(2.0**x, y)
    assert b["budget_to_r2_0.9"] == pytest.approx(1 / 8)  # fit D ≤ 2^21 of target 2^24
    assert [p["rho"] for p in b["sweep"]] == pytest.approx([1 / 8, 1 / 4, 1 / 2])


def test_upward_bend_is_underpredicted():
    x = np.arange(20.0, 26.0)
    y = -0.3 * (x - 20) + 0.05 * (x - 20) ** 2
    e = extrapolate(x, y, x <= 22)
    assert e["extrapolation_ratio"] > 1.5 and e["r2_ood"] < 0.9
    b = budget_sweep(2.0**x, y)
    r2 = [p["r2_ood"] for p in b["sweep"] if p["r2_ood"] is not None]
    assert r2 == sorted(r2)  # a bigger fit budget extrapolates better
    assert b["budget_to_r2_0.9"] is None or b["budget_to_r2_0.9"] > 1 / 8


# ---------------------------------------------------------------------------------------------- tables


def test_exact_law_end_to_end(tmp_path):
    """Noiseless bowls on an exact log-log law: η* exact, r2_ood = 1, ratio = 1, joint law recovered."""
    fits = fit_results(make_table(), n_boot=50)
    (g,) = fits["groups"]
    assert len(g["cells"]) == 12
    for c in g["cells"]:
        assert c["log2_eta_star"] == pytest.approx(law(math.log2(c["N"]), math.log2(c["D"])), abs=1e-8)
        assert c["flags"] == []
    j = g["laws"]["eta_star"]["joint"]
    assert (j["a"], j["b"]) == pytest.approx((0.5, 0.3), abs=1e-8)
    for axis in ("along_D", "along_N"):
        for ex in g["extrapolation"]["eta_star"][axis].values():
            assert ex["extrapolation_ratio"] == pytest.approx(1.0, abs=1e-8)
            if ex["r2_ood"] is not None:
                assert ex["r2_ood"] == pytest.approx(1.0, abs=1e-8)
    assert g["budget"]["eta_star"]["along_D"]["budget_to_r2_0.9"] == pytest.approx(0.25)
    quad = g["laws"]["eta_star"]["along_D"][str(2**21)]["quadratic"]
    assert quad["c2"] == pytest.approx(0.0, abs=1e-8)


def test_curved_law_end_to_end_flags_upward_curvature():
    fits = fit_results(make_table(curv=0.06, Ds=tuple(2**k for k in range(20, 26))), n_boot=200, window=3)
    (g,) = fits["groups"]
    for fixed, lw in g["laws"]["eta_star"]["along_D"].items():
        assert lw["quadratic"]["c2"] == pytest.approx(0.06, abs=1e-6)
        assert "upward_curvature" in lw["flags"]
        ex = g["extrapolation"]["eta_star"]["along_D"][fixed]
        assert ex["extrapolation_ratio"] > 1.5 and ex["fit_scales"] == [2**20, 2**21, 2**22]


def test_eta_eff_star_uses_eta_eff_mean():
    """η_eff = 0.3·√η per run, so η*_eff = 0.3·√η* exactly; scaling eta_eff_mean moves η*_eff only."""
    df = make_table(Ns=(2**19,), Ds=(2**21,))
    (c,) = fit_results(df, n_boot=20)["groups"][0]["cells"]
    assert c["eta_eff_star"] == pytest.approx(0.3 * math.sqrt(c["eta_star"]), rel=1e-8)
    df2 = df.assign(eta_eff_mean=df["eta_eff_mean"] * 3)
    (c2,) = fit_results(df2, n_boot=20)["groups"][0]["cells"]
    assert c2["eta_eff_star"] == pytest.approx(3 * c["eta_eff_star"], rel=1e-8)
    assert c2["eta_star"] == c["eta_star"]
    df3 = df.assign(eta_eff_mean=np.nan)
    (c3,) = fit_results(df3, n_boot=20)["groups"][0]["cells"]
    assert c3["eta_eff_star"] is None and "no_eta_eff" in c3["eta_eff_flags"] and c3["eta_star"] == c["eta_star"]


def test_seeds_are_averaged():
    one = make_table(Ns=(2**19,), Ds=(2**21,))
    two = pd.concat([one.assign(val_loss=one["val_loss"] + 0.01, seed=0),
                     one.assign(val_loss=one["val_loss"] - 0.01, seed=1, run_id=one["run_id"] + "b")])  # fmt: skip
    a = fit_results(one, n_boot=10)["groups"][0]["cells"][0]
    b = fit_results(two, n_boot=10)["groups"][0]["cells"][0]
    assert b["eta_star"] == pytest.approx(a["eta_star"], rel=1e-10)
    assert set(b["n_seeds"]) == {2} and len(b["run_ids"]) == 2 * len(a["run_ids"])


def test_diverged_and_failed_runs_do_not_break_a_fit():
    df = make_table(Ns=(2**19,), Ds=(2**21, 2**22), diverge_above=1.5)
    base = fit_results(df[df["status"] == "ok"], n_boot=10)["groups"][0]["cells"]
    df = df.copy()
    df.loc[df.index[:2], "status"] = "failed"
    df.loc[df.index[:2], "val_loss"] = np.nan
    df.loc[df.index[2], "val_loss"] = np.inf  # "ok" with a non-finite loss counts as diverged
    df.loc[len(df)] = {**df.iloc[5].to_dict(), "run_id": "trunk", "status": "stopped", "val_loss": 9.9}
    fits = fit_results(df, n_boot=10)
    cells = fits["groups"][0]["cells"]
    for a, b in zip(base, cells):
        assert b["eta_star"] == pytest.approx(a["eta_star"], rel=1e-12)
        assert b["diverged_lrs"] and "extend_grid" not in b["flags"]
    assert cells[0]["failed_lrs"] == sorted(df.loc[df.index[:2], "lr"].tolist())
    assert "trunk" in fits["provenance"]["excluded_run_ids"]["stopped"]
    assert "trunk" not in fits["provenance"]["used_run_ids"]
    assert fits["groups"][0]["status_counts"]["failed"] == 2


def test_missing_cells_and_one_model_size():
    df = make_table(Ns=(2**19,), Ds=(2**20, 2**21, 2**22))
    df = df[~((df["D"] == 2**21) & (df["lr"] > 2.0**-8))]  # a cell whose LR grid stops short: edge minimum
    fits = fit_results(df, n_boot=10)
    (g,) = fits["groups"]
    flags = {c["D"]: c["flags"] for c in g["cells"]}
    assert "extend_grid" in flags[2**21] and flags[2**20] == []
    assert g["laws"]["eta_star"]["along_N"][str(2**20)]["flags"] == ["too_few_points"]
    assert g["laws"]["eta_star"]["joint"]["flags"] == ["underdetermined"]
    assert g["laws"]["eta_star"]["along_D"][str(2**19)]["n"] == 2


def test_groups_and_comparisons():
    groups = (("gpt2", "sp", "adamw"), ("gpt2", "mup", "adamw"), ("gpt2", "sp", "adamh"))
    fits = fit_results(make_table(Ns=(2**17, 2**19), Ds=(2**20, 2**21), groups=groups), n_boot=10)
    assert [(g["parameterization"], g["optimizer"]) for g in fits["groups"]] == [
        ("mup", "adamw"), ("sp", "adamh"), ("sp", "adamw")]  # fmt: skip
    comps = {(c["field"], c["a"], c["b"]) for c in fits["comparisons"]}
    assert comps == {("parameterization", "sp", "mup"), ("optimizer", "adamw", "adamh")}


@pytest.mark.parametrize(
    "mutate, options, match",
    [
        (lambda d: d.drop(columns=["val_loss"]), {}, "val_loss"),
        (lambda d: d.assign(status="crashed"), {}, "status"),
        (lambda d: d, {"windw": 3}, "unknown option"),
        (lambda d: d, {"window": 1}, "window"),
        (lambda d: d, {"window_D_max": -1.0}, "window_D_max"),
    ],
)
def test_fit_results_bad_input(mutate, options, match):
    with pytest.raises(ValueError, match=match):
        fit_results(mutate(make_table(Ns=(2**19,), Ds=(2**21,))), **options)


def test_cli_writes_fits_json_with_provenance(tmp_path, capsys):
    df = make_table(Ns=(2**17, 2**19), Ds=(2**20, 2**21, 2**22), noise=0.002, seeds=(0, 1))
    path = tmp_path / "results.parquet"
    df.to_parquet(path)
    assert main(["--results", str(path), "--out", str(tmp_path / "fit"), "--n_boot", "50", "--window", "2"]) == 0
    fits = json.loads((tmp_path / "fit" / "fits.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    prov = fits["provenance"]
    assert prov["results"] == str(path) and prov["run_ids"] == df["run_id"].tolist()
    assert prov["config_hashes"] == sorted(df["config_hash"]) and len(prov["results_sha256"]) == 64
    assert fits["options"]["window"] == 2 and fits["options"]["n_boot"] == 50
    (g,) = fits["groups"]
    cell_keys = {"N", "D", "hidden_size", "eta_star", "eta_star_lo", "eta_star_hi", "log2_eta_star", "flags",
                 "cubic_log2_eta_star", "eta_eff_star", "eta_eff_star_lo", "eta_eff_star_hi", "best_loss", "lrs",
                 "losses", "run_ids"}  # fmt: skip
    assert cell_keys <= set(g["cells"][0])
    quad = g["laws"]["eta_star"]["along_D"][str(2**17)]["quadratic"]
    assert {"c2", "c2_lo", "c2_hi"} <= set(quad)
    assert {"c", "a", "b"} <= set(g["laws"]["eta_eff_star"]["joint"])
    assert {"extrapolation", "budget"} <= set(g)
    out = capsys.readouterr().out
    assert "gpt2 / sp / adamw" in out and "joint" in out and "fits.json" in out
