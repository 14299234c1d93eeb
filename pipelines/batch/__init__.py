"""Batch offline generation: prompts in Parquet/JSONL (local or ``s3://``) through a Ray Data pool
of engine actors into Parquet, resumable shard by shard.

``config`` holds the settings, ``store`` the object-store access, ``rows`` the per-row parsing,
``shards`` the plan and the shard files, ``worker`` the engine actor and ``job`` the Ray Data job.
"""
