"""Training recipe: loss falls, exact resume after SIGKILL, decay branch = standalone run, divergence,
token-weighted validation, finished runs kept, and bad configs rejected before any compute."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from lrtransfer.train import TrainConfig, run_training, validate_config
from lrtransfer.utils import parse_config

REPO = Path(__file__).resolve().parent.parent
WORDS = "the a cat dog sat on mat ran to house tree big small red blue and then it was over under".split()
TOKENS_PER_STEP = 8 * 32


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny prepared corpus (jsonl written here, byte-level BPE of 320), built once per session."""
    from lrtransfer.data import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("train_data")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + "." for _ in range(3000)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    return prepare(PrepareConfig(source="local", data_files=[str(root / "corpus.jsonl")], file_format="json",
                                 vocab_size=320, val_tokens=4096, shard_tokens=20_000,
                                 output_dir=str(root / "data"), num_proc=1, progress=False))


def tiny(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data_dir=str(data), output_dir=str(out), hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, seq_len=32, global_batch_size=8, total_tokens=20 * TOKENS_PER_STEP,
                lr=3e-3, warmup_steps=2, eval_tokens=2048, log_every=1, track_every=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO)}


def test_loss_falls_and_run_folder(data_dir: Path, tmp_path: Path) -> None:
    cfg = tiny(data_dir, tmp_path / "run", save_model=True, eval_every=10)
    result = run_training(cfg)
    assert result["status"] == "ok", result
    rows = metrics(tmp_path / "run")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0, losses
    assert losses[0] == pytest.approx(math.log(320), abs=0.3)  # a fresh model is near uniform
    assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "lr/hidden_matrix"} <= set(rows[0])
    assert any("eta_eff/block_mean" in r for r in rows) and any("val_loss" in r for r in rows)
    assert rows[0]["lr"] == pytest.approx(3e-3 / 2)  # warmup: (step + 1) / warmup_steps
    assert result["tokens"] == result["D"] == 20 * TOKENS_PER_STEP and result["steps"] == 20
    # Validation is token-weighted NLL over the fixed validation windows: recompute it from the saved model.
    from transformers import AutoModelForCausalLM

    from lrtransfer.data import validation_batches

    tok_cfg = json.loads((tmp_path / "run" / "model" / "tokenizer_config.json").read_text())
    assert "local_files_only" not in tok_cfg and tok_cfg["model_max_length"] == 32  # no offline loader state
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model").eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for b in validation_batches(data_dir, seq_len=32, batch_size=3, max_tokens=2048):
            logits = model(input_ids=b[:, :-1]).logits.double()
            nll += F.cross_entropy(logits.flatten(0, 1), b[:, 1:].flatten(), reduction="sum").item()
            count += b[:, 1:].numel()
    assert count == 2048
    assert result["final_val_loss"] == pytest.approx(nll / count, rel=1e-5)
    assert result["final_val_ppl"] == pytest.approx(math.exp(result["final_val_loss"]))
    assert result["N"] == model.num_non_embedding_params()
    assert result["eta_eff_mean"] > 0
    # config.yaml is the resolved TrainConfig and parses back as --config.
    (again,) = parse_config([TrainConfig], ["--config", str(tmp_path / "run" / "config.yaml")])
    assert again.micro_batch_size == 8 and again.vocab_size == 320
    assert json.loads((tmp_path / "run" / "result.json").read_text()) == result
    # A finished run is never overwritten: the same config returns the stored result, another one is refused.
    stamp = (tmp_path / "run" / "result.json").stat().st_mtime_ns
    assert run_training(cfg) == result
    assert (tmp_path / "run" / "result.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"output_dir=.*differs in \['lr'\]"):
        run_training(dataclasses.replace(cfg, lr=1e-3))


def test_huge_lr_is_recorded_as_diverged(data_dir: Path, tmp_path: Path) -> None:
    result = run_training(tiny(data_dir, tmp_path / "run", lr=10.0, warmup_steps=0))
    assert result["status"] == "diverged"
    assert result["steps"] < 20 and result["final_val_loss"] is None
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert stored["status"] == "diverged"
    last = metrics(tmp_path / "run")[-1]
    assert not math.isfinite(last["loss"]) or last["loss"] > math.log(320) + 1.0


def test_decay_branch_equals_standalone_run(data_dir: Path, tmp_path: Path) -> None:
    # Standalone: 16 steps, WSD decay over the last 4 (from step 12). Trunk: horizon 24, stopped at 12.
    common = dict(decay_fraction=0.25, save_model=True, track_every=3)
    trunk = run_training(tiny(data_dir, tmp_path / "trunk", total_tokens=24 * TOKENS_PER_STEP, stop_at_step=12,
                              checkpoint_steps=[6, 12], **common))
    assert trunk["status"] == "stopped" and trunk["steps"] == 12
    ckpt = tmp_path / "trunk" / "checkpoints" / "step_00000012"
    branch = run_training(tiny(data_dir, tmp_path / "branch", total_tokens=16 * TOKENS_PER_STEP,
                               init_from=str(ckpt), **common))
    alone = run_training(tiny(data_dir, tmp_path / "alone", total_tokens=16 * TOKENS_PER_STEP, **common))
    assert branch["status"] == alone["status"] == "ok"
    assert branch["run_id"] == alone["run_id"]  # the same trajectory
    wb, wa = weights(tmp_path / "branch"), weights(tmp_path / "alone")
    assert all(torch.equal(wb[k], wa[k]) for k in wa)
    assert branch["final_val_loss"] == alone["final_val_loss"]
    assert branch["eta_eff_mean"] == alone["eta_eff_mean"]
    assert [r["step"] for r in metrics(tmp_path / "branch")][0] == 13
    assert {r["step"]: r["lr"] for r in metrics(tmp_path / "branch") if "lr" in r} == {
        r["step"]: r["lr"] for r in metrics(tmp_path / "alone") if "lr" in r and r["step"] > 12}
    # Requested checkpoints survive; the stopped trunk is returned as is when asked again.
    assert sorted(p.name for p in (tmp_path / "trunk" / "checkpoints").iterdir()) == ["step_00000006", "step_00000012"]
    assert run_training(tiny(data_dir, tmp_path / "trunk", total_tokens=24 * TOKENS_PER_STEP, stop_at_step=12,
                             checkpoint_steps=[6, 12], **common)) == trunk
    # A branch must share the trunk's trajectory.
    with pytest.raises(ValueError, match=r"init_from=.*\['lr'\]"):
        validate_config(tiny(data_dir, tmp_path / "x", lr=1e-3, total_tokens=16 * TOKENS_PER_STEP,
                             init_from=str(ckpt), **common))
    with pytest.raises(ValueError, match=r"init_from=.*schedule differs"):  # its decay started at step 10
        validate_config(tiny(data_dir, tmp_path / "x", total_tokens=12 * TOKENS_PER_STEP + TOKENS_PER_STEP,
                             decay_fraction=0.25, save_model=True, track_every=3, init_from=str(ckpt)))


def test_unexpected_error_is_recorded_as_failed(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A crash mid-run still leaves a result (the sweep needs one): status failed, the error, and a return."""
    from lrtransfer import train

    def boom(self, params):
        raise RuntimeError("simulated device fault")

    monkeypatch.setattr(train._Run, "_clip", boom)
    result = run_training(tiny(data_dir, tmp_path / "run"))
    assert result["status"] == "failed" and "simulated device fault" in result["error"]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"
    monkeypatch.undo()
    assert run_training(tiny(data_dir, tmp_path / "run"))["status"] == "ok"  # a failed run is retried


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(data_dir: Path, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture) -> None:
    kw = dict(total_tokens=24 * TOKENS_PER_STEP, checkpoint_every=3, keep_checkpoints=2, save_model=True)
    ref = run_training(tiny(data_dir, tmp_path / "ref", **kw))
    cfg = tiny(data_dir, tmp_path / "run", **kw)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg)))
    kill_at = random.randint(8, 22)  # >= 2 finished checkpoints exist by then
    proc = subprocess.Popen([sys.executable, "-m", "lrtransfer.train", "--config", str(tmp_path / "cfg.yaml")],
                            env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        path = tmp_path / "run" / "metrics.jsonl"
        steps = [json.loads(x)["step"] for x in path.read_text().splitlines() if x.endswith("}")] if path.exists() \
            else []
        if steps and steps[-1] >= kill_at:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before step {kill_at}: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "result.json").exists()
    # Corrupt the newest checkpoint: resume names it, falls back to the previous one, ends identical.
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert len(ckpts) >= 2, (kill_at, ckpts)
    blob = ckpts[-1] / "model.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = run_training(dataclasses.replace(cfg, resume="auto"))
    assert f"checkpoint {ckpts[-1]} is corrupted" in capfd.readouterr().err
    assert result["status"] == "ok" and result["final_val_loss"] == ref["final_val_loss"], (kill_at, result, ref)
    assert result["eta_eff_mean"] == ref["eta_eff_mean"]
    wr, w = weights(tmp_path / "ref"), weights(tmp_path / "run")
    assert all(torch.equal(wr[k], w[k]) for k in wr), kill_at
    rows, ref_rows = metrics(tmp_path / "run"), metrics(tmp_path / "ref")
    assert [(r["step"], r.get("loss")) for r in rows] == [(r["step"], r.get("loss")) for r in ref_rows]
    # Interval checkpoints are removed at the end of a finished run; the corrupted one is kept aside.
    left = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert len(left) == 1 and left[0].startswith(ckpts[-1].name + ".corrupt")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_accumulation(data_dir: Path, tmp_path: Path) -> None:
    kw = dict(total_tokens=10 * TOKENS_PER_STEP, micro_batch_size=4, save_model=True)
    one = run_training(tiny(data_dir, tmp_path / "one", **kw))  # 1 process x micro 4 x accum 2
    two_cfg = tiny(data_dir, tmp_path / "two", **kw)  # 2 processes x micro 4 x accum 1
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(dataclasses.asdict(two_cfg)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "lrtransfer.train", "--config", str(tmp_path / "cfg.yaml")]
    proc = subprocess.run(cmd, env={**subprocess_env(), "ACCELERATE_USE_CPU": "1"}, cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world=2 x micro 4 x accum 1" in proc.stdout
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert two["status"] == "ok" and two["run_id"] == one["run_id"]
    assert two["final_val_loss"] == pytest.approx(one["final_val_loss"], abs=1e-5)
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=0)
    l1 = [r["loss"] for r in metrics(tmp_path / "one") if "loss" in r]
    l2 = [r["loss"] for r in metrics(tmp_path / "two") if "loss" in r]
    assert l2 == pytest.approx(l1, abs=1e-5)


# --------------------------------------------------------------------------------------------------
# Bad configs: each a ValueError naming the field (and the allowed values), raised before any compute.

BAD_CONFIGS = [
    ({"model_family": "llama"}, "model_family"),
    ({"parameterization": "ntk"}, "parameterization"),
    ({"model_family": "nugpt", "parameterization": "mup"}, "parameterization"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"schedule": "step"}, "schedule"),
    ({"decay_shape": "exp"}, "decay_shape"),
    ({"resume": "sometimes"}, "resume"),
    ({"mixed_precision": "fp16"}, "mixed_precision"),
    ({"lr": -1e-3}, "lr"),
    ({"lr": 0.0}, "lr"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"beta2": 1.0}, "beta2"),
    ({"eps": 0.0}, "eps"),
    ({"grad_clip": -1.0}, "grad_clip"),
    ({"decay_fraction": 0.0}, "decay_fraction"),
    ({"decay_fraction": 1.5}, "decay_fraction"),
    ({"final_lr_ratio": 2.0}, "final_lr_ratio"),
    ({"warmup_steps": 20}, "warmup_steps"),  # as long as the run
    ({"warmup_steps": 18}, "warmup_steps"),  # into the WSD decay (starts at 16)
    ({"micro_batch_size": 3}, "micro_batch_size"),  # 8 sequences are not 3 x k
    ({"total_tokens": 20 * TOKENS_PER_STEP + 7}, "total_tokens"),  # not a multiple of tokens per step
    ({"total_tokens": 10_000 * TOKENS_PER_STEP}, "total_tokens"),  # more than the data holds
    ({"data_dir": "/nonexistent/data"}, "data_dir"),
    ({"vocab_size": 256}, "vocab_size"),  # the data's vocab is 320
    ({"accelerate_config": "tpu_pod"}, "accelerate_config"),
    ({"report_to": ["mlflow"]}, "report_to"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"stop_at_step": 21}, "stop_at_step"),
    ({"checkpoint_steps": [0, 5]}, "checkpoint_steps"),
    ({"keep_checkpoints": 0}, "keep_checkpoints"),
    ({"base_steps": 0}, "base_steps"),
    ({"max_position_embeddings": 16}, "max_position_embeddings"),
    ({"eval_tokens": 8}, "eval_tokens"),
    ({"model_overrides": "{not json"}, "model_overrides"),
    ({"model_overrides": '{"no_such_field": 1}'}, "model_overrides"),
    ({"model_overrides": '{"hidden_size": 64}'}, "model_overrides"),  # owned by TrainConfig
    ({"init_from": "/nonexistent/checkpoints/step_00000010"}, "init_from"),
    ({"divergence_ema": 1.0}, "divergence_ema"),
    ({"attn_implementation": "magic"}, "attn_implementation"),
]


@pytest.mark.parametrize("change,field", BAD_CONFIGS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_CONFIGS)])
def test_bad_config_is_rejected_before_compute(data_dir: Path, tmp_path: Path, change: dict, field: str) -> None:
    cfg = tiny(data_dir, tmp_path / "run", **change)
    with pytest.raises(ValueError, match=rf"^{field}\b") as err:
        run_training(cfg)
    assert "allowed" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_bad_batch_for_the_world_size_and_missing_shard(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^global_batch_size=8 is not divisible by the world size 3"):
        validate_config(tiny(data_dir, tmp_path / "run"), world_size=3)
    _, plan = validate_config(tiny(data_dir, tmp_path / "run", micro_batch_size=2), world_size=2)
    assert (plan.grad_accum, plan.steps) == (2, 20)
    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    (broken / "train_00001.bin").unlink()
    with pytest.raises(ValueError, match=r"^data_dir=.*train_00001.bin .* missing.*allowed"):
        validate_config(tiny(broken, tmp_path / "run"))
    # resume="never" refuses a folder holding an unfinished attempt instead of mixing the two.
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"^resume='never'.*allowed"):
        validate_config(tiny(data_dir, tmp_path / "run", resume="never"))
