"""The pure core of RL alignment: verifiable tasks, length-aware rewards, advantages and losses.

Nothing here imports Ray or the engine, so every piece is unit-tested on CPU; the Ray Train loop
and the pipeline import these modules (``tasks``, ``length``, ``advantages``, ``losses``).
"""
