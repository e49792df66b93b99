"""Fit η*, η*_eff, scaling laws and extrapolation from a sweep's results table:
`python recipes/fit.py --results results.parquet --out DIR [--window K]` (same code as `lrtransfer fit`)."""

import sys

from lrtransfer.fit import main

if __name__ == "__main__":
    sys.exit(main())
