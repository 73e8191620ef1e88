"""A run's settings: scalar checks name their option, the reaction weights parse, names are checked by
the registry — all before any model loads."""

from __future__ import annotations

import pytest

from corll.config import ConfigError, SimulationConfig, parse_weights
from corll.learners.registry import check


@pytest.mark.parametrize(("change", "message"), [
    ({"rounds": 0}, "--rounds must be >= 1"),
    ({"k": 0}, "--k must be >= 1"),
    ({"epsilon": 1.5}, "--epsilon must be in"),
    ({"alpha": 0.0}, "--alpha must be in"),
    ({"loss_type": "hinge"}, "--loss must be one of sigmoid, ipo"),
    ({"precision": "fp8"}, "--precision must be one of"),
    ({"user": "robot"}, "unknown user 'robot'"),
    ({"algorithms": ["corll", "corll"]}, "each algorithm may be given once"),
    ({"algorithms": []}, "give at least one"),
    ({"full_finetune": True, "init_adapter": "somewhere"}, "--init-adapter needs LoRA"),
    ({"weights": "love=-1"}, "must not be negative"),
])
def test_impossible_values_are_named_by_their_option(change, message):
    with pytest.raises(ConfigError, match=message):
        SimulationConfig(**change).validate()


@pytest.mark.parametrize(("change", "message"), [
    ({"algorithms": ["corll", "magic"]}, "unknown algorithm 'magic': use one of corll, dueling"),
    ({"model": "no-such-model"}, "unknown model 'no-such-model'"),
    ({"task": "no-such-task"}, "unknown task 'no-such-task'"),
])
def test_the_registry_checks_the_names(change, message):
    SimulationConfig(**change).validate()  # the values are fine: only the registry knows the names
    with pytest.raises(ConfigError, match=message):
        check(SimulationConfig(**change))


def test_defaults_are_a_valid_run_and_weights_parse():
    check(SimulationConfig())
    assert parse_weights("love=1,help=0.5, safe=0") == {"love": 1.0, "help": 0.5, "safe": 0.0}
