"""`lrtransfer <command> ...`: one entry point; each command is a `main(argv)` in its own module."""

from __future__ import annotations

import importlib
import sys

# command -> (module, function, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "prepare": ("lrtransfer.data", "prepare_main", "text (stdlib, FineWeb, local files) -> token shards + manifest"),
    "train": ("lrtransfer.train", "main", "one training run (same code as recipes/train.py)"),
    "sweep": ("lrtransfer.sweep", "main", "LR sweep over (N, D, eta) with trunk-and-branch runs"),
    "plan": ("lrtransfer.sweep", "plan_main", "runs, tokens, FLOPs and GPU-hours of a sweep spec"),
    "fit": ("lrtransfer.fit", "main", "eta* per cell, eta*_eff, scaling laws and extrapolation"),
    "plot": ("lrtransfer.plots", "main", "PNG plots from results, fits and metrics"),
    "card": ("lrtransfer.hub", "card_main", "build the Hub folder and card of a run or a study"),
    "publish": ("lrtransfer.hub", "publish_main", "push a run or study folder to the Hub"),
    "study": ("lrtransfer.study", "main", "the whole pipeline: prepare, sweeps, fits, plots, cards"),
    "coord-check": ("lrtransfer.coord_check", "main", "coordinate check of a parameterization across width/depth"),
    "export": ("lrtransfer.export", "main", "SP GPT-2 <-> transformers GPT2LMHeadModel"),
}


def _usage() -> str:
    lines = ["usage: lrtransfer <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`lrtransfer <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"lrtransfer: unknown command {command!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[command]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
