"""tandem bench: prompt loading, config checks, the report's schema, docs upkeep, end to end."""

from __future__ import annotations

import dataclasses
import gzip
import json

import pytest

from actors.engine import Engine, EngineConfig, GenerationResult
from pipelines.bench import latency as bench
from pipelines.bench.latency import BenchConfig
from pipelines.common import prompts as prompt_sets
from pipelines.config import ConfigError, load_config

# ---------------------------------------------------------------- prompts


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_prompt_and_turns_shapes_and_limit(tmp_path):
    rows = [{"prompt": "a"}, {"turns": ["b", "second turn"]}, {"prompt": "c"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert prompt_sets.load_prompts(str(path), 10) == ["a", "b", "c"]
    assert prompt_sets.load_prompts(str(path), 2) == ["a", "b"]


def test_gzipped_jsonl_and_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt") as out:
        out.write('{"prompt": "x"}\n\n{"prompt": "y"}\n')
    assert prompt_sets.load_prompts(str(path), 5) == ["x", "y"]


def test_humaneval_is_the_default_set():
    prompts = prompt_sets.load_prompts("humaneval", 3)
    assert len(prompts) == 3 and all(prompt.startswith(("\n", "from", "def", "import")) for prompt in prompts)
    assert "def has_close_elements" in prompts[0]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"text": "x"}', "expected"),
        ('{"turns": []}', "expected"),
        ('{"prompt": "  "}', "empty prompt"),
        ('["x"]', "expected"),
    ],
)
def test_bad_prompt_lines_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        prompt_sets.load_prompts(str(path), 10)
    assert "bad.jsonl:2" in str(error.value)


def test_missing_and_empty_prompt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        prompt_sets.load_prompts(str(tmp_path / "nope.jsonl"), 1)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        prompt_sets.load_prompts(str(tmp_path / "empty.jsonl"), 1)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "override", ["limit=0", "max_new_tokens=-1", "prompt_lookup_num_tokens=0", "prompts="]
)
def test_bad_values_fail_by_name(override):
    key = override.split("=")[0]
    with pytest.raises(ValueError, match=key):
        load_config(BenchConfig, None, [override])


def test_unknown_key_and_bad_type_fail_by_name():
    with pytest.raises(ConfigError, match="limt"):
        load_config(BenchConfig, None, ["limt=3"])
    with pytest.raises(ConfigError, match="max_new_tokens"):
        load_config(BenchConfig, None, ["max_new_tokens=many"])


def test_yaml_and_cli_flags_map_to_fields():
    cfg = load_config(BenchConfig, "configs/bench.yaml", ["engine.dtype=bfloat16", "limit=3"])
    assert (cfg.engine.dtype, cfg.limit, cfg.max_new_tokens, cfg.prompts) == ("bfloat16", 3, 128, "humaneval")
    for key in bench.CLI_FLAGS.values():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)  # every flag names a real field


# ---------------------------------------------------------------- report


def record(token_ids, seconds=1.0, steps=None):
    return {"token_ids": token_ids, "seconds": seconds, "steps": steps}


def fabricated_records():
    return {
        "hf_generate": [record([1, 2, 3, 4], 2.0), record([5, 6], 1.0)],
        "hf_prompt_lookup": [record([1, 2, 3, 4], 1.0), record([5, 6], 1.0)],
        "tandem": [record([1, 2, 3, 4], 0.5, steps=2), record([5, 7], 0.5, steps=2)],
    }


def test_summary_schema_speedups_and_mismatches():
    report = bench.summarize(fabricated_records())
    runs = {run["name"]: run for run in report["runs"]}
    assert set(runs) == {"hf_generate", "hf_prompt_lookup", "tandem"}
    for run in report["runs"]:
        assert {"name", "tokens_per_s", "new_tokens", "seconds"} <= set(run)
    assert runs["hf_generate"]["tokens_per_s"] == pytest.approx(6 / 3)
    assert runs["tandem"]["tokens_per_s"] == pytest.approx(6 / 1)
    summary = report["summary"]
    assert summary["prompts"] == 2
    assert summary["speedup_vs_hf_generate"] == pytest.approx(3.0)
    assert summary["speedup_vs_hf_assisted"] == pytest.approx(2.0)
    assert summary["hf_assisted_baseline"] == "hf_prompt_lookup"
    assert summary["mean_accepted_tokens"] == pytest.approx(6 / 4)
    assert summary["greedy_mismatches"] == 1
    assert [p["first_divergence"] for p in runs["tandem"]["per_prompt"]] == [None, 1]


def test_divergence_by_length_and_best_assisted_baseline():
    records = fabricated_records()
    records["tandem"][0] = record([1, 2], 0.5, steps=1)  # a prefix of the reference still mismatches
    records["hf_assisted_model"] = [record([1, 2, 3, 4], 0.1), record([5, 6], 0.1)]
    report = bench.summarize(records)
    assert report["summary"]["greedy_mismatches"] == 2
    assert report["runs"][2]["per_prompt"][0]["first_divergence"] == 2
    assert report["summary"]["hf_assisted_baseline"] == "hf_assisted_model"


def test_trim_eos_only_drops_a_final_eos():
    assert bench.trim_eos([4, 2, 5, 2], eos={2}) == [4, 2, 5]
    assert bench.trim_eos([4, 5], eos={2}) == [4, 5]
    assert bench.trim_eos([], eos={2}) == []


# ---------------------------------------------------------------- end to end

#: prompts in the tiny tokenizer's words (no chat template: encoded as they are); repeats give
#: the ngram drafter something to propose, so the speculative path really runs
TINY_PROMPTS = [{"prompt": "t1 t2 t3 t1 t2 t3 t4 t5"}, {"turns": ["t7 t8 t7 t8 t9", "second turn"]}]


@pytest.fixture
def tiny_engine(tiny_lm):
    """The real Tandem engine (ngram drafter) over the tiny random verifier: its output is the
    engine's own speculative decoding, checked by the bench against HF ``generate``."""
    config = EngineConfig(device="cpu", drafter="ngram", max_batch_size=1, max_model_len=256)
    return Engine(config, tiny_lm)


class OneTokenOff:
    """An engine whose every output has one token changed: a lossy "tandem" the bench must catch."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, prompts, params):
        return [with_one_token_changed(result) for result in self.engine.generate(prompts, params)]


def with_one_token_changed(result: GenerationResult) -> GenerationResult:
    """``result`` with its first token replaced by another ordinary token (not EOS or pad)."""
    token_ids = list(result.token_ids)
    token_ids[0] = (token_ids[0] + 1) % 62
    return dataclasses.replace(result, token_ids=token_ids)


def test_main_writes_json_docs_and_plot(tmp_path, capsys, tiny_engine):
    prompts = write_jsonl(tmp_path / "p.jsonl", TINY_PROMPTS)
    docs = tmp_path / "docs" / "benchmarks.md"
    cfg = load_config(
        BenchConfig,
        None,
        [
            f"prompts={prompts}",
            "max_new_tokens=8",
            f"out={tmp_path / 'r.json'}",
            f"docs={docs}",
            "command=x y",
        ],
    )
    report = bench.main(cfg, engine=tiny_engine)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["summary"] == report["summary"]
    assert [run["name"] for run in saved["runs"]] == ["hf_generate", "hf_prompt_lookup", "tandem"]
    assert saved["summary"]["greedy_mismatches"] == 0 and saved["summary"]["prompts"] == 2
    assert all(run["new_tokens"] == 16 for run in saved["runs"])  # 2 x 8: no system met EOS early
    assert saved["summary"]["mean_accepted_tokens"] > 1.0  # drafts were accepted: speculation ran
    assert saved["config"]["environment"]["transformers"] and saved["config"]["bench"]["limit"] == 20
    plots = list(docs.parent.glob("bench_*.png"))
    assert len(plots) == 1 and plots[0].read_bytes()[:4] == b"\x89PNG"
    text = docs.read_text()
    assert "x y" in text and f"]({plots[0].name})" in text and text.count("| tandem |") == 1
    assert capsys.readouterr().out.count("prompt tokens |") == 2


def test_main_counts_a_changed_token_as_a_mismatch_and_skips_docs(tmp_path, tiny_engine):
    prompts = write_jsonl(tmp_path / "p.jsonl", TINY_PROMPTS)
    overrides = [f"prompts={prompts}", "max_new_tokens=4", f"out={tmp_path / 'r.json'}", "docs=", "plot="]
    cfg = load_config(BenchConfig, None, [*overrides, "assisted=false", "warmup=false"])
    report = bench.main(cfg, engine=OneTokenOff(tiny_engine))
    assert report["summary"]["greedy_mismatches"] == 2
    tandem = next(run for run in report["runs"] if run["name"] == "tandem")
    assert [detail["first_divergence"] for detail in tandem["per_prompt"]] == [0, 0]
    assert report["summary"]["speedup_vs_hf_assisted"] is None
    assert {path.name for path in tmp_path.iterdir()} == {"p.jsonl", "r.json"}


@pytest.mark.slow
def test_main_on_the_embedded_model(tmp_path):
    cfg = load_config(
        BenchConfig, None, ["limit=2", "max_new_tokens=16", f"out={tmp_path / 'r.json'}", "docs=", "plot="]
    )
    report = bench.main(cfg)
    assert report["summary"]["greedy_mismatches"] == 0
    assert report["summary"]["mean_accepted_tokens"] >= 1.0
    assert all(run["new_tokens"] > 0 for run in report["runs"])
