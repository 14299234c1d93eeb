"""The actor graph on a (simulated) multi-node Ray cluster: placement comes from config."""

import dataclasses
import math

import pytest
import ray
from ray.cluster_utils import Cluster

from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from pipelines.graph import GraphConfig, Placement, start_graph
from tests.pipelines.common.waits import wait_until

PROMPTS = [[1, 2, 3, 1, 2, 3, 4], [5, 6, 7, 5, 6]]


@pytest.fixture(scope="module")
def cluster():
    """A head without room for either actor, a 'drafter' node and a 'verifier' node."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = {
        "drafter": cluster.add_node(num_cpus=1, resources={"drafter_node": 1}),
        "verifier": cluster.add_node(num_cpus=1, resources={"verifier_node": 1}),
    }
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield {kind: node.node_id for kind, node in nodes.items()}
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def graphs():
    """Starts graphs on the split nodes; kills their actors afterwards (the nodes have 1 CPU)."""
    started = []

    def start(engine: EngineConfig, name: str):
        cfg = GraphConfig(
            engine=engine,
            drafter=Placement(num_cpus=1, resources={"drafter_node": 1}),
            verifier=Placement(num_cpus=1, resources={"verifier_node": 1}),
            name=name,
        )
        started.append(start_graph(cfg))
        return started[-1]

    yield start
    for graph in started:
        for actor in (graph.engine, graph.drafter):
            if actor is not None:
                ray.kill(actor)


def test_drafter_and_verifier_land_on_the_nodes_their_config_names(cluster, graphs, verifier_dir):
    engine = EngineConfig(model=str(verifier_dir), device="cpu", max_model_len=256)
    graph = graphs(engine, "placed")
    assert ray.get(graph.drafter.node_id.remote()) == cluster["drafter"]
    assert ray.get(graph.engine.node_id.remote()) == cluster["verifier"]

    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    results = ray.get(graph.engine.generate.remote(PROMPTS, params), timeout=300)
    reference = Engine(engine).generate(PROMPTS, params)
    assert [r.token_ids for r in results] == [r.token_ids for r in reference]
    assert sum(r.stats.drafted for r in results) > 0  # the remote drafter did draft


def engine_steps(graph) -> int:
    """Verifier steps the graph's engine has run so far."""
    return ray.get(graph.engine.counters.remote(), timeout=60).get("steps", 0)


def tokens_per_step(results) -> float:
    return sum(r.stats.new_tokens for r in results) / sum(r.stats.steps for r in results)


def test_hot_swapped_drafter_weights_take_effect_without_failing_a_request(
    cluster, graphs, verifier_dir, tmp_path, make_tiny, tiny_tokenizer
):
    """A model drafter with random weights, then the verifier's own weights swapped in while a
    request runs: that request finishes with the verifier's output, and acceptance jumps."""
    drafter_dir = tmp_path / "drafter"
    make_tiny(seed=7).save_pretrained(drafter_dir)
    tiny_tokenizer.save_pretrained(drafter_dir)
    engine = EngineConfig(
        model=str(verifier_dir),
        drafter=f"model:{drafter_dir}",
        device="cpu",
        max_model_len=256,
        adaptive_budget=False,
    )
    graph = graphs(engine, "swap")
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    before = ray.get(graph.engine.generate.remote(PROMPTS, params), timeout=300)

    long = SamplingParams(max_new_tokens=200, ignore_eos=True)
    steps = engine_steps(graph)
    running = graph.engine.generate.remote([PROMPTS[0]], long)
    wait_until(lambda: engine_steps(graph) >= steps + 2, "the long request's first steps")
    assert ray.get(graph.drafter.load_weights.remote(str(verifier_dir)), timeout=60) == 1  # re-seeded
    running_after_swap = ray.get(graph.engine.load.remote(), timeout=60)["running"]
    assert running_after_swap == 1, "the long request ended before the swap: nothing was swapped mid-request"
    (across,) = ray.get(running, timeout=300)
    after = ray.get(graph.engine.generate.remote(PROMPTS, params), timeout=300)

    reference = Engine(EngineConfig(model=str(verifier_dir), device="cpu", max_model_len=256))
    assert across.token_ids == reference.generate([PROMPTS[0]], long)[0].token_ids
    assert [r.token_ids for r in after] == [r.token_ids for r in reference.generate(PROMPTS, params)]
    assert tokens_per_step(before) < 1.5 < 3 < tokens_per_step(after)


def test_a_draft_hint_crosses_to_the_drafter_actor(cluster, graphs, verifier_dir):
    """Replay drafts (``SamplingParams.draft_hint``) reach the n-gram drafter in its own actor on
    another node: a seeded sample replayed from its own output takes at most
    ceil(L / max_draft_nodes) + 1 verifier steps, and its tokens stay the same."""
    nodes, length = 8, 40
    engine = EngineConfig(
        model=str(verifier_dir),
        device="cpu",
        max_model_len=256,
        max_draft_nodes=nodes,
        max_draft_depth=nodes,
        adaptive_budget=False,
    )
    graph = graphs(engine, "hinted")
    sampled = [
        SamplingParams(max_new_tokens=length, ignore_eos=True, temperature=1.0, seed=s) for s in (1, 2)
    ]
    plain = ray.get(graph.engine.generate.remote(PROMPTS, sampled), timeout=300)
    hinted = [dataclasses.replace(p, draft_hint=r.token_ids) for p, r in zip(sampled, plain)]
    replayed = ray.get(graph.engine.generate.remote(PROMPTS, hinted), timeout=300)
    assert [r.token_ids for r in replayed] == [r.token_ids for r in plain]
    assert all(r.stats.steps <= math.ceil(length / nodes) + 1 for r in replayed), [r.stats for r in replayed]
