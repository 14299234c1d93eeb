"""Helpers every job shares: object storage, prompt sets, reports (command line, plots, docs)."""
