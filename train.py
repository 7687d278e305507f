"""Train a Mamba or GRU policy on the delayed multi-bit memory task: see ``mamba_rl/cli.py``."""

import sys

from mamba_rl.cli import main

if __name__ == "__main__":
    sys.exit(main())
