"""Benchmarks, each against a peer in the same run, writing JSON, PNG plots and (when asked with
``docs=docs/benchmarks.md``) their table in the docs:

- ``latency`` (``tandem bench``): batch-1 generation vs Hugging Face ``generate`` and assisted
  generation; ``python -m pipelines.bench`` runs it;
- ``load`` (``tandem load-bench``): concurrent streaming clients against the Serve app;
- ``batch`` (``tandem batch-bench``): the Ray Data batch job with speculation on and off;
- ``verify_cost`` (``tandem verify-cost``): a verifier step's time by draft tree size;
- ``kernel`` (``python -m pipelines.bench.kernel``): the Triton tree-attention kernel (CUDA).
"""
