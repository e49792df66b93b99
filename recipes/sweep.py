"""Run an LR sweep: `python recipes/sweep.py --config recipes/sweeps/tiny_cpu.yaml [--field value ...]`
(same code as `lrtransfer sweep`; `lrtransfer plan --config ...` prints its cost first)."""

import sys

from lrtransfer.sweep import main

if __name__ == "__main__":
    sys.exit(main())
