"""The kernel benchmark renderer writes only its own section of docs/benchmarks.md."""

from pipelines.bench.kernel_report import BEGIN, END, render


def _result():
    row = dict(batch=1, prefix=512, tree=8, kernel_us=10.0, sdpa_us=30.0, speedup=3.0)
    row |= dict(gbps=1000.0, hbm_frac=0.3, tflops=1.0, flop_frac=0.001)
    return dict(
        device="Test GPU",
        torch="x",
        triton="y",
        peak_flops=1e15,
        peak_bytes_per_s=3e12,
        shape=dict(q_heads=32, kv_heads=8, head_dim=128, dtype="bfloat16"),
        command="python -m pipelines.bench.kernel --json r.json",
        rows=[row],
    )


def test_render_replaces_only_its_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nother team's table\n\n{BEGIN}\nstale\n{END}\n\n## later section\n")
    render(_result(), str(tmp_path))
    text = doc.read_text()
    assert "other team's table" in text and "## later section" in text
    assert "stale" not in text and "Test GPU" in text and "| 1 | 512 | 8 | 10.0 | 30.0 | 3.00× |" in text
    assert text.count(BEGIN) == 1 and (tmp_path / "kernel_tree_attention.png").stat().st_size > 0


def test_render_appends_section_to_a_new_file(tmp_path):
    render(_result(), str(tmp_path))
    text = (tmp_path / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks") and BEGIN in text and END in text
