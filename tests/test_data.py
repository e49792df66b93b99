"""Data: prepare (stdlib, local FineWeb-schema parquet, the fineweb Hub path) -> shards -> loaders.

References: the stream each test expects is rebuilt from the raw texts with the saved tokenizer
through `AutoTokenizer` (not the prepare code path), then compared token for token.
"""

from __future__ import annotations

import ast
import json
import platform
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from lrtransfer import data as D
from lrtransfer.data import (
    PrepareConfig,
    TokenLoader,
    load_manifest,
    open_shard,
    prepare,
    prepare_main,
    tokenizer_hash,
    validation_batches,
    validation_token_count,
)

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "data"
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but "
         "have an they you were her she there been one all we their has would when if so no learning rate "
         "transfer model width depth token horizon optimizer weight norm equilibrium").split()
VAL, TRAIN, SHARD = 1000, 20_000, 6000


def _texts(n: int = 160, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(20, 400)))
        docs.append(" ".join(words).capitalize() + ".\n")
    return docs


def _write_fineweb_parquet(path: Path, texts: list[str]) -> Path:
    n = len(texts)
    table = pa.table({
        "text": texts,
        "id": [f"<urn:uuid:{i:08d}>" for i in range(n)],
        "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.org/{i}" for i in range(n)],
        "date": ["2024-02-20T00:00:00Z"] * n,
        "file_path": ["s3://commoncrawl/crawl-data/x.warc.gz"] * n,
        "language": ["en"] * n,
        "language_score": [0.95] * n,
        "token_count": [len(t.split()) for t in texts],
    })
    pq.write_table(table, path, row_group_size=50)
    return path


def _expected_streams(data_dir: Path, texts: list[str], val: int, train: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validation = first documents cut at `val` tokens; training starts at the next document."""
    tok = AutoTokenizer.from_pretrained(data_dir)
    docs = [ids + [tok.eos_token_id] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    ends = np.cumsum([len(d) for d in docs])
    first_train = int(np.searchsorted(ends, val, side="left")) + 1
    flat = np.concatenate([np.asarray(d) for d in docs])
    train_stream = flat[ends[first_train - 1]:]
    return flat[:val], train_stream[:train] if train is not None else train_stream


def _read_split(data_dir: Path, split: str) -> np.ndarray:
    m = load_manifest(data_dir)
    return np.concatenate([np.asarray(open_shard(data_dir / s["file"], m["dtype"])) for s in m[split]["shards"]])


def _local_cfg(out: Path, files: list[str], **kw) -> PrepareConfig:
    base = dict(source="local", output_dir=str(out), data_files=files, vocab_size=512, val_tokens=VAL,
                train_tokens=TRAIN, shard_tokens=SHARD, num_proc=2, progress=False)
    return PrepareConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[list[str], Path]:
    texts = _texts()
    return texts, _write_fineweb_parquet(tmp_path_factory.mktemp("src") / "fw.parquet", texts)


@pytest.fixture(scope="module")
def local_dir(corpus, tmp_path_factory) -> Path:
    _, parquet = corpus
    return prepare(_local_cfg(tmp_path_factory.mktemp("local") / "data", [str(parquet)]))


def test_local_parquet_exact_shards_and_loader(corpus, local_dir):
    texts, _ = corpus
    m = load_manifest(local_dir)
    assert [s["tokens"] for s in m["train"]["shards"]] == [6000, 6000, 6000, 2000]
    assert m["val"]["tokens"] == VAL and m["train"]["tokens"] == TRAIN
    assert m["dtype"] == "uint16" and m["vocab_size"] % 64 == 0 and m["vocab_size"] >= m["tokenizer_vocab_size"]
    tok = AutoTokenizer.from_pretrained(local_dir)
    assert tokenizer_hash(tok) == m["tokenizer_hash"] and tok.eos_token_id == m["eos_token_id"]
    assert not (local_dir / "progress.json").exists()

    exp_val, exp_train = _expected_streams(local_dir, texts, VAL, TRAIN)
    val, train = _read_split(local_dir, "val"), _read_split(local_dir, "train")
    np.testing.assert_array_equal(val, exp_val)
    np.testing.assert_array_equal(train, exp_train)
    assert m["val"]["documents"] + m["train"]["documents"] <= len(texts)
    assert int((val == m["eos_token_id"]).sum()) == m["val"]["documents"] - 1  # last val document is cut

    # Loader: exactly total_tokens target tokens, every window a distinct slice of the train stream.
    seq, gbs = 32, 4
    total = (TRAIN - 1) // seq // gbs * gbs * seq
    loader = TokenLoader(local_dir, seq_len=seq, global_batch_size=gbs, seed=1, total_tokens=total)
    batches = list(loader)
    assert len(batches) == loader.num_steps == total // (gbs * seq)
    rows = torch.cat(batches).numpy()
    assert rows.shape == (total // seq, seq + 1) and rows[:, 1:].size == total
    windows = np.lib.stride_tricks.sliding_window_view(train, seq + 1)[::seq]
    index = {w.tobytes(): i for i, w in enumerate(windows)}
    used = [index[r.astype(np.uint16).tobytes()] for r in rows]
    assert len(set(used)) == len(used) == len(rows)
    with pytest.raises(StopIteration):
        loader.next_batch()

    # Validation: fixed windows of the val split, known token count.
    vb = torch.cat(list(validation_batches(local_dir, seq_len=seq, batch_size=5))).numpy()
    np.testing.assert_array_equal(vb, np.lib.stride_tricks.sliding_window_view(val, seq + 1)[::seq][: len(vb)])
    assert len(vb) == (VAL - 1) // seq and validation_token_count(local_dir, seq_len=seq) == len(vb) * seq


def test_fineweb_source_streams_hub_name(corpus, local_dir, tmp_path, monkeypatch):
    """`fineweb` runs the real streaming code; only the Hub name is resolved to the local parquet."""
    _, parquet = corpus
    real, calls = datasets.load_dataset, []

    def load_dataset(path, *args, **kwargs):
        if path == "HuggingFaceFW/fineweb":
            calls.append(kwargs)
            return real("parquet", data_files=[str(parquet)], split=kwargs["split"], streaming=kwargs["streaming"])
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    out = prepare(PrepareConfig(source="fineweb", fineweb_name="sample-10BT", output_dir=str(tmp_path / "fw"),
                                tokenizer=str(local_dir), val_tokens=VAL, train_tokens=TRAIN, shard_tokens=SHARD,
                                num_proc=1, progress=False))
    assert calls and all(c == {"name": "sample-10BT", "split": "train", "streaming": True} for c in calls)
    m = load_manifest(out)
    assert m["source_info"] == {"repo": "HuggingFaceFW/fineweb", "name": "sample-10BT"}
    assert m["tokenizer_hash"] == load_manifest(local_dir)["tokenizer_hash"]
    for split in ("val", "train"):
        np.testing.assert_array_equal(_read_split(out, split), _read_split(local_dir, split))


def test_jsonl_and_text_files_same_stream(corpus, local_dir, tmp_path):
    """jsonl (FineWeb schema) and plain .txt files (one document per file) go through the same path."""
    texts, parquet = corpus
    jsonl = tmp_path / "fw.jsonl"
    rows = pq.read_table(parquet).to_pylist()
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = prepare(_local_cfg(tmp_path / "json", [str(jsonl)], tokenizer=str(local_dir), num_proc=1))
    for split in ("val", "train"):
        np.testing.assert_array_equal(_read_split(out, split), _read_split(local_dir, split))
    (tmp_path / "txt").mkdir()
    for i, t in enumerate(texts[:30]):
        (tmp_path / "txt" / f"doc_{i:03d}.txt").write_text(t)
    out = prepare(_local_cfg(tmp_path / "text", [str(tmp_path / "txt" / "*.txt")], tokenizer=str(local_dir),
                             val_tokens=500, train_tokens=None, num_proc=1))
    exp_val, exp_train = _expected_streams(out, texts[:30], 500, None)
    np.testing.assert_array_equal(_read_split(out, "val"), exp_val)
    np.testing.assert_array_equal(_read_split(out, "train"), exp_train)
    assert load_manifest(out)["source_info"]["format"] == "text"


def test_stdlib_prepare_cli_end_to_end(tmp_path):
    out = tmp_path / "stdlib"
    argv = ["--config", str(RECIPES / "stdlib.yaml"), "--output_dir", str(out), "--stdlib_max_bytes", "120000",
            "--vocab_size", "512", "--val_tokens", "4096", "--num_proc", "1", "--progress", "false"]
    assert prepare_main(argv) == 0
    m = load_manifest(out)
    assert m["source"] == "stdlib" and m["python_version"] == platform.python_version()
    assert len(m["content_hash"]) == 64 and m["source_info"]["bytes"] >= 120_000
    assert m["val"]["tokens"] == 4096 and m["train"]["tokens"] > 10_000 and m["tokenizer_vocab_size"] == 512
    tok = AutoTokenizer.from_pretrained(out)
    train = _read_split(out, "train")  # starts at a document boundary; with no train_tokens every doc is whole
    first_doc = tok.decode(train[: int(np.flatnonzero(train == m["eos_token_id"])[0])].tolist())
    ast.parse(first_doc)  # a whole stdlib module, byte-exact through the BPE
    # Deterministic: the same config elsewhere gives identical bytes; rerunning in place is a no-op.
    again = tmp_path / "again"
    assert prepare_main(argv[:3] + [str(again)] + argv[4:]) == 0
    for f in ["manifest.json", "tokenizer.json", *[s["file"] for s in m["train"]["shards"] + m["val"]["shards"]]]:
        if f == "manifest.json":
            a, b = json.loads((out / f).read_text()), json.loads((again / f).read_text())
            a["config"].pop("output_dir"), b["config"].pop("output_dir")
            assert a == b
        else:
            assert (out / f).read_bytes() == (again / f).read_bytes(), f
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert prepare_main(argv) == 0 and (out / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="another config"):
        prepare_main(argv + ["--val_tokens", "2048"])
    m["content_hash"] = "0" * 64  # as if prepared by another Python
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="holds the stdlib of Python"):
        prepare_main(argv)


def test_interrupted_prepare_resumes_without_redoing_shards(corpus, local_dir, tmp_path, monkeypatch):
    _, parquet = corpus
    cfg = _local_cfg(tmp_path / "data", [str(parquet)], num_proc=1)
    real, written = D._write_shard, []

    def crash_after_two(path, tokens):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated kill")
        written.append(path.name)
        real(path, tokens)

    monkeypatch.setattr(D, "_write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    assert written == ["val_00000.bin", "train_00000.bin"] and not (tmp_path / "data" / "manifest.json").exists()
    with pytest.raises(ValueError, match="no manifest.json"):
        load_manifest(tmp_path / "data")

    def record(path, tokens):
        written.append(path.name)
        real(path, tokens)

    monkeypatch.setattr(D, "_write_shard", record)
    prepare(cfg)
    assert written[2:] == ["train_00001.bin", "train_00002.bin", "train_00003.bin"]
    for f in sorted(p.name for p in local_dir.glob("*.bin")) + ["tokenizer.json"]:
        assert (tmp_path / "data" / f).read_bytes() == (local_dir / f).read_bytes(), f
    assert load_manifest(tmp_path / "data")["train"] == load_manifest(local_dir)["train"]


def test_loader_resume_world_sizes_and_prefix(local_dir):
    kw = dict(seq_len=16, global_batch_size=8, seed=5)
    full = TokenLoader(local_dir, **kw)
    ref = [full.next_batch() for _ in range(6)]
    # Save after 2 steps, restore into a fresh loader: identical continuation.
    a = TokenLoader(local_dir, **kw)
    for _ in range(2):
        a.next_batch()
    state = a.state_dict()
    b = TokenLoader(local_dir, **kw)
    b.load_state_dict(json.loads(json.dumps(state)))
    for i in range(2, 6):
        assert torch.equal(b.next_batch(), ref[i])
    # 2 ranks (also resumed from the 1-rank state): disjoint contiguous slices of the same global batch.
    ranks = [TokenLoader(local_dir, rank=r, world_size=2, **kw) for r in range(2)]
    for r in ranks:
        r.load_state_dict(state)
    for i in range(2, 6):
        halves = [r.next_batch() for r in ranks]
        assert halves[0].shape == (4, 17) and torch.equal(torch.cat(halves), ref[i])
        assert not any(torch.equal(x, y) for x in halves[0] for y in halves[1])
    # A shorter budget is a prefix of a longer one (trunk and branches share data); another seed differs.
    short = TokenLoader(local_dir, total_tokens=3 * 8 * 16, **kw)
    assert len(short) == 3 and all(torch.equal(x, y) for x, y in zip(short, ref))
    assert not torch.equal(TokenLoader(local_dir, **{**kw, "seed": 6}).next_batch(), ref[0])
    with pytest.raises(ValueError, match="seq_len"):
        TokenLoader(local_dir, seq_len=32, global_batch_size=8, seed=5).load_state_dict(state)
    # Validation: rank blocks concatenate to the 1-rank windows; every rank yields the same shapes.
    one = torch.cat(list(validation_batches(local_dir, seq_len=16, batch_size=4)))
    parts = [list(validation_batches(local_dir, seq_len=16, batch_size=4, rank=r, world_size=3)) for r in range(3)]
    assert [[p.shape for p in ps] for ps in parts] == [[p.shape for p in parts[0]]] * 3
    cat = torch.cat([torch.cat(ps) for ps in parts])
    assert torch.equal(cat, one[: len(cat)]) and len(one) - len(cat) < 3
    assert validation_token_count(local_dir, seq_len=16, world_size=3) == cat.shape[0] * 16


def test_bad_inputs_rejected_before_work(corpus, local_dir, tmp_path):
    _, parquet = corpus
    out = tmp_path / "never"

    def bad(match: str, **kw) -> None:
        with pytest.raises(ValueError, match=match):
            prepare(_local_cfg(out, [str(parquet)], **kw))
        assert not out.exists() or not any(out.glob("*.bin")), "bad input must fail before writing shards"

    bad(r"source: 'wiki' is not one of", source="wiki")
    bad("data_files: .*no such file", data_files=[str(tmp_path / "missing.parquet")])
    (tmp_path / "empty.jsonl").write_text("")
    bad("data_files: .*is empty", data_files=[str(tmp_path / "empty.jsonl")])
    bad("data_files: .*matches no file", data_files=[str(tmp_path / "nothing*.parquet")])
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "nocol.parquet")
    bad("text_column", data_files=[str(tmp_path / "nocol.parquet")])
    bad("dtype: uint16 holds at most 65536", vocab_size=70_000, dtype="uint16")
    bad("dtype: 'int8' is not one of", dtype="int8")
    bad("num_proc: must be a positive integer", num_proc=0)
    bad("expected_tokenizer_hash: .*another tokenizer", tokenizer=str(local_dir), expected_tokenizer_hash="0" * 16)
    # Found only by reading the source: refused at the end, and the partial folder is kept for a rerun only.
    with pytest.raises(ValueError, match="train_tokens: the source holds"):
        prepare(_local_cfg(tmp_path / "short", [str(parquet)], train_tokens=10**7))
    with pytest.raises(ValueError, match="unfinished prepare with another config"):
        prepare(_local_cfg(tmp_path / "short", [str(parquet)], train_tokens=10**6))
    with pytest.raises(ValueError, match="already holds data prepared with another config"):
        prepare(_local_cfg(local_dir, [str(parquet)], val_tokens=VAL + 1))
    with pytest.raises(ValueError, match="no manifest.json"):
        TokenLoader(tmp_path, seq_len=8, global_batch_size=2)
    # Loader: a D larger than the shards hold, a D not in whole steps, another tokenizer, bad ranks.
    with pytest.raises(ValueError, match="total_tokens: .* exceeds"):
        TokenLoader(local_dir, seq_len=16, global_batch_size=8, total_tokens=16 * 8 * 1000)
    with pytest.raises(ValueError, match="total_tokens: .* not a multiple"):
        TokenLoader(local_dir, seq_len=16, global_batch_size=8, total_tokens=1000)
    with pytest.raises(ValueError, match="expected_tokenizer_hash"):
        TokenLoader(local_dir, seq_len=16, global_batch_size=8, expected_tokenizer_hash="0" * 16)
    with pytest.raises(ValueError, match="expected_tokenizer_hash"):
        validation_batches(local_dir, seq_len=16, batch_size=8, expected_tokenizer_hash="0" * 16)
    with pytest.raises(ValueError, match="global_batch_size: 6 is not divisible"):
        TokenLoader(local_dir, seq_len=16, global_batch_size=6, world_size=4)
    with pytest.raises(ValueError, match="rank: must be in"):
        validation_batches(local_dir, seq_len=16, batch_size=8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="holds no window"):
        validation_batches(local_dir, seq_len=4096, batch_size=8)
