"""Train one run: `accelerate launch [--config_file accelerate_configs/X.yaml] recipes/train.py
--config recipes/<family>/<recipe>.yaml [--field value ...]` (same code as `lrtransfer train`)."""

import sys

from lrtransfer.train import main

if __name__ == "__main__":
    sys.exit(main())
