"""The actor graph on a (simulated) multi-node Ray cluster: placement comes from config."""

import pytest
import ray
from ray.cluster_utils import Cluster

from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from pipelines.graph import GraphConfig, Placement, start_graph

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


def test_drafter_and_verifier_land_on_the_nodes_their_config_names(cluster, verifier_dir):
    engine = EngineConfig(model=str(verifier_dir), device="cpu", max_model_len=256)
    cfg = GraphConfig(
        engine=engine,
        drafter=Placement(num_cpus=1, resources={"drafter_node": 1}),
        verifier=Placement(num_cpus=1, resources={"verifier_node": 1}),
    )
    graph = start_graph(cfg)
    assert ray.get(graph.drafter.node_id.remote()) == cluster["drafter"]
    assert ray.get(graph.engine.node_id.remote()) == cluster["verifier"]

    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    results = ray.get(graph.engine.generate.remote(PROMPTS, params), timeout=300)
    reference = Engine(engine).generate(PROMPTS, params)
    assert [r.token_ids for r in results] == [r.token_ids for r in reference]
    assert sum(r.stats.drafted for r in results) > 0  # the remote drafter did draft
