"""Data: text -> token shards + manifest (`prepare`), and the memory-mapped loaders that training reads.

Prepared data folder (one per corpus x tokenizer)::

    manifest.json                 written last: a folder without it is unfinished
    tokenizer.json, tokenizer_config.json   AutoTokenizer.from_pretrained(data_dir) loads it
    val_00000.bin ...             the validation split, carved first from the stream, never trained on
    train_00000.bin ...           the training stream
    progress.json                 only while a prepare is unfinished: what a rerun resumes from

A shard is a 1024-byte header (int64 words: magic, format version, bytes per token, token count)
followed by flat uint16 (vocab <= 65536) or uint32 tokens. Documents are separated by EOS (each
document is followed by one), so a loader window may span documents, as in GPT-2 pretraining.

Training order (TokenLoader): the train stream is cut into fixed windows of seq_len + 1 tokens at
stride seq_len (window i starts at token i * seq_len, so every token is a target once); a seeded
permutation of *all* windows sets the order. The permutation depends only on (seed, number of
windows), never on the token budget D or the world size, so a shorter run sees a prefix of a longer
run's data (trunk-and-branch sweeps rely on this) and any world size sees the same global batches.
A run never repeats a window: D larger than one pass over the shards is an error.
"""

from __future__ import annotations

import collections
import dataclasses
import glob as globlib
import hashlib
import json
import math
import multiprocessing
import os
import platform
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from lrtransfer.utils import atomic_write_bytes, atomic_write_json, config_hash, parse_config

SOURCES = ("stdlib", "fineweb", "local")
FILE_FORMATS = {"parquet": "parquet", "json": "json", "text": "text"}
DTYPES = ("auto", "uint16", "uint32")
EOS_TOKEN = "<|endoftext|>"

SHARD_MAGIC = 0x4C52545F544F4B53  # b"LRT_TOKS"
SHARD_VERSION = 1
HEADER_BYTES = 1024  # 128 int64 words: magic, version, bytes per token, count, zeros (keeps tokens aligned)
MANIFEST_VERSION = 1

# Fields that do not change what a prepare writes: left out of its identity (config_hash).
_NON_IDENTITY_FIELDS = ("output_dir", "num_proc", "progress", "expected_tokenizer_hash")
# Characters of text sent to a worker per task: large enough to amortize the pipe, small enough to stream.
_TASK_CHARS = 1 << 20


@dataclass
class PrepareConfig:
    """What `lrtransfer prepare` builds: source -> tokenizer -> exact-size validation and training shards."""

    source: str = field(default="stdlib", metadata={"help": f"one of {SOURCES}"})
    output_dir: str = field(default="data/stdlib", metadata={"help": "the prepared data folder"})
    # stdlib: the running interpreter's standard-library sources (no download).
    stdlib_max_files: int | None = field(default=None, metadata={"help": "cap on stdlib files (None: all)"})
    stdlib_max_bytes: int | None = field(
        default=None, metadata={"help": "cap on stdlib source bytes; whole files, stops once reached"}
    )
    # fineweb: datasets streaming from the Hub.
    fineweb_repo: str = field(default="HuggingFaceFW/fineweb")
    fineweb_name: str = field(default="sample-10BT", metadata={"help": "e.g. sample-10BT, sample-100BT"})
    # local: parquet / jsonl / text files in the FineWeb schema (globs allowed).
    data_files: list[str] = field(default_factory=list, metadata={"help": "local files or globs"})
    file_format: str = field(default="auto", metadata={"help": "auto | parquet | json | text"})
    text_column: str = field(default="text")
    # Tokenizer: "bpe" trains a byte-level BPE on the corpus; anything else is an AutoTokenizer name/path.
    tokenizer: str = field(default="bpe", metadata={"help": "'bpe' or an AutoTokenizer name/path"})
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary size (incl. EOS)"})
    bpe_train_chars: int = field(default=32_000_000, metadata={"help": "characters of text used to train the BPE"})
    pad_vocab_multiple: int = field(default=64, metadata={"help": "model vocab = tokenizer vocab rounded up"})
    expected_tokenizer_hash: str | None = field(
        default=None, metadata={"help": "refuse to write shards if the tokenizer's hash differs"}
    )
    # Output.
    val_tokens: int = field(default=131_072, metadata={"help": "validation tokens, carved first"})
    train_tokens: int | None = field(
        default=None, metadata={"help": "exact training tokens (None: the whole source)"}
    )
    shard_tokens: int = field(default=100_000_000, metadata={"help": "tokens per shard file"})
    dtype: str = field(default="auto", metadata={"help": f"one of {DTYPES}"})
    num_proc: int | None = field(default=None, metadata={"help": "tokenizer processes (None: all cores)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


# --------------------------------------------------------------------------------------------------
# Shards


def _write_shard(path: Path, tokens: np.ndarray) -> None:
    """Header + tokens, atomically: a shard file that exists is complete."""
    header = np.zeros(HEADER_BYTES // 8, dtype="<i8")
    header[:4] = (SHARD_MAGIC, SHARD_VERSION, tokens.dtype.itemsize, tokens.size)
    atomic_write_bytes(path, header.tobytes() + tokens.astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes())


def _shard_count(path: Path, dtype: np.dtype) -> int | None:
    """Token count of a complete, well-formed shard, else None."""
    try:
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i8")
        size = path.stat().st_size
    except (FileNotFoundError, ValueError):
        return None
    if header.size < 4 or header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        return None
    if header[2] != dtype.itemsize or size != HEADER_BYTES + int(header[3]) * dtype.itemsize:
        return None
    return int(header[3])


def open_shard(path: str | os.PathLike, dtype: str | np.dtype) -> np.memmap:
    """Memory-map a shard's tokens after checking its header against the file size."""
    path, dtype = Path(path), np.dtype(dtype).newbyteorder("<")
    count = _shard_count(path, dtype)
    if count is None:
        raise ValueError(f"{path}: missing, truncated or not a {dtype.name} token shard")
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


# --------------------------------------------------------------------------------------------------
# Sources


def _stdlib_documents(max_files: int | None, max_bytes: int | None) -> tuple[list[str], dict[str, Any]]:
    """The interpreter's standard-library .py sources (no tests, no site-packages).

    Files are ordered by a hash of their relative path: deterministic for a given Python, and a cap
    or the validation split (the first documents) samples the whole library instead of `a*` files.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]  # prune: site-packages alone dwarfs the stdlib
        paths += [Path(folder, f) for f in files if f.endswith(".py")]
    paths.sort(key=lambda p: hashlib.sha256(p.relative_to(root).as_posix().encode()).hexdigest())
    digest, docs, nbytes = hashlib.sha256(), [], 0
    for p in paths:
        if max_files is not None and len(docs) >= max_files:
            break
        if max_bytes is not None and nbytes >= max_bytes:
            break
        raw = p.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # a few files are deliberately in other encodings
            continue
        if not text.strip():
            continue
        rel = p.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0" + raw + b"\0")
        docs.append(text)
        nbytes += len(raw)
    info = {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "files": len(docs),
        "bytes": nbytes,
        "content_hash": digest.hexdigest(),
    }
    return docs, info


def _resolve_local_files(cfg: PrepareConfig) -> tuple[list[str], str]:
    """Expand globs, check every file exists and is non-empty, infer the `datasets` builder."""
    files: list[str] = []
    for pattern in cfg.data_files:
        matched = sorted(globlib.glob(pattern)) if globlib.has_magic(pattern) else [pattern]
        if not matched:
            raise ValueError(f"data_files: {pattern!r} matches no file")
        files += matched
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f"data_files: {f!r}: no such file")
        if os.path.getsize(f) == 0:
            raise ValueError(f"data_files: {f!r} is empty")
    if cfg.file_format == "auto":
        kinds = {_format_of(f) for f in files}
        if len(kinds) != 1:
            raise ValueError(f"data_files: mixed formats {sorted(kinds)}; give one kind or set file_format")
        fmt = kinds.pop()
    else:
        fmt = cfg.file_format
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for f in files:
            meta = pq.ParquetFile(f)
            if meta.metadata.num_rows == 0:
                raise ValueError(f"data_files: {f!r} has no rows")
            if cfg.text_column not in meta.schema_arrow.names:
                raise ValueError(
                    f"text_column: {cfg.text_column!r} is not a column of {f!r} (columns: {meta.schema_arrow.names})"
                )
    return files, fmt


def _format_of(path: str) -> str:
    name = path.lower()
    for suffix, fmt in ((".parquet", "parquet"), (".jsonl", "json"), (".json", "json"), (".txt", "text")):
        if name.endswith(suffix) or name.endswith(suffix + ".gz"):
            return fmt
    raise ValueError(f"data_files: cannot tell the format of {path!r}; set file_format to one of {list(FILE_FORMATS)}")


def _stream_texts(cfg: PrepareConfig, local: tuple[list[str], str] | None) -> Iterator[str]:
    """Documents from `datasets` streaming (Hub FineWeb or local files): non-blank texts, in order."""
    if cfg.source == "fineweb":
        ds = datasets.load_dataset(cfg.fineweb_repo, name=cfg.fineweb_name, split="train", streaming=True)
    else:
        files, fmt = local
        extra = {"sample_by": "document"} if fmt == "text" else {}  # a text file is one document
        ds = datasets.load_dataset(fmt, data_files=files, split="train", streaming=True, **extra)
    if ds.column_names is not None and cfg.text_column not in ds.column_names:
        raise ValueError(f"text_column: {cfg.text_column!r} not in the dataset's columns {ds.column_names}")
    ds = ds.select_columns([cfg.text_column])
    for batch in ds.iter(batch_size=1024):
        if cfg.text_column not in batch:
            raise ValueError(f"text_column: {cfg.text_column!r} not in the dataset's columns {list(batch)}")
        for text in batch[cfg.text_column]:
            if text and not text.isspace():
                yield text


# --------------------------------------------------------------------------------------------------
# Tokenizer


def tokenizer_hash(tokenizer: Any) -> str:
    """Identity of a fast tokenizer: sha256 of its serialized backend (vocab, merges, pre-tokenizer...)."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()[:16]


def _train_bpe(texts: Iterable[str], vocab_size: int, max_chars: int) -> Any:
    """Byte-level BPE (GPT-2 style pre-tokenization) with EOS as its only special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def capped() -> Iterator[str]:
        seen = 0
        for t in texts:
            if seen >= max_chars:
                return
            seen += len(t)
            yield t

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(capped(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN)


def save_tokenizer(tokenizer: Any, folder: str | os.PathLike, *, model_max_length: int | None = None) -> None:
    """save_pretrained without the loader state transformers 5 keeps in init_kwargs (is_local,
    local_files_only): a tokenizer loaded offline must not tell every later user to stay offline."""
    for key in ("is_local", "local_files_only", "name_or_path"):
        tokenizer.init_kwargs.pop(key, None)
    if model_max_length:
        tokenizer.model_max_length = tokenizer.init_kwargs["model_max_length"] = int(model_max_length)
    tokenizer.save_pretrained(folder)


def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    """save_pretrained into a temp folder, then rename file by file into the data folder."""
    with tempfile.TemporaryDirectory(dir=out, prefix=".tokenizer.") as tmp:
        save_tokenizer(tokenizer, tmp)
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), out / name)


def _load_tokenizer(name_or_path: str | os.PathLike) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"tokenizer: {name_or_path!r} has no fast (tokenizers) backend; a fast one is required")
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer: {name_or_path!r} has no EOS token to separate documents")
    return tok


# --------------------------------------------------------------------------------------------------
# Parallel tokenization: a bounded, order-preserving process pool over batches of documents.

_WORKER: dict[str, Any] = {}


def _worker_init(tokenizer_json: str, eos_id: int, dtype: str) -> None:
    from tokenizers import Tokenizer

    _WORKER.update(tok=Tokenizer.from_str(tokenizer_json), eos=eos_id, dtype=np.dtype(dtype))


def _encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize a batch: flat ids with EOS after each document, and each document's length (EOS incl.)."""
    encs = _WORKER["tok"].encode_batch_fast(texts, add_special_tokens=False)
    lens = np.fromiter((len(e.ids) + 1 for e in encs), dtype=np.int64, count=len(encs))
    flat = np.empty(int(lens.sum()), dtype=_WORKER["dtype"])
    pos = 0
    for e, n in zip(encs, lens):
        flat[pos : pos + n - 1] = e.ids
        flat[pos + n - 1] = _WORKER["eos"]
        pos += n
    return flat, lens


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for t in texts:
        batch.append(t)
        chars += len(t)
        if chars >= _TASK_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _tokenized(texts: Iterator[str], tokenizer_json: str, eos_id: int, dtype: str, num_proc: int):
    """Yield (flat, lens) per batch in source order; at most 2 batches per worker in flight."""
    if num_proc <= 1:
        _worker_init(tokenizer_json, eos_id, dtype)
        yield from map(_encode, _batches(texts))
        return
    # fork: workers inherit the imported modules (a spawned worker would re-import torch). Setting
    # TOKENIZERS_PARALLELISM before the fork keeps Rust threads in workers off (one core each).
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
        pool = ctx.Pool(num_proc, initializer=_worker_init, initargs=(tokenizer_json, eos_id, dtype))
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    with pool:
        pending: collections.deque = collections.deque()
        for batch in _batches(texts):
            pending.append(pool.apply_async(_encode, (batch,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# --------------------------------------------------------------------------------------------------
# Shard writer: carves validation first, then exact-size training shards; resumable at any flush.


@dataclass
class _WriterState:
    """Position in the document stream after the last flushed shard (what a resume restarts from)."""

    next_doc: int = 0  # index of the first document not fully consumed
    skip_tokens: int = 0  # tokens of that document already in a shard (a document split by a flush)
    val_done: bool = False
    val_docs: int = 0
    val_written: int = 0
    train_written: int = 0
    val_shards: list[int] = field(default_factory=list)
    train_shards: list[int] = field(default_factory=list)


class _ShardWriter:
    def __init__(self, out: Path, cfg: PrepareConfig, dtype: np.dtype, state: _WriterState, on_flush: Callable):
        self.out, self.cfg, self.dtype, self.state, self.on_flush = out, cfg, dtype, state, on_flush
        self.buf: list[np.ndarray] = []
        self.buf_tokens = 0
        self.done = state.val_done and cfg.train_tokens is not None and state.train_written >= cfg.train_tokens

    def _pending(self, split: str) -> int:
        written = self.state.val_written if split == "val" else self.state.train_written
        return written + self.buf_tokens

    def _flush(self, split: str, position: tuple[int, int]) -> None:
        if not self.buf_tokens:
            return
        shards = self.state.val_shards if split == "val" else self.state.train_shards
        name = f"{split}_{len(shards):05d}.bin"
        _write_shard(self.out / name, np.concatenate(self.buf))
        shards.append(self.buf_tokens)
        if split == "val":
            self.state.val_written += self.buf_tokens
        else:
            self.state.train_written += self.buf_tokens
        self.state.next_doc, self.state.skip_tokens = position
        self.buf, self.buf_tokens = [], 0
        self.on_flush(name, split)

    def consume(self, flat: np.ndarray, lens: np.ndarray, first_doc: int, start: int = 0) -> int:
        """Take tokens of a batch of whole documents (starting at token `start`); return tokens taken."""
        cum = np.concatenate(([0], np.cumsum(lens)))

        def position(q: int) -> tuple[int, int]:
            j = int(np.searchsorted(cum, q, side="right")) - 1
            return first_doc + j, q - int(cum[j])

        cfg, q, end, taken = self.cfg, start, flat.size, 0
        while q < end and not self.done:
            split = "train" if self.state.val_done else "val"
            limit = cfg.val_tokens if split == "val" else cfg.train_tokens
            room = cfg.shard_tokens - self.buf_tokens
            if limit is not None:
                room = min(room, limit - self._pending(split))
            take = min(room, end - q)
            self.buf.append(flat[q : q + take])
            self.buf_tokens += take
            q += take
            taken += take
            if split == "val" and self._pending("val") == cfg.val_tokens:
                # Validation is full: drop the rest of its last document so no training token shares it.
                q = int(cum[np.searchsorted(cum, q, side="left")])
                self.state.val_done, self.state.val_docs = True, position(q)[0]
                self._flush("val", position(q))
            elif split == "train" and cfg.train_tokens is not None and self._pending("train") == cfg.train_tokens:
                self._flush("train", position(q))
                self.done = True
            elif self.buf_tokens == cfg.shard_tokens:
                self._flush(split, position(q))
        return taken

    def finish(self, position: tuple[int, int]) -> None:
        """The source ran out: flush the last partial shard."""
        self._flush("train" if self.state.val_done else "val", position)


# --------------------------------------------------------------------------------------------------
# prepare


def _check_config(cfg: PrepareConfig) -> None:
    """Every field check that needs no I/O, before any work."""
    if cfg.source not in SOURCES:
        raise ValueError(f"source: {cfg.source!r} is not one of {list(SOURCES)}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype: {cfg.dtype!r} is not one of {list(DTYPES)}")
    if cfg.file_format != "auto" and cfg.file_format not in FILE_FORMATS:
        raise ValueError(f"file_format: {cfg.file_format!r} is not one of {['auto', *FILE_FORMATS]}")
    positive = {"val_tokens": cfg.val_tokens, "shard_tokens": cfg.shard_tokens,
                "pad_vocab_multiple": cfg.pad_vocab_multiple, "bpe_train_chars": cfg.bpe_train_chars}
    for name in ("train_tokens", "num_proc", "stdlib_max_files", "stdlib_max_bytes"):
        if getattr(cfg, name) is not None:
            positive[name] = getattr(cfg, name)
    for name, value in positive.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    if cfg.tokenizer == "bpe":
        if cfg.vocab_size < 257:
            raise ValueError(f"vocab_size: a byte-level BPE needs at least 257 (256 bytes + EOS), got {cfg.vocab_size}")
        _check_dtype(cfg.dtype, cfg.vocab_size)
    if cfg.source == "local" and not cfg.data_files:
        raise ValueError("data_files: source 'local' needs at least one file (parquet, jsonl/json or txt)")
    if cfg.source != "local" and cfg.data_files:
        raise ValueError(f"data_files: only used by source 'local' (source is {cfg.source!r})")


def _check_dtype(dtype: str, vocab: int) -> np.dtype:
    """uint16 holds ids below 65,536; pick or check the shard dtype for a vocabulary size."""
    if dtype == "auto":
        return np.dtype("uint16" if vocab <= 1 << 16 else "uint32")
    if dtype == "uint16" and vocab > 1 << 16:
        raise ValueError(f"dtype: uint16 holds at most 65536 token ids but the vocabulary has {vocab}; use uint32 or auto")
    return np.dtype(dtype)


def _identity(cfg: PrepareConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for name in _NON_IDENTITY_FIELDS:
        d.pop(name)
    return d


def load_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a finished prepare (a folder without one is missing or unfinished)."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise ValueError(f"data_dir: {str(data_dir)!r} has no manifest.json; run `lrtransfer prepare` first "
                         "(or finish an interrupted one by running it again)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: format_version {manifest.get('format_version')!r}, expected {MANIFEST_VERSION}")
    return manifest


def prepare(cfg: PrepareConfig) -> Path:
    """Tokenize a source into validation + training shards and write the manifest; return the folder.

    Idempotent: a finished folder with the same config is returned as is; an unfinished one resumes
    after its last complete shard; a folder prepared with another config is refused.
    """
    _check_config(cfg)
    out = Path(cfg.output_dir)
    ident = config_hash(_identity(cfg))
    if (out / "manifest.json").is_file():
        manifest = load_manifest(out)
        if manifest["config_hash"] != ident:
            raise ValueError(f"output_dir: {str(out)!r} already holds data prepared with another config "
                             f"(config_hash {manifest['config_hash']} != {ident}); choose another output_dir")
        _check_expected_hash(cfg.expected_tokenizer_hash, manifest["tokenizer_hash"], "expected_tokenizer_hash")
        if cfg.source == "stdlib":  # same config, but maybe another interpreter's standard library
            here = _stdlib_documents(cfg.stdlib_max_files, cfg.stdlib_max_bytes)[1]
            if here["content_hash"] != manifest["content_hash"]:
                raise ValueError(f"output_dir: {str(out)!r} holds the stdlib of Python {manifest['python_version']}; "
                                 f"this Python {here['python_version']} has other sources; choose another output_dir")
        return out

    # Source checks that need the file system, still before any tokenization.
    local = _resolve_local_files(cfg) if cfg.source == "local" else None
    stdlib_docs, source_info = None, {}
    if cfg.source == "stdlib":
        stdlib_docs, source_info = _stdlib_documents(cfg.stdlib_max_files, cfg.stdlib_max_bytes)
        if not stdlib_docs:
            raise ValueError("stdlib_max_files / stdlib_max_bytes: the caps leave no stdlib source file")
    elif cfg.source == "fineweb":
        source_info = {"repo": cfg.fineweb_repo, "name": cfg.fineweb_name}
    else:
        source_info = {"data_files": [os.path.abspath(f) for f in local[0]], "format": local[1]}

    def texts() -> Iterator[str]:
        return iter(stdlib_docs) if stdlib_docs is not None else _stream_texts(cfg, local)

    out.mkdir(parents=True, exist_ok=True)
    progress_path = out / "progress.json"
    progress = json.loads(progress_path.read_text()) if progress_path.is_file() else None
    if progress is not None and not (out / "tokenizer.json").is_file():
        progress = None  # stopped before the tokenizer was saved: nothing to resume
    if progress is not None and progress["config_hash"] != ident:
        raise ValueError(f"output_dir: {str(out)!r} holds an unfinished prepare with another config; "
                         "choose another output_dir or delete it")

    # Tokenizer: reuse the one an unfinished prepare saved, so resumed shards use the same ids.
    if progress is not None:
        tokenizer = _load_tokenizer(out)
        if tokenizer_hash(tokenizer) != progress["tokenizer_hash"]:
            raise ValueError(f"output_dir: {str(out)!r} tokenizer files changed since the prepare started; delete it")
    elif cfg.tokenizer == "bpe":
        tokenizer = _train_bpe(texts(), cfg.vocab_size, cfg.bpe_train_chars)
    else:
        tokenizer = _load_tokenizer(cfg.tokenizer)
    thash = tokenizer_hash(tokenizer)
    _check_expected_hash(cfg.expected_tokenizer_hash, thash, "expected_tokenizer_hash")
    n_vocab = len(tokenizer)
    dtype = _check_dtype(cfg.dtype, n_vocab)
    eos_id = int(tokenizer.eos_token_id)
    if progress is None:
        _save_tokenizer(tokenizer, out)
        progress = {"config_hash": ident, "tokenizer_hash": thash, "flushes": []}
        atomic_write_json(progress_path, progress)

    state = _resume_state(out, progress, dtype)
    for stale in out.glob(".*.bin.*.tmp"):  # a shard write killed midway (atomic writes leave no other debris)
        stale.unlink()

    def on_flush(name: str, split: str) -> None:
        progress["flushes"].append({"file": name, "split": split, "state": dataclasses.asdict(state)})
        atomic_write_json(progress_path, progress)

    writer = _ShardWriter(out, cfg, dtype, state, on_flush)
    total = cfg.val_tokens + cfg.train_tokens if cfg.train_tokens is not None else None
    bar = tqdm(total=total, initial=state.val_written + state.train_written, unit="tok", unit_scale=True,
               desc=f"prepare {cfg.source}", disable=not cfg.progress)
    num_proc = cfg.num_proc or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    docs = _skip(texts(), state.next_doc)
    doc, skip = state.next_doc, state.skip_tokens
    stream = _tokenized(docs, tokenizer.backend_tokenizer.to_str(), eos_id, dtype.name, num_proc or 1)
    try:
        for flat, lens in stream if not writer.done else ():
            bar.update(writer.consume(flat, lens, doc, skip))
            doc, skip = doc + len(lens), 0
            if writer.done:
                break
    finally:
        stream.close()
        bar.close()
    if not writer.done:
        writer.finish((doc, 0))
    if not state.val_done:
        raise ValueError(f"val_tokens: the source holds only {state.val_written} tokens, fewer than "
                         f"val_tokens={cfg.val_tokens}")
    if cfg.train_tokens is not None and state.train_written < cfg.train_tokens:
        raise ValueError(f"train_tokens: the source holds {state.train_written} training tokens after the "
                         f"validation split, fewer than train_tokens={cfg.train_tokens}")
    if state.train_written == 0:
        raise ValueError("val_tokens: the validation split took the whole source; no training tokens left")

    train_docs = (state.next_doc - state.val_docs) + (1 if state.skip_tokens else 0)
    manifest = {
        "format_version": MANIFEST_VERSION,
        "source": cfg.source,
        "source_info": source_info,
        "python_version": source_info.get("python_version"),
        "content_hash": source_info.get("content_hash"),
        "tokenizer": cfg.tokenizer,
        "tokenizer_hash": thash,
        "tokenizer_vocab_size": n_vocab,
        "vocab_size": math.ceil(n_vocab / cfg.pad_vocab_multiple) * cfg.pad_vocab_multiple,
        "eos_token_id": eos_id,
        "dtype": dtype.name,
        "header_bytes": HEADER_BYTES,
        "val": _split_entry("val", state.val_shards, state.val_docs),
        "train": _split_entry("train", state.train_shards, train_docs),
        "config": dataclasses.asdict(cfg),
        "config_hash": ident,
    }
    atomic_write_json(out / "manifest.json", manifest)
    progress_path.unlink()
    return out


def _split_entry(split: str, shards: list[int], documents: int) -> dict[str, Any]:
    return {
        "shards": [{"file": f"{split}_{i:05d}.bin", "tokens": n} for i, n in enumerate(shards)],
        "tokens": int(sum(shards)),
        "documents": int(documents),
    }


def _check_expected_hash(expected: str | None, actual: str, name: str) -> None:
    if expected is not None and expected != actual:
        raise ValueError(f"{name}: the data's tokenizer hash is {actual}, expected {expected} "
                         "(this data was tokenized with another tokenizer)")


def _resume_state(out: Path, progress: dict[str, Any], dtype: np.dtype) -> _WriterState:
    """State after the longest prefix of recorded shards that are complete on disk."""
    state = _WriterState()
    good = 0
    for rec in progress["flushes"]:
        shards = rec["state"][f"{rec['split']}_shards"]
        if _shard_count(out / rec["file"], dtype) != shards[-1]:
            break
        state = _WriterState(**rec["state"])
        good += 1
    del progress["flushes"][good:]
    return state


def _skip(it: Iterator[str], n: int) -> Iterator[str]:
    """Drop the first n documents without tokenizing them (a resume)."""
    for _ in range(n):
        if next(it, None) is None:
            break
    return it


def prepare_main(argv: list[str] | None = None) -> int:
    """`lrtransfer prepare --config recipes/data/<x>.yaml [--field value ...]`."""
    (cfg,) = parse_config([PrepareConfig], argv)
    out = prepare(cfg)
    m = load_manifest(out)
    print(f"{out}: {m['train']['tokens']:,} train + {m['val']['tokens']:,} val tokens, "
          f"vocab {m['vocab_size']} ({m['dtype']}), tokenizer {m['tokenizer_hash']}")
    return 0


# --------------------------------------------------------------------------------------------------
# Loaders


class _TokenStream:
    """The shards of one split as one memory-mapped token stream."""

    def __init__(self, data_dir: Path, manifest: dict[str, Any], split: str):
        entry = manifest[split]
        self.shards = [open_shard(data_dir / s["file"], manifest["dtype"]) for s in entry["shards"]]
        for mm, s in zip(self.shards, entry["shards"]):
            if mm.size != s["tokens"]:
                raise ValueError(f"{data_dir / s['file']}: {mm.size} tokens, manifest says {s['tokens']}")
        self.sizes = np.array([mm.size for mm in self.shards], dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(self.sizes)))
        self.total = int(self.offsets[-1])
        self.dtype = np.dtype(manifest["dtype"])
        self._views: dict[int, list[np.ndarray | None]] = {}

    def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
        """int64 rows stream[s : s + length] for each start s: one fancy index per shard touched."""
        out = np.empty((starts.size, length), dtype=np.int64)
        k = np.searchsorted(self.offsets, starts, side="right") - 1
        local = starts - self.offsets[k]
        fits = local + length <= self.sizes[k]
        views = self._views.get(length)
        if views is None:  # every window start of every shard, as a zero-copy view
            views = self._views[length] = [
                np.lib.stride_tricks.sliding_window_view(np.asarray(mm), length) if mm.size >= length else None
                for mm in self.shards
            ]
        if fits.all() and (k == k[0]).all():
            out[:] = views[k[0]][local]
        else:
            for shard in np.unique(k[fits]):
                rows = np.flatnonzero(fits & (k == shard))
                out[rows] = views[shard][local[rows]]
            for r in np.flatnonzero(~fits):  # a window across a shard boundary
                s, pieces, need = int(starts[r]), [], length
                while need:
                    j = int(np.searchsorted(self.offsets, s, side="right")) - 1
                    piece = self.shards[j][s - self.offsets[j] : s - self.offsets[j] + need]
                    pieces.append(piece)
                    s, need = s + piece.size, need - piece.size
                out[r] = np.concatenate(pieces)
        return out


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name}: must be a positive integer, got {v!r}")


def _check_rank(rank: int, world_size: int) -> None:
    _check_positive(world_size=world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: must be in [0, world_size={world_size}), got {rank}")


class TokenLoader:
    """Training batches: this rank's slice of a seeded, world-size-independent global batch.

    `next_batch()` returns a LongTensor (global_batch_size // world_size, seq_len + 1); a step consumes
    global_batch_size * seq_len target tokens; the run ends after exactly total_tokens tokens.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        seq_len: int,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        total_tokens: int | None = None,
        expected_tokenizer_hash: str | None = None,
    ):
        _check_positive(seq_len=seq_len, global_batch_size=global_batch_size)
        _check_rank(rank, world_size)
        if global_batch_size % world_size:
            raise ValueError(f"global_batch_size: {global_batch_size} is not divisible by world_size={world_size}")
        self.data_dir = Path(data_dir)
        self.manifest = load_manifest(self.data_dir)
        _check_expected_hash(expected_tokenizer_hash, self.manifest["tokenizer_hash"], "expected_tokenizer_hash")
        self.seq_len, self.global_batch_size, self.seed = seq_len, global_batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch_size = global_batch_size // world_size
        self.tokens_per_step = global_batch_size * seq_len
        self._stream = _TokenStream(self.data_dir, self.manifest, "train")
        self.num_windows = max((self._stream.total - 1) // seq_len, 0)
        available = (self.num_windows // global_batch_size) * self.tokens_per_step
        if total_tokens is None:
            total_tokens = available
            if total_tokens == 0:
                raise ValueError(f"seq_len, global_batch_size: one step needs {self.tokens_per_step + 1} tokens, "
                                 f"the training split holds {self._stream.total}")
        _check_positive(total_tokens=total_tokens)
        if total_tokens % self.tokens_per_step:
            lo = total_tokens // self.tokens_per_step * self.tokens_per_step
            raise ValueError(f"total_tokens: {total_tokens} is not a multiple of tokens per step "
                             f"{self.tokens_per_step} (global_batch_size {global_batch_size} x seq_len {seq_len}); "
                             f"nearest: {lo} or {lo + self.tokens_per_step}")
        if total_tokens > available:
            raise ValueError(f"total_tokens: {total_tokens} exceeds the {available} training tokens that "
                             f"{str(self.data_dir)!r} holds in whole steps of {self.tokens_per_step} "
                             f"(one pass, no repetition)")
        self.total_tokens = total_tokens
        self.num_steps = total_tokens // self.tokens_per_step
        # int32 halves the memory of the order for corpora below 2^31 windows.
        order_dtype = np.int32 if self.num_windows < 2**31 else np.int64
        self._order = np.random.default_rng(seed).permutation(np.arange(self.num_windows, dtype=order_dtype))
        self.step = 0

    @property
    def tokens_consumed(self) -> int:
        return self.step * self.tokens_per_step

    def next_batch(self) -> torch.Tensor:
        """This rank's rows of the next global batch; StopIteration after total_tokens."""
        if self.step >= self.num_steps:
            raise StopIteration(f"TokenLoader: all {self.total_tokens} tokens ({self.num_steps} steps) consumed")
        first = self.step * self.global_batch_size + self.rank * self.local_batch_size
        windows = self._order[first : first + self.local_batch_size].astype(np.int64)
        batch = self._stream.gather(windows * self.seq_len, self.seq_len + 1)
        self.step += 1
        return torch.from_numpy(batch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while self.step < self.num_steps:
            yield self.next_batch()

    def __len__(self) -> int:
        return self.num_steps

    def state_dict(self) -> dict[str, Any]:
        """Plain ints/strings: the position, plus what must match for it to mean the same data."""
        return {
            "step": self.step,
            "tokens_consumed": self.tokens_consumed,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size,
            "num_windows": self.num_windows,
            "tokenizer_hash": self.manifest["tokenizer_hash"],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a saved position. World size and total_tokens may differ (a WSD branch's D)."""
        for key in ("seed", "seq_len", "global_batch_size", "num_windows", "tokenizer_hash"):
            if state[key] != self.state_dict()[key]:
                raise ValueError(f"load_state_dict: {key} is {state[key]!r} in the state, "
                                 f"{self.state_dict()[key]!r} in this loader; it would resume on other data")
        if not 0 <= state["step"] <= self.num_steps:
            raise ValueError(f"load_state_dict: step {state['step']} is outside [0, {self.num_steps}] for "
                             f"total_tokens={self.total_tokens}")
        self.step = int(state["step"])


def _validation_windows(stream: _TokenStream, seq_len: int, world_size: int, max_tokens: int | None) -> int:
    n = max((stream.total - 1) // seq_len, 0)
    if max_tokens is not None:
        _check_positive(max_tokens=max_tokens)
        n = min(n, max_tokens // seq_len)
    n -= n % world_size
    if n == 0:
        raise ValueError(f"seq_len: the validation split ({stream.total} tokens, max_tokens={max_tokens}) holds "
                         f"no window of seq_len+1={seq_len + 1} tokens for each of {world_size} ranks")
    return n


def validation_token_count(
    data_dir: str | os.PathLike, *, seq_len: int, world_size: int = 1, max_tokens: int | None = None
) -> int:
    """Target tokens that validation_batches yields over all ranks (the denominator of the val loss)."""
    _check_positive(seq_len=seq_len, world_size=world_size)
    stream = _TokenStream(Path(data_dir), load_manifest(data_dir), "val")
    return _validation_windows(stream, seq_len, world_size, max_tokens) * seq_len


def validation_batches(
    data_dir: str | os.PathLike,
    *,
    seq_len: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    max_tokens: int | None = None,
    expected_tokenizer_hash: str | None = None,
) -> Iterator[torch.Tensor]:
    """Fixed validation windows, the same for every run: LongTensor (<= batch_size, seq_len + 1).

    The first n windows of the validation split at stride seq_len (n capped by max_tokens // seq_len,
    rounded down to a multiple of world_size); rank r takes the r-th contiguous block of n / world_size
    windows, so every rank yields the same number of batches with the same shapes (collectives stay
    in step) and the ranks' blocks concatenate to the 1-rank sequence. Arguments are checked now.
    """
    _check_positive(seq_len=seq_len, batch_size=batch_size)
    _check_rank(rank, world_size)
    manifest = load_manifest(data_dir)
    _check_expected_hash(expected_tokenizer_hash, manifest["tokenizer_hash"], "expected_tokenizer_hash")
    stream = _TokenStream(Path(data_dir), manifest, "val")
    per_rank = _validation_windows(stream, seq_len, world_size, max_tokens) // world_size

    def batches() -> Iterator[torch.Tensor]:
        for i in range(rank * per_rank, (rank + 1) * per_rank, batch_size):
            windows = np.arange(i, min(i + batch_size, (rank + 1) * per_rank), dtype=np.int64)
            yield torch.from_numpy(stream.gather(windows * seq_len, seq_len + 1))

    return batches()
