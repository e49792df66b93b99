"""Hub folders, cards and publishing (lrtransfer.hub).

Run and study folders are built here from tiny models (save_pretrained), a BPE tokenizer trained with
`tokenizers`, and a synthetic results table; the Hub itself is faked at the HfApi edge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError

from lrtransfer import hub
from lrtransfer.modeling import MODEL_FAMILIES

PROMPT = "def main(argv):\n    return"
D0 = 4096
SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
             base_hidden_size=32, base_num_layers=2)


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE trained here on stdlib source, wrapped as a PreTrainedTokenizerFast."""
    import json as json_module

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([inspect.getsource(json_module), inspect.getsource(shutil)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def _make_data(root: Path, tokenizer) -> Path:
    """A prepared-data folder's manifest (the fields the card reads) and its tokenizer; no shards needed."""
    from lrtransfer.data import PrepareConfig

    data = root / "data"
    tokenizer.save_pretrained(data)
    prep = dataclasses.asdict(PrepareConfig(source="stdlib", output_dir=str(data), vocab_size=320, val_tokens=2048))
    manifest = {"source": "stdlib", "python_version": platform.python_version(), "tokenizer_hash": "t" * 16,
                "vocab_size": 320, "eos_token_id": tokenizer.eos_token_id, "config": prep, "config_hash": "p" * 12}
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data


def _make_run(root: Path, tokenizer, *, family: str, parameterization: str, lr: float, D: int = D0,
              seed: int = 0, optimizer: str = "adamw", status: str = "ok") -> Path:
    """A finished run folder as train.py writes it: config.yaml (a real TrainConfig), result.json, model/."""
    from lrtransfer.train import TrainConfig

    config_cls, model_cls = MODEL_FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(vocab_size=320, parameterization=parameterization, **SHAPE)).eval()
    run_id = f"{family}-{parameterization}-{optimizer}-lr{math.log2(lr):+.0f}-D{D}-s{seed}"
    run = root / "runs" / run_id
    model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    trunk = root / "runs" / "trunk" / "checkpoints" / "step_00000048"
    cfg = TrainConfig(model_family=family, parameterization=parameterization, **SHAPE, vocab_size=320,
                      data_dir=str(root / "data"), seq_len=16, global_batch_size=4, total_tokens=D, optimizer=optimizer,
                      lr=lr, warmup_steps=4, seed=seed, output_dir=str(run), init_from=str(trunk), save_model=True)
    (run / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    loss = 5.0 + 0.1 * (math.log2(lr) + 7) ** 2
    result = dict(status=status, run_id=run_id, config_hash=run_id, model_family=family,
                  parameterization=parameterization, optimizer=optimizer, N=model.num_non_embedding_params(),
                  N_total=model.num_parameters(), hidden_size=SHAPE["hidden_size"],
                  num_hidden_layers=SHAPE["num_hidden_layers"], D=D, tokens=D, steps=D // 64, lr=lr, seed=seed,
                  final_val_loss=loss, final_val_ppl=math.exp(loss), eta_eff_mean=0.01, wall_time_s=1.5)
    (run / "result.json").write_text(json.dumps(result))
    return run


def _results_table(run: Path) -> pd.DataFrame:
    """A sweep around the real run: 2 widths × 3 horizons × 7 LRs, one diverged point per width, loss
    parabolic in log2 η with its vertex at -7 + 0.3·log2(D/D0) − 0.5·log2(N/N0) (the real run: N0, D0)."""
    res = json.loads((run / "result.json").read_text())
    N0 = res["N"]
    rows = []
    for width, N in ((res["hidden_size"], N0), (2 * res["hidden_size"], 4 * N0)):
        for D in (D0, 2 * D0, 4 * D0):
            for k in range(-10, -3):
                lr = 2.0**k
                real = N == N0 and D == D0 and lr == res["lr"]
                diverged = k == -4 and D == 4 * D0
                vertex = -7 + 0.3 * math.log2(D / D0) - 0.5 * math.log2(N / N0)
                loss = 5.0 - 0.1 * math.log2(D / D0) + 0.1 * (k - vertex) ** 2 + 0.003 * math.sin(7 * k + D)
                rows.append(dict(
                    run_id=res["run_id"] if real else f"gpt2-sp-adamw-w{width}-lr{k:+d}-D{D}-s0",
                    config_hash="c" * 12, model_family="gpt2", parameterization="sp", optimizer="adamw",
                    N=N, N_total=N + 1000, hidden_size=width, num_hidden_layers=res["num_hidden_layers"], D=D,
                    lr=lr, seed=0, status="diverged" if diverged else "ok",
                    val_loss=res["final_val_loss"] if real else (float("nan") if diverged else loss),
                    eta_eff_mean=0.01 * 2 ** ((k + 7) / 2), tokens=D, wall_time_s=1.0,
                    run_path=str(run) if real else f"runs/missing-w{width}-{k}-{D}"))
    return pd.DataFrame(rows)


def _make_study(root: Path, run: Path) -> Path:
    """The sweep's folder as sweep + fit + plot leave it: runs/, results.parquet, fits.json (real fits),
    plots/, sweep.yaml, summary.json."""
    from matplotlib.figure import Figure

    from lrtransfer.fit import fit_results, write_fits

    results = _results_table(run)
    results.to_parquet(root / "results.parquet")
    write_fits(fit_results(root / "results.parquet", n_boot=100), root)
    (root / "plots").mkdir()
    for name in ("loss_vs_lr", "eta_star_vs_D"):
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().plot([0, 1], [1, 0])
        fig.savefig(root / "plots" / f"{name}.png")
    (root / "sweep.yaml").write_text(yaml.safe_dump({"output_dir": str(root), "base": {"data_dir": str(root / "data")},
                                                     "widths": [32, 64]}))
    (root / "summary.json").write_text(json.dumps({"rows": len(results)}))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory, tokenizer):
    """A sweep folder with a GPT-2 SP run inside (its study is found from its path), a νGPT run outside any
    study, and both model folders built."""
    root = tmp_path_factory.mktemp("hub")
    study = root / "sweep"
    _make_data(study, tokenizer)
    runs = {"gpt2": _make_run(study, tokenizer, family="gpt2", parameterization="sp", lr=2.0**-7),
            "nugpt": _make_run(root, tokenizer, family="nugpt", parameterization="nugpt", lr=2.0**-6)}
    _make_study(study, runs["gpt2"])
    folders = {name: hub.build_model_folder(run, repo_name=f"user/{name}") for name, run in runs.items()}
    return {"root": root, "runs": runs, "study": study, "folders": folders}


def _tree_digest(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


class FakeApi(HfApi):
    """HfApi whose two network calls only record their arguments (the Hub is the one faked edge)."""

    def __init__(self, fail: Exception | None = None):
        super().__init__(token=False)
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail = fail

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", (repo_id,), kwargs))
        if self.fail is not None:
            raise self.fail
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, **kwargs):
        ops = list(operations)
        self.calls.append(("create_commit", (repo_id,), {**kwargs, "operations": ops}))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


# ---------------------------------------------------------------------------------------------- tests


LOAD_SCRIPT = r"""
import json, sys
sys.modules["lrtransfer"] = None  # this process must not see lrtransfer: only the folder's own code
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out = {}
for name, path, remote in json.loads(sys.argv[1]):
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=remote).eval()
    enc = tok(sys.argv[2], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, -1]
        gen = model.generate(**enc, max_new_tokens=6, do_sample=False)
    out[name] = {"module": type(model).__module__, "cls": type(model).__name__, "ids": enc["input_ids"][0].tolist(),
                 "logits": logits.tolist(), "gen": gen[0].tolist(), "text": tok.decode(gen[0])}
print("RESULT" + json.dumps(out))
"""


def _reference(run: Path, tokenizer) -> dict:
    res = json.loads((run / "result.json").read_text())
    model = MODEL_FAMILIES[res["model_family"]][1].from_pretrained(run / "model").eval()
    enc = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, -1]
        gen = model.generate(**enc, max_new_tokens=6, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.eos_token_id)
    return {"ids": enc["input_ids"][0].tolist(), "logits": logits, "gen": gen[0].tolist()}


def test_pushed_folder_loads_without_lrtransfer(tree, tokenizer, tmp_path):
    """The exact files a publish would send load with Auto classes + remote code in a bare process."""
    folders = {**tree["folders"], "stock": hub.build_model_folder(tree["runs"]["gpt2"], stock=True)}
    assert not list(folders["stock"].glob("*.py")) and "auto_map" not in json.loads(
        (folders["stock"] / "config.json").read_text())
    targets = []
    for name, folder in folders.items():
        ops = hub.publish(folder, f"user/{name}", dry_run=True)
        copy = tmp_path / name
        for op in ops:  # copy exactly the operations, nothing else
            (copy / op.path_in_repo).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(op.path_or_fileobj, copy / op.path_in_repo)
        assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
                "training_config.yaml"} <= {op.path_in_repo for op in ops}
        tok_cfg = json.loads((copy / "tokenizer_config.json").read_text())
        assert "local_files_only" not in tok_cfg and tok_cfg["model_max_length"] == 64
        assert json.loads((copy / "config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id
        targets.append([name, str(copy), name != "stock"])  # the stock export needs no remote code
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, json.dumps(targets), PROMPT], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    for name, _, _ in targets:
        got, ref = out[name], _reference(tree["runs"]["gpt2" if name == "stock" else name], tokenizer)
        if name == "stock":
            assert (got["module"], got["cls"]) == ("transformers.models.gpt2.modeling_gpt2", "GPT2LMHeadModel")
        else:  # the folder's own code, imported by transformers, not lrtransfer
            assert got["module"].startswith("transformers_modules"), got["module"]
        assert got["ids"] == ref["ids"]
        torch.testing.assert_close(torch.tensor(got["logits"]), ref["logits"], rtol=1e-5, atol=1e-5)
        assert got["gen"] == ref["gen"] and len(got["gen"]) > len(got["ids"])
    assert set(out) == {"gpt2", "nugpt", "stock"}


def test_model_card_round_trips_model_index(tree):
    folder, run = tree["folders"]["gpt2"], tree["runs"]["gpt2"]
    res = json.loads((run / "result.json").read_text())
    card = ModelCard.load(folder / "README.md")
    evals = {e.metric_type: e for e in card.data.eval_results}
    assert set(evals) == {"loss", "perplexity"}
    assert evals["loss"].metric_value == pytest.approx(res["final_val_loss"], rel=1e-12)
    assert evals["perplexity"].metric_value == pytest.approx(res["final_val_ppl"], rel=1e-12)
    assert all(e.dataset_split == "validation" and e.task_type == "text-generation" for e in evals.values())
    assert card.data.model_name == "user/gpt2"
    assert {"lrtransfer", "gpt2", "sp", "adamw"} <= set(card.data.tags)
    text = card.text
    assert evals["loss"].dataset_name == f"Python {platform.python_version()} standard library"
    # training table
    assert f"| N (non-embedding params) | {res['N']} " in text
    assert "| batch | 4 × 16 = 64 tokens |" in text and f"| η (peak LR) | {hub._fmt_lr(res['lr'])} |" in text
    # the reproduce commands parse, and give back the same data and the same run identity
    from lrtransfer.data import PrepareConfig
    from lrtransfer.train import TrainConfig, identity
    from lrtransfer.utils import parse_config

    lines = text.split("## Reproduce")[1].split("```")[1].splitlines()
    prepare = next(x for x in lines if x.startswith("lrtransfer prepare "))
    (prep,) = parse_config([PrepareConfig], prepare.split()[2:])
    manifest = json.loads((tree["study"] / "data" / "manifest.json").read_text())
    assert {**dataclasses.asdict(prep), "output_dir": None, "expected_tokenizer_hash": None} == {
        **manifest["config"], "output_dir": None, "expected_tokenizer_hash": None}
    assert prep.expected_tokenizer_hash == manifest["tokenizer_hash"] and prep.output_dir == "DATA_DIR"
    train = next(x for x in lines if x.startswith("lrtransfer train "))
    assert train == "lrtransfer train --config training_config.yaml --data_dir DATA_DIR"
    (cfg,) = parse_config([TrainConfig], ["--config", str(folder / "training_config.yaml"), *train.split()[4:]])
    (orig,) = parse_config([TrainConfig], ["--config", str(run / "config.yaml")])
    assert identity(cfg, "fp") == identity(orig, "fp") and cfg.init_from is None and orig.init_from is not None
    assert "WSD decay branch" in text
    # sweep context: this cell's 7 runs with this run marked, η* with interval from fits.json, where η sits
    fits = json.loads((tree["study"] / "fits.json").read_text())
    (cell,) = [c for c in fits["groups"][0]["cells"] if c["N"] == res["N"] and c["D"] == res["D"]]
    assert "(7 runs in this cell)" in text
    assert re.search(r"\| 0\.00781 \(2\^-7\.00\) \| 0 \| ok \| 5 \| [0-9.]+ \| \*\*this run\*\* \|", text)
    assert text.count("**this run**") == 1
    assert (f"of this cell: {hub._fmt_lr(cell['eta_star'])}, 16–84% bootstrap interval "
            f"[{hub._fmt_lr(cell['eta_star_lo'])}, {hub._fmt_lr(cell['eta_star_hi'])}]") in text
    assert abs(math.log2(cell["eta_star"]) + 7) < 0.1  # the synthetic sweep's vertex
    assert f"sits {math.log2(res['lr'] / cell['eta_star']):+.2f} log2 units from η\\*" in text
    # what the fitted laws predict at this scale, from fits.json's own coefficients
    joint = fits["groups"][0]["laws"]["eta_star"]["joint"]
    pred = joint["c"] - joint["a"] * math.log2(res["N"]) - joint["b"] * math.log2(res["D"])
    assert f"{hub._joint_text(joint)} predicts η\\* = {hub._fmt_lr(2**pred)} at this scale" in text
    lin = fits["groups"][0]["laws"]["eta_star"]["along_D"][str(res["N"])]["linear"]
    pred = lin["slope"] * math.log2(res["D"]) + lin["intercept"]
    assert f"along D (all 3 scales) predicts η\\* = {hub._fmt_lr(2**pred)}" in text
    assert (folder / "plots" / "sweep_cell.png").stat().st_size > 1000
    assert "](plots/sweep_cell.png)" in text


def test_study_folder_loads_with_datasets(tree, tmp_path):
    from datasets import load_dataset

    study = tree["study"]
    run_id = json.loads((tree["runs"]["gpt2"] / "result.json").read_text())["run_id"]
    folder = hub.build_study_folder(study, tmp_path / "study_hub", repo_type="dataset", repo_name="user/study",
                                    model_repos={run_id: "user/gpt2"})
    table = pd.read_parquet(study / "results.parquet")
    ds = load_dataset("parquet", data_files=str(folder / "results.parquet"), cache_dir=str(tmp_path / "cache"))["train"]
    assert ds.num_rows == len(table) and set(table.columns) <= set(ds.column_names)
    assert sorted(ds["run_id"]) == sorted(table["run_id"])
    assert json.loads((folder / "fits.json").read_text()) == json.loads((study / "fits.json").read_text())
    card = ModelCard.load(folder / "README.md")
    assert card.data.configs == [{"config_name": "default", "data_files": "results.parquet"}]
    text = card.text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(images) == ["plots/eta_star_vs_D.png", "plots/loss_vs_lr.png"]
    assert all((folder / p).is_file() for p in images)
    assert "| gpt2/sp/adamw | 32 (25.5K), 64 (102K) | 4.1K, 8.19K, 16.4K | 2^-10.0 … 2^-4.0 (7 values) | 1 |" in text
    assert "42 (2 diverged, 40 ok)" in text
    fits = json.loads((study / "fits.json").read_text())
    group = fits["groups"][0]
    for c in group["cells"]:  # every η* with its interval, every η*_eff
        assert (f"| {hub._human(c['N'])} | {c['hidden_size']} | {hub._human(c['D'])} | "
                f"{hub._interval(c['eta_star'], c['eta_star_lo'], c['eta_star_hi'])} | "
                f"{hub._interval(c['eta_eff_star'], c['eta_eff_star_lo'], c['eta_eff_star_hi'])} |") in text
    law = group["laws"]["eta_star"]
    assert f"- joint law: {hub._joint_text(law['joint'], 'η*')}" in text
    assert abs(law["joint"]["a"] - 0.5) < 0.05 and abs(law["joint"]["b"] + 0.3) < 0.05  # the synthetic vertex
    for at, fit in law["along_D"].items():  # slope and curvature with intervals, r2_ood
        lin, quad = fit["linear"], fit["quadratic"]
        ex = group["extrapolation"]["eta_star"]["along_D"][at]
        assert (f"| {hub._interval(lin['slope'], lin['slope_lo'], lin['slope_hi'], lr=False)} | "
                f"{hub._fmt(lin['r2'], 3)} | {hub._interval(quad['c2'], quad['c2_lo'], quad['c2_hi'], lr=False)} | "
                f"{hub._fmt(ex['r2_ood'], 3)} (D ≤ ") in text
    assert "## Compute budget of the extrapolation" in text and "budget_to_r2_0.9" in text
    assert "lrtransfer sweep --config sweep.yaml" in text and (folder / "sweep.yaml").is_file()
    assert "lrtransfer prepare --source stdlib " in text and f"--output_dir {study / 'data'}" in text
    assert "[user/gpt2](https://huggingface.co/user/gpt2)" in text
    assert 'data_files="hf://datasets/user/study/results.parquet"' in text
    model_card = ModelCard.load(hub.build_study_folder(study, tmp_path / "as_model", repo_name="user/s") / "README.md")
    assert "configs" not in model_card.data.to_dict()


def test_publish_sends_exactly_the_folder(tree):
    folder = tree["folders"]["gpt2"]
    api = FakeApi()
    before = _tree_digest(folder)
    ops = hub.publish(folder, "user/gpt2", private=True, api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "create_commit"]  # one repo call, ONE commit
    _, args, kwargs = api.calls[0]
    assert args == ("user/gpt2",) and kwargs["exist_ok"] is True and kwargs["private"] is True
    assert kwargs["repo_type"] == "model"
    _, args, kwargs = api.calls[1]
    sent = {op.path_in_repo: hashlib.sha256(Path(op.path_or_fileobj).read_bytes()).hexdigest()
            for op in kwargs["operations"]}
    assert sent == before and kwargs["operations"] == ops and kwargs["repo_type"] == "model"
    assert "modeling_lrt_gpt2.py" in sent and "configuration_lrt_gpt2.py" in sent
    assert _tree_digest(folder) == before


def test_publish_main_study_dataset_repo_and_record(tree, monkeypatch, capsys):
    """The CLI builds the study folder, pushes it to a dataset repo, and records where it went."""
    api = FakeApi()
    monkeypatch.setattr(hub, "HfApi", lambda: api)
    study = tree["study"]
    assert hub.publish_main([str(study), "--repo-id", "user/study", "--repo-type", "dataset"]) == 0
    kinds = [c[0] for c in api.calls]
    assert kinds == ["create_repo", "create_commit"] and api.calls[0][2]["repo_type"] == "dataset"
    sent = {op.path_in_repo for op in api.calls[1][2]["operations"]}
    assert sent == {"README.md", "results.parquet", "fits.json", "plots/loss_vs_lr.png", "plots/eta_star_vs_D.png",
                    "sweep.yaml", "summary.json"}
    assert json.loads((study / hub.PUBLISHED_RECORD).read_text())["dataset"]["repo_id"] == "user/study"
    # a model card built afterwards links its study repo
    folder = hub.build_model_folder(tree["runs"]["gpt2"], tree["root"] / "relinked")
    assert "[user/study](https://huggingface.co/datasets/user/study)" in (folder / "README.md").read_text()
    # dry run: prints the operations, calls nothing
    api.calls.clear()
    assert hub.publish_main([str(folder), "--repo-id", "user/x", "--dry-run"]) == 0
    assert api.calls == [] and "add model.safetensors" in capsys.readouterr().out


def test_offline_publish_fails_clearly_and_retries(tree, tmp_path, capsys):
    run = tree["runs"]["gpt2"]
    folder = hub.build_model_folder(run, tmp_path / "offline", repo_name="user/gpt2")
    before, run_before = _tree_digest(folder), _tree_digest(run)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(hub.PublishError, match=r"offline mode \(HF_HUB_OFFLINE=1\).*intact; rerun the same command"):
        hub.publish(folder, "user/gpt2")  # the real HfApi, refused by offline mode before any request
    assert hub.publish_main([str(run), "--repo-id", "user/gpt2", "--out", str(folder)]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert _tree_digest(folder) == before and _tree_digest(run) == run_before  # nothing recorded, nothing lost
    # any Hub error is reported the same way; the same call then succeeds
    err = HfHubHTTPError("500 Server Error", response=mock.Mock(headers={}, status_code=500))
    with pytest.raises(hub.PublishError, match="HfHubHTTPError: 500 Server Error.*rerun the same command"):
        hub.publish(folder, "user/gpt2", api=FakeApi(fail=err))
    with pytest.raises(hub.PublishError, match="ConnectionError: reset"):
        hub.publish(folder, "user/gpt2", api=FakeApi(fail=ConnectionError("reset")))
    assert _tree_digest(folder) == before
    api = FakeApi()
    hub.publish(folder, "user/gpt2", api=api)
    assert len(api.calls[1][2]["operations"]) == len(before)


def test_pickles_and_unknown_files_refused(tree, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(tree["folders"]["gpt2"], folder)
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    (folder / "optimizer.pt").write_bytes(b"x")
    (folder / "notes.exe").write_bytes(b"x")
    api = FakeApi()
    with pytest.raises(ValueError, match=r"pickle-capable files \['optimizer.pt', 'pytorch_model.bin'\].*"
                                         r"outside the allowlist \['notes.exe'\]"):
        hub.publish(folder, "user/bad", api=api)
    assert api.calls == [] and (folder / "pytorch_model.bin").is_file()


def test_bad_input_is_rejected_before_work(tree, tokenizer, tmp_path):
    folder = tree["folders"]["gpt2"]
    with pytest.raises(ValueError, match=r"repo_type='space'; allowed values: \['model', 'dataset'\]"):
        hub.publish(folder, "user/x", repo_type="space", dry_run=True)
    with pytest.raises(ValueError, match="repo_id='no-namespace' must be 'user/name'"):
        hub.publish(folder, "no-namespace", dry_run=True)
    with pytest.raises(ValueError, match="repo_type='space'"):
        hub.build_study_folder(tree["study"], tmp_path / "s", repo_type="space")
    diverged = _make_run(tmp_path, tokenizer, family="gpt2", parameterization="mup", lr=2.0**-3, status="diverged")
    with pytest.raises(ValueError, match="status='diverged'; only runs with status 'ok'"):
        hub.build_model_folder(diverged)
    assert not (diverged / "hub").exists()
    with pytest.raises(ValueError, match="stock=True needs model_family='gpt2' and parameterization='sp'"):
        mup = _make_run(tmp_path, tokenizer, family="gpt2", parameterization="mup", lr=2.0**-5)
        hub.build_model_folder(mup, stock=True)
    assert hub.card_main([str(tmp_path)]) == 2  # neither a run nor a study
    (tmp_path / "empty").mkdir()
    assert hub.publish_main([str(tmp_path / "empty"), "--repo-id", "user/x"]) == 2


def test_card_rebuild_is_atomic(tree, tmp_path, monkeypatch):
    """A failed rebuild leaves the previous folder untouched and no temp folders behind."""
    run = tree["runs"]["gpt2"]
    out = tmp_path / "atomic"
    assert hub.card_main([str(run), "--out", str(out)]) == 0  # `lrtransfer card RUN --out DIR`
    before = _tree_digest(out)
    assert {"README.md", "model.safetensors", "plots/sweep_cell.png"} <= set(before)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hub, "_write_card", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        hub.build_model_folder(run, out)
    assert _tree_digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["atomic"]
