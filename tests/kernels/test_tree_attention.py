"""Tree attention: the Triton kernel against the reference, and both against per-branch attention.

On the CPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set by the session
conftest), fp32 and fp16 only; bf16 and large shapes run compiled on a GPU (``-m gpu``).
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels.tree_attention import (
    TreeMetadata,
    additive_mask,
    ancestor_bits,
    check_inputs,
    dense_tree_mask,
    pack_bits,
    tree_attention,
    tree_attention_ref,
    unpack_bits,
)

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Per-dtype tolerances against a float64 oracle (output rounding dominates for fp16/bf16).
TOL = {torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 1.6e-2}


def kernel(*args, **overrides):
    from kernels.tree_attention_triton import tree_attention_triton

    return tree_attention_triton(*args, **overrides)


def random_parents(size: int, gen: torch.Generator, *, chain: bool = False) -> list[int]:
    if chain:
        return list(range(-1, size - 1))
    return [int(torch.randint(-1, i, (1,), generator=gen)) if i else -1 for i in range(size)]


def make_batch(specs, q_heads, kv_heads, head_dim, dtype, *, seed=0, device=DEVICE, extra_cache=3):
    """Padded inputs for ``specs``: a list of ``(prefix_len, parents, q_len)``, one per sequence."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(specs)
    max_tree = max(len(p) for _, p, _ in specs)
    q_rows = max(max(ql for _, _, ql in specs), 1)
    cache_len = max(pl + len(p) for pl, p, _ in specs) + extra_cache
    parents = torch.full((batch, max(max_tree, 1)), -1, dtype=torch.long)
    for b, (_, par, _) in enumerate(specs):
        parents[b, : len(par)] = torch.tensor(par, dtype=torch.long)
    bits = ancestor_bits(parents)
    tree_mask = torch.zeros(batch, q_rows, bits.shape[-1], dtype=torch.int32)
    for b, (_, par, q_len) in enumerate(specs):
        tree_mask[b, :q_len] = bits[b, len(par) - q_len : len(par)]
    q = torch.randn(batch, q_heads, q_rows, head_dim, generator=gen)
    k = torch.randn(batch, kv_heads, cache_len, head_dim, generator=gen)
    v = torch.randn(batch, kv_heads, cache_len, head_dim, generator=gen)
    lens = [
        torch.tensor(col, dtype=torch.long)
        for col in zip(*[(p, len(t), ql) for p, t, ql in specs], strict=True)
    ]
    return dict(
        q=q.to(device, dtype),
        k=k.to(device, dtype),
        v=v.to(device, dtype),
        prefix_lens=lens[0],
        tree_lens=lens[1],
        q_lens=lens[2],
        tree_mask=tree_mask.to(device),
        parents=parents,
    )


def metadata(inputs) -> TreeMetadata:
    return TreeMetadata(*(inputs[n] for n in ("prefix_lens", "tree_lens", "q_lens", "tree_mask")))


def call(fn, inputs, **kw):
    return fn(inputs["q"], inputs["k"], inputs["v"], metadata(inputs), **kw)


def branch_oracle(inputs) -> torch.Tensor:
    """Each queried node's output as plain causal attention over prefix + its root-to-node path."""
    q, k, v = (inputs[n].double().cpu() for n in ("q", "k", "v"))
    batch, q_heads, q_rows, head_dim = q.shape
    group = q_heads // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(batch):
        prefix, tree, q_len = (int(inputs[n][b]) for n in ("prefix_lens", "tree_lens", "q_lens"))
        for row in range(q_len):
            node, path = tree - q_len + row, []
            while node >= 0:
                path.append(node)
                node = int(inputs["parents"][b, node])
            keys = list(range(prefix)) + [prefix + n for n in reversed(path)]
            for h in range(q_heads):
                kk, vv = k[b, h // group, keys], v[b, h // group, keys]
                weights = torch.softmax(q[b, h, row] @ kk.T / math.sqrt(head_dim), dim=-1)
                out[b, h, row] = weights @ vv
    return out


def assert_close(out, expected, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(out.double().cpu(), expected.double().cpu(), atol=tol, rtol=tol)


# Ragged batch covering a one-node tree, a chain, a q_lens < tree_lens drafter step, an empty
# prefix, a >32-node tree (two mask words) and an empty tree.
def ragged_specs(gen):
    return [
        (37, random_parents(11, gen), 11),
        (0, random_parents(7, gen), 7),
        (21, [-1], 1),
        (16, random_parents(9, gen, chain=True), 9),
        (29, random_parents(12, gen), 4),
        (5, random_parents(40, gen), 40),
        (9, [], 0),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_kernel_matches_reference_and_branches(dtype, group, num_splits):
    specs = ragged_specs(torch.Generator().manual_seed(group * 10 + num_splits))
    if num_splits > 1:  # the combine pass costs one interpreted program per query row: keep Tq small
        specs = [spec for spec in specs if len(spec[1]) <= 32]
    inputs = make_batch(specs, q_heads=2 * group, kv_heads=2, head_dim=64, dtype=dtype, seed=group)
    out = call(kernel, inputs, num_splits=num_splits, block_n=16)
    assert out.dtype == dtype and out.shape == inputs["q"].shape
    oracle = branch_oracle(inputs)
    assert_close(out, oracle, dtype)
    ref = call(tree_attention_ref, inputs)
    assert_close(ref, oracle, dtype)
    q_rows = inputs["q"].shape[2]
    padding = torch.arange(q_rows) >= inputs["q_lens"].view(-1, 1)
    assert bool((out.cpu()[padding.unsqueeze(1).expand(-1, out.shape[1], -1)] == 0).all())


@pytest.mark.parametrize("head_dim", [128, 80])
def test_head_dims(head_dim):
    gen = torch.Generator().manual_seed(head_dim)
    specs = [(19, random_parents(6, gen), 6), (3, random_parents(5, gen), 5)]
    inputs = make_batch(specs, q_heads=4, kv_heads=2, head_dim=head_dim, dtype=torch.float16)
    out = call(kernel, inputs, block_n=16)
    assert_close(out, branch_oracle(inputs), torch.float16)


@pytest.mark.parametrize("num_splits", [1, 2])
@pytest.mark.parametrize("parents,prefix", [([-1], 0), ([-1], 33), (list(range(-1, 40)), 0)])
def test_single_sequence_edge_trees(parents, prefix, num_splits):
    """One-node trees, an empty prefix, a 41-node chain (two mask words), with and without splits."""
    inputs = make_batch([(prefix, parents, len(parents))], 4, 1, 64, torch.float32)
    out = call(kernel, inputs, block_n=16, num_splits=num_splits)
    assert_close(out, branch_oracle(inputs), torch.float32)


def test_default_tiles_and_strided_inputs():
    """Default heuristics, and q/k/v that are transposed views (as attention modules pass them)."""
    gen = torch.Generator().manual_seed(7)
    specs = [(90, random_parents(8, gen), 8), (40, random_parents(5, gen), 5)]
    inputs = make_batch(specs, 4, 2, 64, torch.float16)
    for name in ("q", "k", "v"):
        inputs[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
    assert inputs["q"].stride(-1) == 1 and not inputs["q"].is_contiguous()
    out = call(tree_attention, inputs, backend="triton")
    assert_close(out, call(tree_attention_ref, inputs), torch.float16)


def test_auto_backend_is_reference_on_cpu_and_triton_on_cuda():
    gen = torch.Generator().manual_seed(3)
    inputs = make_batch([(12, random_parents(5, gen), 5)], 2, 2, 64, torch.float32)
    auto = call(tree_attention, inputs)
    expected = call(tree_attention_ref if DEVICE == "cpu" else kernel, inputs)
    assert torch.equal(auto, expected)


def test_reference_accepts_precomputed_dense_mask():
    gen = torch.Generator().manual_seed(4)
    inputs = make_batch(
        [(12, random_parents(5, gen), 5), (3, random_parents(3, gen), 2)], 4, 2, 64, torch.float32
    )
    kv_len = int((inputs["prefix_lens"] + inputs["tree_lens"]).max())
    dense = dense_tree_mask(metadata(inputs), kv_len)
    with_mask = call(tree_attention, inputs, backend="reference", dense_mask=dense)
    assert torch.equal(with_mask, call(tree_attention_ref, inputs))
    additive = additive_mask(dense, torch.float32)  # what a model builds once per forward
    assert torch.equal(call(tree_attention, inputs, backend="reference", dense_mask=additive), with_mask)


def test_mask_helpers_roundtrip_and_ancestors():
    parents = torch.tensor([[-1, 0, 0, 1, 2, -1]])
    dense = unpack_bits(ancestor_bits(parents), 6)[0]
    assert dense[3].tolist() == [True, True, False, True, False, False]
    assert dense[4].tolist() == [True, False, True, False, True, False]
    assert dense[5].tolist() == [False] * 5 + [True]
    bits = torch.rand(3, 5, 70) > 0.5
    assert torch.equal(unpack_bits(pack_bits(bits), 70), bits)


@pytest.mark.parametrize("parents", [[[-1, 1, 0]], [[-1, 0, 3, 1]], [[-2, 0]], [[0]]])
def test_ancestor_bits_rejects_parents_that_are_not_earlier_nodes(parents):
    with pytest.raises(ValueError, match="does not point to an earlier node"):
        ancestor_bits(torch.tensor(parents))


def _valid():
    return make_batch([(10, [-1, 0, 0], 3)], 4, 2, 64, torch.float32, device="cpu")


BAD_INPUTS = [
    ("q", lambda x: x[0], ValueError, "4-D"),
    ("q", lambda x: x.to(torch.float64), TypeError, "float32, float16 or bfloat16"),
    ("k", lambda x: x.half(), TypeError, "share a dtype"),
    ("k", lambda x: x[:, :, :, :32], ValueError, "same shape"),
    ("q", lambda x: x[:, :3], ValueError, "multiple of KV heads"),
    ("k", lambda x: x.to("meta"), ValueError, "is on meta"),
    ("tree_mask", lambda x: x.long(), TypeError, "int32"),
    ("tree_mask", lambda x: x[:, :2], ValueError, "tree_mask must have shape"),
    ("prefix_lens", lambda x: x.float(), TypeError, "integer"),
    ("q_lens", lambda x: torch.cat([x, x]), ValueError, "must have shape"),
    ("q_lens", lambda x: x + 1, ValueError, "q_lens must not exceed tree_lens"),
    ("prefix_lens", lambda x: x + 100, ValueError, "fit the cache length"),
    ("tree_lens", lambda x: x + 40, ValueError, "fit tree_mask"),
]


@pytest.mark.parametrize("name,corrupt,error,message", BAD_INPUTS)
def test_bad_inputs_raise(name, corrupt, error, message):
    inputs = _valid()
    inputs[name] = corrupt(inputs[name])
    with pytest.raises(error, match=message):
        call(tree_attention, inputs, backend="reference")
    with pytest.raises(error, match=message):
        call(check_inputs, inputs)


def test_bad_backend_and_triton_on_cpu_without_interpreter(monkeypatch):
    inputs = _valid()
    with pytest.raises(ValueError, match="backend"):
        call(tree_attention, inputs, backend="cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        call(tree_attention, inputs, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("num_splits", [None, 1, 5])
def test_gpu_kernel_matches_branches(dtype, num_splits):
    specs = ragged_specs(torch.Generator().manual_seed(1))
    specs[0] = (700, specs[0][1], specs[0][2])
    inputs = make_batch(specs, q_heads=32, kv_heads=8, head_dim=128, dtype=dtype)
    out = call(kernel, inputs, num_splits=num_splits)
    assert_close(out, branch_oracle(inputs), dtype)
    assert_close(call(tree_attention, inputs), call(tree_attention_ref, inputs), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("tree", [8, 64])
def test_gpu_long_prefix_split_kv(tree):
    gen = torch.Generator().manual_seed(tree)
    specs = [(5000, random_parents(tree, gen), tree)]
    inputs = make_batch(specs, 32, 8, 128, torch.bfloat16)
    out = call(kernel, inputs)  # one sequence: the heuristics split the KV range
    assert_close(out, call(tree_attention_ref, inputs), torch.bfloat16)


@pytest.mark.gpu
def test_gpu_lengths_on_device_and_graph_capture():
    gen = torch.Generator().manual_seed(5)
    inputs = make_batch([(300, random_parents(16, gen), 16)] * 2, 8, 2, 64, torch.bfloat16)
    for name in ("prefix_lens", "tree_lens", "q_lens"):
        inputs[name] = inputs[name].cuda()
    expected = call(tree_attention_ref, inputs)
    call(kernel, inputs)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call(kernel, inputs)
    graph.replay()
    assert_close(out, expected, torch.bfloat16)
