"""The ``tandem`` command: ``tandem NAME [CONFIG.yaml] [--flag VALUE ...] [key=value ...]``.

Each pipeline module has a config dataclass, ``main(cfg)`` and ``CLI_FLAGS`` (flag → config key).
"""

from __future__ import annotations

import importlib
import logging
import sys

from pipelines.config import ConfigError, load_config

PIPELINES = {
    "serve": ("pipelines.serve", "ServeConfig", "serve the OpenAI-compatible endpoint on a local Ray"),
    "generate": ("pipelines.generate", "GenerateConfig", "generate text for one prompt, with stats"),
    "distill": (
        "pipelines.distill",
        "DistillConfig",
        "distill the drafter from the verifier (Ray Data + Ray Train)",
    ),
    "distill-heads": (
        "pipelines.distill.heads",
        "DistillHeadsConfig",
        "train Medusa-style heads on a distill run's teacher rows",
    ),
    "rl": ("pipelines.rl", "RLConfig", "RL alignment: GRPO/DAPO with verifiable, length-aware rewards"),
    "preference": (
        "pipelines.preference",
        "PreferenceConfig",
        "preference optimisation: DPO/IPO/SimPO on datasets or on-policy pairs, iterative rounds",
    ),
    "bench": ("pipelines.bench.latency", "BenchConfig", "benchmark against Hugging Face generate"),
    "load-bench": (
        "pipelines.bench.load",
        "LoadBenchConfig",
        "serving benchmark: concurrent clients, spec on/off",
    ),
    "batch-bench": (
        "pipelines.bench.batch",
        "BatchBenchConfig",
        "batch job benchmark: the same prompts with speculation on and off",
    ),
    "rl-bench": (
        "pipelines.bench.rl_bench",
        "RLBenchConfig",
        "speculative RL rollouts at an RL run's checkpoints, per drafter",
    ),
    "verify-cost": (
        "pipelines.bench.verify_cost",
        "VerifyCostConfig",
        "time a verifier step by draft tree size",
    ),
}

USAGE = "usage: tandem COMMAND [CONFIG.yaml] [--flag VALUE ...] [key=value ...]\ncommands:"


def parse(args: list[str], flags: dict[str, str]) -> tuple[str | None, list[str]]:
    """Split the arguments into an optional YAML path and dotlist overrides."""
    path, overrides, rest = None, [], list(args)
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if arg.startswith("--"):
            if name not in flags:
                raise ConfigError(f"unknown flag {name}; known: {', '.join(sorted(flags))}")
            if not eq:
                if not rest:
                    raise ConfigError(f"flag {name} needs a value")
                value = rest.pop(0)
            overrides.append(f"{flags[name]}={quote(value)}")
        elif arg.endswith((".yaml", ".yml")) and path is None and not eq:
            path = arg
        else:
            overrides.append(arg)
    return path, overrides


def quote(value: str) -> str:
    """Keep a flag's value a string for OmegaConf when it contains YAML-special characters."""
    if not value or (value[0] in "[{'\"" or ":" in value or "," in value or "#" in value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return value


def run(name: str, args: list[str]) -> int:
    """Load ``name``'s config from ``args`` and run its ``main``; bad input → message, exit 2."""
    module_name, class_name, _ = PIPELINES[name]
    module = importlib.import_module(module_name)
    try:
        path, overrides = parse(args, getattr(module, "CLI_FLAGS", {}))
        cfg = load_config(getattr(module, class_name), path, overrides)
        module.main(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"tandem {name}: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in PIPELINES:
        print(USAGE)
        for name, (_, _, about) in PIPELINES.items():
            print(f"  {name:10s} {about}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
