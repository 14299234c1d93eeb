"""``python -m pipelines.rl [CONFIG.yaml] [key=value ...]``: the same as ``tandem rl``."""

import sys

from pipelines.cli import run

sys.exit(run("rl", sys.argv[1:]))
