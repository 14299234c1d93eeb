"""The Serve app through real HTTP and the real ``openai`` client, on a local Ray cluster."""

import json
import urllib.request

import httpx
import openai
import pytest
import ray
from ray import serve

from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from pipelines.graph import Placement
from pipelines.serve.app import Scaling, ServeConfig, build
from tests.pipelines.common.waits import wait_until
from tests.pipelines.conftest import free_port

API_KEY = "sk-tandem-test"
PROMPT = "t1 t2 t3 t4 t1 t2 t3 t5 t1 t2"


def engine_config(model_dir) -> EngineConfig:
    return EngineConfig(model=str(model_dir), device="cpu", max_batch_size=4, max_model_len=512)


@pytest.fixture(scope="module")
def app(verifier_dir):
    """The app on the tiny verifier, drafter ``ngram`` in its own deployment."""
    port, metrics_port = free_port(), free_port()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    light = Placement(num_cpus=0)
    cfg = ServeConfig(
        engine=engine_config(verifier_dir),
        port=port,
        api_key=API_KEY,
        served_model_name="tiny",
        default_max_tokens=16,
        drafter_timeout_s=3.0,
        ingress=Scaling(light),
        verifier=Scaling(Placement(num_cpus=1)),
        drafter=Scaling(light),
    )
    serve.run(build(cfg), name="tandem", route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "metrics_port": metrics_port, "cfg": cfg}
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def local_engine(verifier_dir):
    """The in-process engine on the same model: the reference output."""
    return Engine(engine_config(verifier_dir))


@pytest.fixture
def client(app):
    return openai.OpenAI(base_url=app["url"] + "/v1", api_key=API_KEY, max_retries=0)


def expected(engine: Engine, ids: list[int], max_tokens: int) -> str:
    (result,) = engine.generate([ids], SamplingParams(max_new_tokens=max_tokens))
    return result.text


def test_chat_and_completions_equal_the_in_process_engine(client, local_engine):
    chat_ids = local_engine.encode_chat([{"role": "user", "content": PROMPT}])
    want_chat = expected(local_engine, chat_ids, 40)
    want_text = expected(local_engine, local_engine.tokenizer.encode(PROMPT), 40)
    messages = [{"role": "user", "content": PROMPT}]

    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0)
    assert reply.choices[0].message.content == want_chat
    assert reply.usage.prompt_tokens == len(chat_ids)
    assert reply.usage.completion_tokens > 0

    chunks = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=40,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in chunks:
        pieces += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(pieces) == want_chat and usage.completion_tokens == reply.usage.completion_tokens

    done = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0)
    assert done.choices[0].text == want_text
    streamed = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=40, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want_text


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


BAD_REQUESTS = [
    ("malformed JSON", "{not json", 400),
    ("missing messages", {"model": "tiny"}, 400),
    ("messages of the wrong type", {"model": "tiny", "messages": "hello"}, 400),
    (
        "negative max_tokens",
        {"model": "tiny", "messages": [{"role": "user", "content": "t1"}], "max_tokens": -3},
        400,
    ),
    (
        "max_tokens beyond the context",
        {"model": "tiny", "messages": [{"role": "user", "content": "t1"}], "max_tokens": 5000},
        400,
    ),
    (
        "negative temperature",
        {"model": "tiny", "messages": [{"role": "user", "content": "t1"}], "temperature": -1},
        400,
    ),
    (
        "prompt longer than the context",
        {"model": "tiny", "messages": [{"role": "user", "content": "t1 " * 600}]},
        400,
    ),
    ("unknown model", {"model": "gpt-9", "messages": [{"role": "user", "content": "t1"}]}, 404),
]


@pytest.mark.parametrize("why, body, status", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(app, client, why, body, status):
    data = body if isinstance(body, str) else json.dumps(body)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    response = httpx.post(app["url"] + "/v1/chat/completions", content=data, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "t3"}], max_tokens=4
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_wrong_api_key_is_refused(app):
    wrong = openai.OpenAI(base_url=app["url"] + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "t1"}])
    assert caught.value.status_code == 401
    assert httpx.get(app["url"] + "/v1/models", timeout=30).status_code == 401


def test_metrics_reach_the_prometheus_export(app, client):
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}], max_tokens=8)
    wanted = [
        "ray_tandem_requests_total",
        "ray_tandem_generation_tokens_total",
        "ray_tandem_time_to_first_token_seconds",
    ]
    text = wait_until(lambda: exported(app, wanted), f"{wanted} on the Prometheus export", timeout=90, poll=2)
    for name in ["ray_tandem_drafted_tokens_total", "ray_tandem_running_requests"]:
        assert name in text


def exported(app, names: list[str]) -> str:
    """The Prometheus export's text once it holds every metric in ``names`` (Ray reports them
    every second), else ''."""
    url = f"http://127.0.0.1:{app['metrics_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return text if all(name in text for name in names) else ""


def drafter_replica():
    names = ray.util.list_named_actors(all_namespaces=True)
    (entry,) = [n for n in names if "#Drafter#" in n["name"]]
    return ray.get_actor(entry["name"], namespace=entry["namespace"])


def test_killing_the_drafter_mid_stream_keeps_the_output(app, client, local_engine):
    want = expected(local_engine, local_engine.tokenizer.encode(PROMPT), 300)
    verifier = serve.get_deployment_handle("Verifier", app_name="tandem")
    failures = verifier.counters.remote().result().get("drafter_failures", 0)
    stream = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=300, temperature=0, stream=True
    )
    pieces, finished_before_kill = [], False
    for i, chunk in enumerate(stream):
        pieces += [c.text for c in chunk.choices]
        if i == 2:
            finished_before_kill = any(c.finish_reason for c in chunk.choices)
            ray.kill(drafter_replica(), no_restart=True)
    assert not finished_before_kill
    assert "".join(pieces) == want
    # the verifier met the dead drafter while the stream ran (a kill after the end would not count)
    assert verifier.counters.remote().result().get("drafter_failures", 0) > failures
    # Serve replaces the replica; the app keeps answering
    reply = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0)
    assert reply.choices[0].text == expected(local_engine, local_engine.tokenizer.encode(PROMPT), 8)


def test_a_client_that_disconnects_stops_its_generation(app, client):
    """The request is aborted (not left to finish) and the step loop goes on serving."""
    verifier = serve.get_deployment_handle("Verifier", app_name="tandem")
    aborted = verifier.counters.remote().result().get("aborted", 0)
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", app["url"] + "/v1/completions", json=body, headers=headers, timeout=60
    ) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        assert verifier.load.remote().result()["running"] == 1
    def idle() -> bool:
        return not verifier.load.remote().result()["running"]

    wait_until(idle, "the aborted request to leave the engine", timeout=20)
    assert verifier.counters.remote().result().get("aborted") == aborted + 1
    assert verifier.load.remote().result() == {"running": 0, "waiting": 0}
    reply = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0)
    assert reply.usage.completion_tokens == 8
