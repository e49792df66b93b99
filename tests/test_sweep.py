"""Sweeps: grid and adaptive search, trunk-and-branch, resumability, locking, executors, plan.

Most tests drive the sweep with `fake_trainer`, a stand-in with a known objective (loss is a parabola in
log2 η whose vertex moves with width and horizon; large η diverges) that records every call in files,
so the sweep's bookkeeping is checked exactly and fast. The slow test runs the real trainer.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lrtransfer.data import PrepareConfig, prepare
from lrtransfer.sweep import (
    RESULT_SCHEMA,
    SweepConfig,
    build_sweep,
    main,
    plan,
    plan_main,
    prefix_steps,
    run_sweep,
)

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SEQ, BATCH = 16, 4
TPS = SEQ * BATCH  # tokens per step
CONTRACT_COLUMNS = ["run_id", "config_hash", "model_family", "parameterization", "optimizer", "N", "N_total",
                    "hidden_size", "num_hidden_layers", "D", "lr", "seed", "status", "val_loss", "eta_eff_mean",
                    "tokens", "wall_time_s", "run_path"]  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The stand-in trainer (module level: worker processes, SLURM jobs and subprocesses import it by name)


def optimum(width: int, D: int) -> float:
    """log2 η* of the synthetic objective: smaller for wider models, slightly larger for longer runs."""
    return -5.0 - math.log2(width / 32) + 0.3 * math.log2(D / (8 * TPS))


def diverges(width: int, log2_lr: float) -> bool:
    return log2_lr >= -2.5 - math.log2(width / 32)


def synthetic_loss(width: int, D: int, log2_lr: float, seed: int) -> float:
    return 3.0 + 0.1 * (log2_lr - optimum(width, D)) ** 2 - 0.05 * math.log2(D / TPS) + 1e-4 * seed


def fake_trainer(config: dict) -> dict:
    """Trunks write their checkpoint folders; branches need theirs; a diverging η diverges at step 3.

    FAKE_KILL_AT=n: SIGKILL the process at the n-th call; FAKE_SLEEP: seconds per call; FAKE_BARRIER=dir:
    the first call of each process waits until two processes have made one (they overlap for sure).
    """
    out = Path(config["output_dir"])
    calls = out.parents[1] / "calls"
    calls.mkdir(parents=True, exist_ok=True)
    tag = f"{out.name}.{os.getpid()}.{time.time_ns()}"
    (calls / f"{tag}.start").write_text(json.dumps({"pid": os.getpid(), "init_from": config["init_from"],
                                                   "stop_at_step": config["stop_at_step"]}))  # fmt: skip
    kill_at = int(os.environ.get("FAKE_KILL_AT", "0"))
    if kill_at and len(list(calls.glob("*.start"))) >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # a sweep killed mid-run: no result for this run
    barrier = os.environ.get("FAKE_BARRIER")
    if barrier:
        Path(barrier).mkdir(exist_ok=True)
        (Path(barrier) / str(os.getpid())).touch()
        deadline = time.time() + 60
        while len(list(Path(barrier).iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.05)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if config["init_from"] is not None:
        assert Path(config["init_from"]).is_dir(), config["init_from"]
    steps = config["total_tokens"] // TPS
    width, log2_lr = config["hidden_size"], math.log2(config["lr"])
    bad = diverges(width, log2_lr)
    if config["stop_at_step"] is not None:  # a trunk
        last = 3 if bad else config["stop_at_step"]
        for k in config["checkpoint_steps"]:
            if k <= last:
                (out / "checkpoints" / f"step_{k:08d}").mkdir(parents=True, exist_ok=True)
        status, loss, done = ("diverged" if bad else "stopped"), None, last
    else:
        status = "diverged" if bad else "ok"
        loss = None if bad else synthetic_loss(width, config["total_tokens"], log2_lr, config["seed"])
        done = 3 if bad else steps
    (calls / f"{tag}.done").write_text("")
    return {"status": status, "final_val_loss": loss, "tokens": done * TPS, "steps": done,
            "eta_eff_mean": 0.01 * config["lr"] ** 0.5, "wall_time_s": 0.0}  # fmt: skip


def failing_trainer(config: dict) -> dict:
    if config["lr"] > 2.0**-6:
        raise RuntimeError("boom")
    return fake_trainer(config)


def calls(out: Path, suffix: str = "start") -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in (out / "calls").glob(f"*.{suffix}"):
        name = p.name.split(".")[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("data") / "stdlib"
    prepare(PrepareConfig(source="stdlib", output_dir=str(out), stdlib_max_bytes=60_000, vocab_size=320,
                          val_tokens=2048, num_proc=1, progress=False))  # fmt: skip
    return str(out)


def base(data_dir: str, **kw) -> dict:
    return dict(model_family="gpt2", parameterization="sp", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                data_dir=data_dir, seq_len=SEQ, global_batch_size=BATCH, total_tokens=8 * TPS, warmup_steps=1,
                decay_fraction=0.2, eval_tokens=256, track_every=2, log_every=2, progress=False, **kw)  # fmt: skip


def spec(tmp: Path, data_dir: str, **kw) -> SweepConfig:
    fields = dict(output_dir=str(tmp / "sweep"), base=base(data_dir), widths=[32], horizons=[10 * TPS, 20 * TPS],
                  log2_lr_start=-8.0, log2_lr_stop=-3.0, log2_lr_step=1.0, trainer="test_sweep:fake_trainer",
                  poll_s=0.05)  # fmt: skip
    fields.update(kw)
    return SweepConfig(**fields)


def table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "results.parquet")


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["run_path", "wall_time_s"]).sort_values("run_id").reset_index(drop=True)


def write_spec(cfg: SweepConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump({k: v for k, v in vars(cfg).items() if v is not None}))
    return path


def _sweep_main(path: str, env: dict[str, str]) -> None:
    os.environ.update(env)
    sys.stderr = open(os.devnull, "w")
    sys.exit(main(["--config", path]))


def sweep_process(path: Path, **env: str) -> mp.process.BaseProcess:
    """`lrtransfer sweep --config path` in a separate process (forked: no second torch import)."""
    proc = mp.get_context("fork").Process(target=_sweep_main, args=(str(path), env))
    proc.start()
    return proc


# ---------------------------------------------------------------------------------------------------
# Tests


def test_grid_sweep_table_trunks_and_divergence(tmp_path, data_dir):
    horizons = [8 * TPS, 16 * TPS, 32 * TPS, 64 * TPS]  # 4 horizons x2 apart, 20% decay
    cfg = spec(tmp_path, data_dir, widths=[32, 64], head_dim=16, horizons=horizons, seeds=[0, 1])
    summary = run_sweep(cfg)
    out = Path(cfg.output_dir)
    df = table(out)
    assert list(df.columns) == CONTRACT_COLUMNS + ["log2_lr", "trunk_id"]
    assert len(df) == 2 * 6 * 4 * 2 and summary["rows"] == len(df) and df["run_id"].is_unique
    sweep = build_sweep(cfg)
    sizes = {m.hidden_size: m.N for m in sweep.models}
    assert sizes[64] > sizes[32] > 0 and (df["N"] == df["hidden_size"].map(sizes)).all()
    for r in df.itertuples():
        assert r.lr == 2.0**r.log2_lr and r.run_path == str(out / "runs" / r.run_id)
        if diverges(r.hidden_size, r.log2_lr):  # diverged in its trunk (step 3): recorded, never branched
            assert r.status == "diverged" and math.isnan(r.val_loss)
            assert json.loads((Path(r.run_path) / "result.json").read_text())["diverged_in_trunk"] == r.trunk_id
        else:
            assert r.status == "ok" and r.val_loss == pytest.approx(synthetic_loss(r.hidden_size, r.D, r.log2_lr, r.seed))
    assert (df["status"] == "diverged").sum() > 0 and (df["status"] == "ok").sum() > 0
    # Trunk and branch: one trunk per (model, η, seed) stopped at the longest horizon's decay start,
    # branches from the checkpoint at their own decay start (WSD: T - round(0.2 T)).
    started = calls(out)
    assert set(started.values()) == {1}  # nothing ran twice
    trunks = [n for n in started if n.startswith("trunk-")]
    assert len(trunks) == 2 * 6 * 2
    decay_start = {D: D // TPS - round(0.2 * (D // TPS)) for D in horizons}
    assert {D: prefix_steps(("wsd", 1, 0.2, None, "linear", 0.0), D // TPS) for D in horizons} == decay_start
    # diverged-in-trunk branches never ran; every branch that ran started from its decay-start checkpoint
    for p in (out / "calls").glob("*.start"):
        init = json.loads(p.read_text())["init_from"]
        name = p.name.split(".")[0]
        if init is not None:
            D = int(df.set_index("run_id").loc[name, "D"])
            assert init.endswith(f"step_{decay_start[D]:08d}")
    assert sum(1 for n in started if not n.startswith("trunk-")) == (df["status"] == "ok").sum()
    steps = [D // TPS for D in horizons]
    per_eval = decay_start[horizons[-1]] + sum(s - decay_start[D] for s, D in zip(steps, horizons))
    assert summary["tokens_computed"] == 2 * 6 * 2 * per_eval * TPS
    assert summary["trunk_saving"] == pytest.approx(sum(steps) / per_eval) and summary["trunk_saving"] > 1.55
    # loadable with datasets, same rows
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=str(out / "results.parquet"), split="train")
    assert ds.num_rows == len(df) and set(ds.column_names) == set(RESULT_SCHEMA.names)


def test_killed_sweep_restarts_without_recomputing(tmp_path, data_dir):
    cfg = spec(tmp_path, data_dir)
    path = write_spec(cfg, tmp_path / "sweep.yaml")
    proc = sweep_process(path, FAKE_KILL_AT="5")
    proc.join(timeout=120)
    assert proc.exitcode == -signal.SIGKILL
    out = Path(cfg.output_dir)
    before_done = calls(out, "done")
    assert sum(before_done.values()) == 4 and len(calls(out)) == 5
    assert main(["--config", str(path)]) == 0  # the restart
    started, done = calls(out), calls(out, "done")
    assert set(done.values()) == {1}  # no finished run was trained again
    killed = [n for n, c in started.items() if c == 2]
    assert len(killed) == 1 and killed[0] not in before_done
    ref = spec(tmp_path / "ref", data_dir)
    run_sweep(ref, progress_stream=open(os.devnull, "w"))
    pd.testing.assert_frame_equal(comparable(table(out)), comparable(table(Path(ref.output_dir))))


def test_adaptive_search_finds_grid_argmin_with_fewer_evaluations(tmp_path, data_dir):
    horizons = [8 * TPS, 32 * TPS]
    common = dict(widths=[32, 64, 128], head_dim=16, horizons=horizons, log2_lr_start=-12.0, log2_lr_stop=0.0,
                  adaptive_center=-9.0)  # fmt: skip
    grid = spec(tmp_path / "grid", data_dir, **common)
    adaptive = spec(tmp_path / "adaptive", data_dir, lr_search="adaptive", **common)
    sg, sa = run_sweep(grid), run_sweep(adaptive)
    dg, da = table(Path(grid.output_dir)), table(Path(adaptive.output_dir))

    def argmin(df: pd.DataFrame) -> dict:
        ok = df[df["status"] == "ok"]
        return ok.loc[ok.groupby(["hidden_size", "D"])["val_loss"].idxmin()].set_index(["hidden_size", "D"])["log2_lr"].to_dict()

    best = argmin(dg)
    assert argmin(da) == best and len(best) == 6
    for (w, D), x in best.items():  # the grid argmin is the lattice point nearest the true optimum
        assert abs(x - optimum(w, D)) <= 0.5
        pts = sorted(da[(da["hidden_size"] == w) & (da["D"] == D)]["log2_lr"])
        i = pts.index(x)  # two evaluated points on each side, or a diverged point closing the side
        below = da[(da["hidden_size"] == w) & (da["D"] == D) & (da["log2_lr"] > x)]
        assert i >= 2 and (len(pts) - 1 - i >= 2 or (below["status"] == "diverged").any())
    assert sa["evaluations"] == len(da) and sg["evaluations"] == len(dg) == 3 * 13 * 2
    assert sa["evaluations"] < 0.5 * sg["evaluations"] and sa["tokens_computed"] < 0.5 * sg["tokens_computed"]
    # the far-off center costs walking on the smallest model only; the larger ones start at the η* their
    # horizon's log-linear fit over the smaller widths predicts, which here is exact: 5 points per cell
    per_model = da.groupby("hidden_size").size().to_dict()
    assert per_model[32] > per_model[64] == per_model[128] == 5 * len(horizons)
    # an η needed by the short horizon only stops its trunk early; a trunk asked again for a longer
    # horizon resumes from its stop: the stops a trunk is trained to only increase
    out = Path(adaptive.output_dir)
    stops: dict[str, list[int]] = {}
    for p in sorted((out / "calls").glob("trunk-*.start"), key=lambda p: int(p.name.split(".")[2])):
        stops.setdefault(p.name.split(".")[0], []).append(json.loads(p.read_text())["stop_at_step"])
    assert all(a < b for s in stops.values() for a, b in zip(s, s[1:]))
    assert any(len(s) > 1 for s in stops.values()) and any(s[-1] < 26 for s in stops.values())
    assert all(n.startswith("trunk-") for n, c in calls(out).items() if c > 1)  # only trunks are called again
    assert set(da["run_id"]) <= set(dg["run_id"])  # a run's identity does not depend on how it was chosen
    # half-step refinement adds j* ± 1/2 per cell
    refined = spec(tmp_path / "refined", data_dir, lr_search="adaptive", adaptive_refine=True, **common)
    run_sweep(refined)
    dr = table(Path(refined.output_dir))
    for (w, D), x in best.items():
        lrs = set(dr[(dr["hidden_size"] == w) & (dr["D"] == D)]["log2_lr"])
        assert {x - 0.5, x + 0.5} <= lrs


def test_concurrent_sweeps_never_run_a_run_twice(tmp_path, data_dir):
    cfg = spec(tmp_path, data_dir, log2_lr_start=-9.0, log2_lr_stop=-4.0)
    path = write_spec(cfg, tmp_path / "sweep.yaml")
    procs = [sweep_process(path, FAKE_SLEEP="0.05", FAKE_BARRIER=str(tmp_path / "barrier")) for _ in range(2)]
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    out = Path(cfg.output_dir)
    started = calls(out)
    pids = {json.loads(p.read_text())["pid"] for p in (out / "calls").glob("*.start")}
    assert len(pids) == 2  # both processes trained runs, at the same time
    assert set(started.values()) == {1} and len(started) == 6 * 3  # each run trained once, by one of them
    ref = spec(tmp_path / "ref", data_dir, log2_lr_start=-9.0, log2_lr_stop=-4.0)
    run_sweep(ref, progress_stream=open(os.devnull, "w"))
    pd.testing.assert_frame_equal(comparable(table(out)), comparable(table(Path(ref.output_dir))))


def test_failed_runs_recorded_and_retried_on_request(tmp_path, data_dir):
    cfg = spec(tmp_path, data_dir, trainer="test_sweep:failing_trainer")
    summary = run_sweep(cfg)
    df = table(Path(cfg.output_dir))
    failed = df[df["status"] == "failed"]
    assert len(failed) > 0 and (failed["lr"] > 2.0**-6).all() and summary["status_counts"]["failed"] == len(failed)
    assert (df[df["lr"] <= 2.0**-6]["status"] == "ok").all()
    # a rerun keeps failed results unless asked; retry_failed trains them again
    run_sweep(cfg)
    assert sum(calls(Path(cfg.output_dir)).values()) == len(calls(Path(cfg.output_dir)))
    retry = spec(tmp_path, data_dir, retry_failed=True)
    run_sweep(retry)
    df2 = table(Path(cfg.output_dir))
    assert (df2["status"] == "ok").all() and len(df2) == len(df)


def test_plan_numbers_match_the_formula(tmp_path, data_dir, capsys):
    import torch

    from lrtransfer.modeling import LRTGPT2Config, LRTGPT2ForCausalLM

    horizons = [8 * TPS, 16 * TPS, 32 * TPS]
    cfg = spec(tmp_path, data_dir, widths=[32, 64], depths=[1, 2], head_dim=16, horizons=horizons, seeds=[0, 1])
    p = plan(cfg, mfu=0.5, gpu="a100")
    g = p["grid"]
    n_lr, n_models, n_seeds = 6, 2, 2
    assert g["trunks"] == n_lr * n_models * n_seeds and g["branches"] == 3 * g["trunks"] and g["rows"] == g["branches"]
    ds = {D: D // TPS - round(0.2 * (D // TPS)) for D in horizons}
    per_eval = (ds[horizons[-1]] + sum(D // TPS - ds[D] for D in horizons)) * TPS
    assert g["tokens"] == n_lr * n_models * n_seeds * per_eval
    assert g["tokens_independent"] == n_lr * n_models * n_seeds * sum(horizons)
    flops = 0.0
    for (w, L), m in zip([(32, 1), (64, 2)], p["models"]):
        torch.manual_seed(0)
        model = LRTGPT2ForCausalLM(LRTGPT2Config(vocab_size=320, hidden_size=w, num_hidden_layers=L,
                                                 num_attention_heads=w // 16, max_position_embeddings=SEQ,
                                                 base_hidden_size=w, base_num_layers=L))  # fmt: skip
        N = model.num_non_embedding_params()
        assert m["N"] == N and m["flops_per_token"] == 6 * N + 12 * L * w * SEQ
        flops += n_lr * n_seeds * per_eval * (6 * N + 12 * L * w * SEQ)
    assert g["flops"] == pytest.approx(flops) and g["gpu_hours"] == pytest.approx(flops / (0.5 * 312e12) / 3600)
    assert not (Path(cfg.output_dir) / "runs").exists()  # nothing ran
    # adaptive: bounded between 5 points per model and the whole range
    pa_ = plan(spec(tmp_path, data_dir, lr_search="adaptive", log2_lr_start=-10.0, log2_lr_stop=-2.0), gpu="h100")
    assert pa_["adaptive_min"]["trunks"] == 5 and pa_["adaptive_max"]["trunks"] == 9
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in vars(cfg).items() if v is not None}))
    assert plan_main(["--config", str(path), "--mfu", "0.5", "--gpu", "a100", "--json", "true"]) == 0
    assert json.loads(capsys.readouterr().out)["grid"]["gpu_hours"] == pytest.approx(g["gpu_hours"])
    # without prepared data: the same N (and N_total when vocab_size is given); a sweep needs the data
    missing = str(tmp_path / "missing")
    assert plan(spec(tmp_path, missing, base=base(missing, vocab_size=320)))["models"] == p["models"][:1]
    assert plan(spec(tmp_path, missing, base=base(missing)))["models"][0]["N_total"] is None
    with pytest.raises(ValueError, match="data_dir"):
        run_sweep(spec(tmp_path, missing, base=base(missing, vocab_size=320)))


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"lr_search": "random"}, "lr_search"),
        ({"executor": "ray"}, "executor"),
        ({"log2_lr_step": 0.0}, "log2_lr_step"),
        ({"log2_lr_start": -2.0, "log2_lr_stop": -4.0}, "log2_lr_start"),
        ({"log2_lr_stop": -3.5}, "not a multiple of log2_lr_step"),
        ({"lr_search": "adaptive", "log2_lr_start": -5.0}, "adaptive"),
        ({"adaptive_center": 3.0}, "adaptive_center"),
        ({"horizons": [10 * TPS + 1]}, "horizons"),
        ({"horizons": [0]}, "horizons"),
        ({"widths": [32, 64], "depths": [1, 2, 3]}, "depths"),
        ({"widths": [48], "head_dim": 32}, "head_dim"),
        ({"widths": [32, 32]}, "repeats"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"optimizers": ["sgd"]}, "optimizers"),
        ({"parameterizations": ["nugpt"]}, "parameterization"),
        ({"max_parallel": 0}, "max_parallel"),
        ({"devices": "gpu0"}, "devices"),
        ({"trainer": "nomodule"}, "trainer"),
        ({"base": {"hidden_size": 32, "learning_rate": 1.0}}, "learning_rate"),
        ({"horizons": [10**9 * TPS]}, "total_tokens"),
        ({"base_recipe": "/nonexistent.yaml"}, "base_recipe"),
    ],
)
def test_bad_specs_rejected(tmp_path, data_dir, fields, match):
    with pytest.raises(ValueError, match=match):
        run_sweep(spec(tmp_path, data_dir, **fields))
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_local_process_pool_and_submitit_local_executor(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    lrs = dict(log2_lr_start=-6.0, log2_lr_stop=-5.0)
    pool = spec(tmp_path / "pool", data_dir, max_parallel=2, devices="cpu", start_method="fork", **lrs)
    job = spec(tmp_path / "job", data_dir, horizons=[10 * TPS], executor="slurm", slurm_cluster="local",
               slurm_gpus_per_run=0, slurm_cpus_per_run=1, max_parallel=2, poll_s=0.2, **lrs)  # fmt: skip
    for cfg, n_runs in ((pool, 6), (job, 2)):
        summary = run_sweep(cfg)
        out = Path(cfg.output_dir)
        df = table(out)
        assert summary["runs"] == n_runs and summary["status_counts"] == {"ok": len(df)}
        for r in df.itertuples():
            assert r.val_loss == pytest.approx(synthetic_loss(r.hidden_size, r.D, r.log2_lr, r.seed))
        pids = {json.loads(p.read_text())["pid"] for p in (out / "calls").glob("*.start")}
        assert os.getpid() not in pids and len(pids) == 2  # two worker slots / two SLURM jobs
        assert set(calls(out).values()) == {1}
    assert len(list((Path(job.output_dir) / "slurm").glob("*_result.pkl"))) == 2  # submitit job results


@pytest.mark.slow
def test_real_tiny_sweep_and_branch_equals_standalone(tmp_path, data_dir):
    from lrtransfer.train import TrainConfig, run_training

    horizons = [5 * TPS, 10 * TPS]
    cfg = spec(tmp_path, data_dir, horizons=horizons, log2_lr_start=-6.0, log2_lr_stop=6.0, log2_lr_step=12.0,
               trainer="lrtransfer.sweep:train_run")  # fmt: skip
    summary = run_sweep(cfg)
    out = Path(cfg.output_dir)
    df = table(out)
    assert len(df) == 4 and summary["runs"] == 6
    ok = df[df["log2_lr"] == -6.0]
    bad = df[df["log2_lr"] == 6.0]
    assert (ok["status"] == "ok").all() and (ok["val_loss"] > 0).all() and (ok["val_loss"] < math.log(320) + 0.5).all()
    assert (bad["status"] == "diverged").all()  # η = 64 diverges; recorded, the sweep completed
    assert (ok["tokens"] == ok["D"]).all() and (ok["trunk_id"] != "").all()
    N, _ = build_sweep(cfg).models[0].N, None
    assert (df["N"] == N).all()
    for r in ok.itertuples():
        result = json.loads((Path(r.run_path) / "result.json").read_text())
        assert result["final_val_loss"] == r.val_loss and result["config_hash"] == r.config_hash
    # the branch of the longest horizon equals a standalone run of it
    row = ok[ok["D"] == horizons[-1]].iloc[0]
    fields = dict(base(data_dir), lr=float(row["lr"]), total_tokens=int(row["D"]), output_dir=str(tmp_path / "alone"))
    alone = run_training(TrainConfig(**fields))
    assert alone["status"] == "ok" and alone["config_hash"] == row["config_hash"]
    assert alone["final_val_loss"] == pytest.approx(row["val_loss"], rel=1e-6, abs=1e-6)
