"""``python -m pipelines.preference [CONFIG.yaml] [key=value ...]``: the same as ``tandem preference``."""

import sys

from pipelines.cli import run

sys.exit(run("preference", sys.argv[1:]))
