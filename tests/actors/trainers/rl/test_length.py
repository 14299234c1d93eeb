"""Length-aware reward terms: hand computations and the Short-RL accuracy gate."""

from __future__ import annotations

import json

import pytest

from actors.trainers.rl.length import AccuracyGate, dapo_overlong, dler_truncate, kimi_length, short_rl


def test_short_rl_hand_values():
    assert short_rl([10, 20, 30], [True, True, True]) == pytest.approx([0.5, 0.0, -0.5], abs=1e-5)
    # wrong answers get 0 and do not set the min/max: correct lengths are 20 and 40
    assert short_rl([10, 20, 40, 100], [False, True, True, False]) == pytest.approx(
        [0, 0.5, -0.5, 0], abs=1e-5
    )
    # tolerance band: within lo + 5 earns the full 0.5
    assert short_rl([10, 14, 30], [True, True, True], tolerance=5) == pytest.approx(
        [0.5, 0.5, -0.5], abs=1e-5
    )
    assert short_rl([10, 16, 30], [True, True, True], tolerance=5) == pytest.approx(
        [0.5, 0.2, -0.5], abs=1e-5
    )
    assert short_rl([7, 7], [True, True]) == [0.5, 0.5]
    assert short_rl([7, 9], [False, False]) == [0.0, 0.0]


def test_accuracy_gate_on_while_accuracy_holds():
    gate = AccuracyGate(acc_tolerance=0.05)
    assert gate.update(0.40)  # first step: on
    assert gate.update(0.50)  # a new best: on
    assert gate.update(0.46)  # 0.46 >= 0.50 - 0.05
    assert gate.update(0.45)  # boundary counts as on
    assert not gate.update(0.44)
    assert not gate.update(0.10)
    assert gate.best == 0.50, "a low batch does not lower the best"
    assert gate.update(0.60) and not gate.update(0.50)


def test_accuracy_gate_state_round_trips_through_json():
    gate = AccuracyGate(0.05)
    for acc in (0.3, 0.6, 0.4):
        gate.update(acc)
    state = json.loads(json.dumps(gate.state_dict()))
    resumed = AccuracyGate(0.05)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == gate.state_dict()
    assert resumed.update(0.54) == gate.update(0.54) is False
    with pytest.raises(ValueError, match="acc_tolerance"):
        AccuracyGate(0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="batch accuracy"):
        gate.update(1.5)


def test_kimi_length():
    # lo = 10, hi = 30 over the whole group: λ = [0.5, 0, -0.5, 0.25]
    assert kimi_length([10, 20, 30, 15], [True, False, False, False]) == pytest.approx([0.5, 0.0, -0.5, 0.0])
    assert kimi_length([10, 20, 30, 15], [True, True, True, True]) == pytest.approx([0.5, 0.0, -0.5, 0.25])
    assert kimi_length([5, 5, 5], [True, False, True]) == [0.0, 0.0, 0.0]


def test_dler_truncate():
    assert dler_truncate([1.0, 1.0, 0.1, 1.0], [10, 50, 51, 100], limit=50) == [1.0, 1.0, 0.0, 0.0]
    assert dler_truncate([1.0, 1.0], [50, 50], limit=50, truncated=[False, True]) == [1.0, 0.0]
    with pytest.raises(ValueError):
        dler_truncate([1.0], [1, 2], limit=5)


def test_dapo_overlong():
    # L_max = 100, buffer = 20: 0 up to 80 tokens, then linear down to -factor at 100
    assert dapo_overlong(50, 100, 20) == 0.0
    assert dapo_overlong(80, 100, 20) == 0.0
    assert dapo_overlong(90, 100, 20) == pytest.approx(-0.5)
    assert dapo_overlong(100, 100, 20, factor=2.0) == pytest.approx(-2.0)
    assert dapo_overlong(130, 100, 20) == pytest.approx(-1.0), "beyond L_max it stays at -factor"
    with pytest.raises(ValueError):
        dapo_overlong(10, 100, 0)
