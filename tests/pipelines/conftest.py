"""Fixtures for pipeline tests that need a saved model or a Ray cluster."""

import socket

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def verifier_dir(tmp_path_factory, tiny_tokenizer, make_tiny):
    """The tiny random verifier (``tiny_lm``'s weights) saved as an HF folder, for actors."""
    path = tmp_path_factory.mktemp("models") / "tiny-verifier"
    make_tiny().save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path
