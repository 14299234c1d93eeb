"""The Serve config file and the Grafana dashboard agree with the code they point at."""

import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

from pipelines.config import ConfigError, load_config
from pipelines.serve import ServeConfig

ROOT = Path(__file__).resolve().parents[3]


def test_serve_config_file_points_at_a_buildable_app():
    spec = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
    (application,) = spec["applications"]
    module, _, name = application["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), name))
    args = dict(application["args"])
    cfg = load_config(ServeConfig, ROOT / args.pop("config"), [f"{k}={v}" for k, v in args.items()])
    assert {d["name"] for d in application["deployments"]} == {"Ingress", "Verifier", "Drafter"}
    assert cfg.verifier.options()["autoscaling_config"]["max_replicas"] >= 1


def test_bad_serve_settings_name_the_key():
    with pytest.raises(ConfigError, match="verifier.min_replicas"):
        load_config(ServeConfig, None, ["verifier.min_replicas=many"])
    with pytest.raises(ValueError, match="port"):
        load_config(ServeConfig, None, ["port=70000"])


def test_dashboard_plots_only_metrics_the_server_exports():
    source = (ROOT / "pipelines" / "serve" / "metrics.py").read_text()
    defined = set(re.findall(r'"(tandem_[a-z_]+)"', source))
    dashboard = json.loads((ROOT / "cluster" / "grafana_dashboard.json").read_text())
    used = {
        re.sub(r"_bucket$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"ray_(tandem_[a-z_]+)", target["expr"])
    }
    assert used and used <= defined
