"""tandem batch-bench on the tiny chat model: every drafter runs the whole job on the same rows,
the texts agree (greedy speculation is lossless), and the figures reach JSON and the docs."""

import json

from pipelines.bench.batch import BEGIN, END, BatchBenchConfig, main
from pipelines.config import load_config
from tests.pipelines.batch.fixtures import save_tiny_chat_model


def test_batch_bench_compares_drafters_on_the_same_rows(tmp_path, make_tiny, tiny_tokenizer):
    model = save_tiny_chat_model(tmp_path / "tiny-chat", make_tiny, tiny_tokenizer)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"tell me {word}"}) + "\n" for word in ("a b", "c d e")))
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    cfg = load_config(
        BatchBenchConfig,
        None,
        [
            f"job.engine.model={model}",
            "job.engine.device=cpu",
            "job.engine.max_model_len=128",
            "job.max_new_tokens=12",
            "job.batch.rows_per_shard=3",
            "job.batch.num_cpus=1",
            f"prompts={prompts}",
            "rows=5",
            f"out={tmp_path / 'bench.json'}",
            f"docs={docs}",
            "plot=",
        ],
    )
    report = main(cfg)

    assert [run["drafter"] for run in report["runs"]] == ["ngram", "none"]
    for run in report["runs"]:
        assert (run["rows"], run["errors"], run["texts_equal_to_first"]) == (5, 0, 5)
        assert run["completion_tokens"] > 0 and run["tokens_per_s"] > 0
    assert report["config"]["distinct_prompts"] == 2
    assert json.loads((tmp_path / "bench.json").read_text()) == report
    text = docs.read_text()
    assert BEGIN in text and END in text and "| `none` | 5 | 0 |" in text
