"""The OpenAI-compatible endpoint on Ray Serve: ingress → verifier replicas → drafter replicas.

    tandem serve [configs/serve.yaml] [--port 8000] [key=value ...]     (local Ray, blocks)
    serve run cluster/serve.yaml  /  serve deploy cluster/serve.yaml    (import path
    pipelines.serve:build_app)

Modules: ``app`` (the config and the deployments), ``http`` (the FastAPI ingress),
``openai_api`` (request/response schema and validation), ``metrics`` (Prometheus series).
"""

from pipelines.serve.app import CLI_FLAGS, ServeConfig, build_app, main

__all__ = ["CLI_FLAGS", "ServeConfig", "build_app", "main"]
