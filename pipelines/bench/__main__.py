"""``python -m pipelines.bench [CONFIG.yaml] [key=value ...]``: the same as ``tandem bench``."""

import sys

from pipelines.cli import run

sys.exit(run("bench", sys.argv[1:]))
