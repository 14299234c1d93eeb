"""``python -m pipelines.serve [CONFIG.yaml] [key=value ...]``: the same as ``tandem serve``."""

import sys

from pipelines.cli import run

sys.exit(run("serve", sys.argv[1:]))
