"""Bad input stops a command early with a clear message (exit status 2), before any model loads."""

from pathlib import Path

import pytest

from pipelines import cli
from pipelines.config import ConfigError, load_config
from pipelines.generate import GenerateConfig

CONFIGS = sorted(Path(__file__).parents[2].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", ""], "prompt is empty"),
        (["--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens must be > 0"),
        (["--prompt", "hi", "--max-new-tokens", "-5"], "max_new_tokens must be > 0"),
        (["--prompt", "hi", "--drafter", "telepathy"], "unknown drafter 'telepathy'"),
        (["--prompt", "hi", "engine.colour=blue"], "engine.colour"),
        (["--prompt", "hi", "max_new_tokens=many"], "max_new_tokens"),
        (["--prompt", "hi", "--model", "/no/such/model"], "model path does not exist: /no/such/model"),
        (["--prompt", "hi", "--temperature", "-1"], "temperature must be >= 0"),
        (["--prompt", "hi", "--dtype", "float8"], "dtype must be one of"),
        (["--prompt", "hi", "--frobnicate", "1"], "unknown flag --frobnicate"),
        (["configs/missing.yaml", "--prompt", "hi"], "config file does not exist"),
    ],
)
def test_bad_input_is_reported(args, message, capsys):
    assert cli.run("generate", args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_unknown_command_prints_usage(capsys):
    assert cli.main(["levitate"]) == 2
    assert "usage: tandem" in capsys.readouterr().out


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_loads(path):
    """``configs/NAME.yaml`` (or ``NAME_VARIANT.yaml`` for a command of one word, e.g. ``rl_*``)
    loads into its command's config."""
    name = path.stem.replace("_", "-")
    name = name if name in cli.PIPELINES else name.split("-")[0]
    module_name, class_name, _ = cli.PIPELINES[name]
    cls = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    load_config(cls, path)


def test_flags_and_overrides_reach_the_config():
    path, overrides = cli.parse(
        ["configs/generate.yaml", "--prompt", "a: b, c", "--drafter", "model:/x", "top_k=5"],
        {"--prompt": "prompt", "--drafter": "engine.drafter"},
    )
    cfg = load_config(GenerateConfig, path, overrides)
    assert (cfg.prompt, cfg.engine.drafter, cfg.top_k) == ("a: b, c", "model:/x", 5)


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="engine.max_batch"):
        load_config(GenerateConfig, None, ["engine.max_batch=3"])


def test_an_empty_override_is_an_empty_string():
    cfg = load_config(GenerateConfig, "configs/generate.yaml", ["output=", "engine.drafter=none"])
    assert (cfg.output, cfg.engine.drafter) == ("", "none")
