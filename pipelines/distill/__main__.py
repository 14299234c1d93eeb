"""``python -m pipelines.distill [CONFIG.yaml] [key=value ...]``: the same as ``tandem distill``."""

import sys

from pipelines.cli import run

sys.exit(run("distill", sys.argv[1:]))
