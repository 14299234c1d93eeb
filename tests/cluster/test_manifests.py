"""The cluster manifests parse, agree with each other and with the Serve config, and name code and
config keys that exist: a typo in an entrypoint fails here, not on a GPU cluster."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config
from pipelines.distill import DistillConfig
from pipelines.generate import GenerateConfig

REPO = Path(__file__).parents[2]
CLUSTER = REPO / "cluster"
MANIFESTS = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
IMAGE_ROOT = "/home/ray/tandem/"  # where cluster/Dockerfile puts the repository
RUNTIME_ENV_FIELDS = {"working_dir", "py_modules", "excludes", "env_vars", "pip", "uv", "conda", "image_uri"}


def load(relative: str) -> dict:
    return yaml.safe_load((CLUSTER / relative).read_text())


def worker_groups(spec: dict) -> dict[str, dict]:
    return {group["groupName"]: group for group in spec["workerGroupSpecs"]}


def start_resources(group: dict) -> dict:
    """A group's ``rayStartParams.resources``: a JSON object inside a quoted string, as KubeRay wants."""
    raw = group["rayStartParams"].get("resources")
    return json.loads(json.loads(raw)) if raw else {}


def accelerators_in_serve_config() -> set[str]:
    serve = load("serve.yaml")
    deployments = serve["applications"][0]["deployments"]
    options = [deployment.get("ray_actor_options", {}) for deployment in deployments]
    return {option["accelerator_type"] for option in options if "accelerator_type" in option}


@pytest.mark.parametrize("path", MANIFESTS, ids=[str(p.relative_to(CLUSTER)) for p in MANIFESTS])
def test_every_manifest_parses(path):
    documents = (
        [json.loads(path.read_text())]
        if path.suffix == ".json"
        else list(yaml.safe_load_all(path.read_text()))
    )
    assert documents and all(isinstance(d, dict) for d in documents)


def test_raycluster_has_separate_drafter_and_verifier_gpu_groups():
    cluster = load("kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    groups = worker_groups(cluster["spec"])
    verifier, drafter = groups["verifier-h100"], groups["drafter-l4"]
    products = set()
    for group in (verifier, drafter):
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        products.add(group["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"])
    assert len(products) == 2  # two GPU types
    declared = {key.split(":", 1)[1] for group in groups.values() for key in start_resources(group)}
    assert accelerators_in_serve_config() <= declared  # every type Serve asks for has a group


def test_rayservice_runs_the_serve_app_on_the_same_cluster():
    service = load("kuberay/rayservice.yaml")
    assert service["kind"] == "RayService"
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    module, attribute = app["import_path"].split(":")
    assert app["import_path"] == "pipelines.serve:build_app"
    assert callable(getattr(importlib.import_module(module), attribute))
    assert (REPO / app["args"]["config"].removeprefix(IMAGE_ROOT)).exists()
    serve_yaml = load("serve.yaml")["applications"][0]
    assert [d["name"] for d in app["deployments"]] == [d["name"] for d in serve_yaml["deployments"]]
    assert service["spec"]["rayClusterConfig"] == load("kuberay/raycluster.yaml")["spec"]


def entrypoint_config(job: dict):
    """The typed config a RayJob's ``python -m pipelines.NAME CONFIG key=value ...`` builds."""
    python, dash_m, module, config, *overrides = shlex.split(job["spec"]["entrypoint"])
    assert (python, dash_m) == ("python", "-m")
    config_class = {"pipelines.generate": GenerateConfig, "pipelines.distill": DistillConfig}[module]
    return load_config(config_class, REPO / config.removeprefix(IMAGE_ROOT), overrides)


@pytest.mark.parametrize("name", ["rayjob-generate.yaml", "rayjob-distill.yaml"])
def test_rayjob_entrypoint_is_a_pipeline_with_valid_settings(name):
    job = load(f"kuberay/{name}")
    assert job["kind"] == "RayJob" and job["spec"]["shutdownAfterJobFinishes"]
    cfg = entrypoint_config(job)  # a misspelt key or a bad value fails here
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    gpus_per_node = int(container["resources"]["limits"]["nvidia.com/gpu"])
    product = group["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]  # NVIDIA-L4
    assert start_resources(group) == {f"accelerator_type:{product.removeprefix('NVIDIA-')}": 1}
    if isinstance(cfg, GenerateConfig):
        assert cfg.input.startswith("s3://") and cfg.batch.accelerator_type == "L4"
        assert group["maxReplicas"] * gpus_per_node >= cfg.batch.max_actors * cfg.batch.num_gpus
    else:
        assert cfg.storage_path.startswith("s3://") and cfg.workers.use_gpu
        assert (
            group["maxReplicas"] * gpus_per_node
            >= cfg.workers.num_workers + cfg.data.actors * cfg.data.num_gpus
        )


def test_cluster_launcher_has_gpu_node_types_for_serve():
    launcher = load("cluster_launcher.yaml")
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    workers = [t for name, t in types.items() if name != launcher["head_node_type"]]
    assert all(t["min_workers"] <= t["max_workers"] <= launcher["max_workers"] for t in workers)
    declared = {key.split(":", 1)[1] for t in workers for key in t.get("resources", {})}
    assert accelerators_in_serve_config() <= declared


def test_runtime_env_is_a_ray_runtime_env():
    runtime_env = load("runtime_env.yaml")
    assert set(runtime_env) <= RUNTIME_ENV_FIELDS
    assert runtime_env["working_dir"] == "." and ".git" in runtime_env["excludes"]
    assert all(isinstance(value, str) for value in runtime_env["env_vars"].values())  # Ray wants strings


def test_local_head_script_is_valid_bash():
    script = CLUSTER / "local_head.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
