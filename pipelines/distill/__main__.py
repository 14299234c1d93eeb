"""``python -m pipelines.distill [CONFIG.yaml] [--flag VALUE ...] [key=value ...]``."""

import logging
import sys

from pipelines.cli import parse
from pipelines.config import ConfigError, load_config
from pipelines.distill import CLI_FLAGS, DistillConfig, main


def run(args: list[str]) -> int:
    """Load the config from ``args`` and run the job; bad input → a message naming it, exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path, overrides = parse(args, CLI_FLAGS)
        cfg = load_config(DistillConfig, path, overrides)
        main(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"tandem distill: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
