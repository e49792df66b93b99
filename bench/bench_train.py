"""Throughput of the training loop (`run_training`) against a bare torch loop on the same model and batches.

Both sides train the same model shape on the same TokenLoader batches with the same optimizer; the
reference is forward + cross-entropy + backward + clip + AdamW step and nothing else. Repetitions are
interleaved and the medians of steady-state tokens/s are compared (ratio = loop / bare; 1.0 means the
recipe's bookkeeping -- all-reduced loss, divergence check, logging, tracker -- costs nothing). On a GPU
it also prints the MFU the loop logs (FLOPs/token = 6N + 12·L·d·T, DESIGN §5).

    python bench/bench_train.py                                   # tiny CPU model, data built in /tmp
    python bench/bench_train.py --data_dir data/fineweb-10BT-gpt2 --hidden_size 768 --num_hidden_layers 12 \
        --num_attention_heads 12 --seq_len 1024 --global_batch_size 64 --compile true   # GPT-2 124M on a GPU
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lrtransfer.train import TrainConfig, build_model, run_training, validate_config
from lrtransfer.utils import parse_config


@dataclass
class BenchConfig:
    steps: int = 40
    reps: int = 3


def _tiny_data(root: Path) -> str:
    from lrtransfer.data import PrepareConfig, prepare

    words = "the a cat dog sat on mat ran to house tree big small red blue and then it was over".split()
    rng = random.Random(0)
    text = "".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(12))}) + "\n" for _ in range(20000))
    (root / "corpus.jsonl").write_text(text)
    return str(prepare(PrepareConfig(source="local", data_files=[str(root / "corpus.jsonl")], file_format="json",
                                     vocab_size=512, val_tokens=8192, output_dir=str(root / "data"), num_proc=1,
                                     progress=False)))


def loop_tokens_per_s(cfg: TrainConfig, out: Path) -> tuple[float, float | None]:
    run_training(dataclasses.replace(cfg, output_dir=str(out)))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r][1:]  # the first interval holds warm-up / compilation
    mfu = [r["mfu"] for r in rows if "mfu" in r]
    return statistics.median(r["tokens_per_s"] for r in rows), (statistics.median(mfu) if mfu else None)


def bare_tokens_per_s(cfg: TrainConfig, steps: int) -> float:
    from lrtransfer.data import TokenLoader
    from lrtransfer.optim import build_optimizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    opt = build_optimizer(model.param_groups(), name="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
                          betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    loader = TokenLoader(cfg.data_dir, seq_len=cfg.seq_len, global_batch_size=cfg.global_batch_size,
                         seed=cfg.seed, total_tokens=cfg.total_tokens)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16")

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast:
            logits = model(input_ids=x).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    fl = torch.compile(forward_loss) if cfg.compile else forward_loss
    accum = cfg.global_batch_size // cfg.micro_batch_size
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        batch = loader.next_batch().to(device)
        for mb in batch.split(cfg.micro_batch_size):
            (fl(mb[:, :-1], mb[:, 1:]) / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    steady = times[len(times) // 4:]
    return cfg.global_batch_size * cfg.seq_len / statistics.median(steady)


def main(argv: list[str] | None = None) -> int:
    train_cfg, bench = parse_config([TrainConfig, BenchConfig], argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    if not (Path(train_cfg.data_dir) / "manifest.json").is_file():
        train_cfg.data_dir = _tiny_data(tmp)
    tps = train_cfg.global_batch_size * train_cfg.seq_len
    train_cfg = dataclasses.replace(train_cfg, total_tokens=bench.steps * tps, warmup_steps=0, log_every=5,
                                    eval_tokens=train_cfg.seq_len * 4, progress=False,
                                    checkpoint_every=0, save_model=False)
    cfg, _ = validate_config(train_cfg)
    loop, bare, mfus = [], [], []
    for rep in range(bench.reps):  # interleaved
        t, mfu = loop_tokens_per_s(train_cfg, tmp / f"run{rep}")
        loop.append(t)
        mfus.append(mfu)
        bare.append(bare_tokens_per_s(cfg, bench.steps))
    lm, bm = statistics.median(loop), statistics.median(bare)
    print(f"model d={cfg.hidden_size} L={cfg.num_hidden_layers} T={cfg.seq_len} batch={cfg.global_batch_size} "
          f"micro={cfg.micro_batch_size} precision={cfg.mixed_precision} compile={cfg.compile} "
          f"device={'cuda' if torch.cuda.is_available() else 'cpu'} threads={torch.get_num_threads()}")
    print(f"run_training tokens/s (median of {bench.reps}): {lm:,.0f}   per rep: {[round(x) for x in loop]}")
    print(f"bare loop   tokens/s (median of {bench.reps}): {bm:,.0f}   per rep: {[round(x) for x in bare]}")
    print(f"ratio run_training / bare = {lm / bm:.3f}")
    if mfus[0] is not None:
        print(f"MFU (median) = {statistics.median(mfus):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
