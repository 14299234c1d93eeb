"""Load a pipeline's typed config from YAML plus ``key=value`` overrides, failing early by key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the pipeline's dataclass."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` (a dataclass) from its defaults, a YAML file, then dotlist overrides.

    ``key=`` sets an empty string. Unknown keys and values of the wrong type raise
    :class:`ConfigError` naming the key; the dataclass's own ``__post_init__`` checks value ranges.
    A class with ``PRESETS`` (``{name: {dotted key: value}}``) and a ``preset`` field gets the
    chosen preset's values over its defaults, under the file's and the overrides' values.
    """
    try:
        layers = []
        if path is not None:
            if not Path(path).exists():
                raise ConfigError(f"config file does not exist: {path}")
            layers.append(OmegaConf.load(path))
        if overrides:
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override {item!r} is not of the form key=value")
            overrides = [item + "''" if item.endswith("=") else item for item in overrides]
            layers.append(OmegaConf.from_dotlist(overrides))
        merged = OmegaConf.merge(OmegaConf.structured(cls), *layers)
        presets = getattr(cls, "PRESETS", None)
        if presets is not None:  # a preset's values sit between the defaults and what was given
            name = merged.get("preset")
            if name not in presets:
                raise ConfigError(f"bad config key 'preset': {name!r} is not one of {', '.join(presets)}")
            merged = OmegaConf.merge(OmegaConf.structured(cls), presets[name], *layers)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or getattr(error, "key", None)
        detail = str(error).splitlines()[0]
        raise ConfigError(f"bad config key {key!r}: {detail}" if key else f"bad config: {detail}") from None
    assert dataclasses.is_dataclass(config)
    return config  # type: ignore[return-value]
