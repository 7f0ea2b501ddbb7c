"""A whole iteration: layers plus embedding and head, and its totals."""

from __future__ import annotations

import numpy as np
import pytest

from radsim.cost.iteration import HEAD_OPS, head_cost, iteration_cost
from radsim.cost.layer import Execution


def test_step_totals_are_layers_plus_head(toy_gpu, tiny_arch):
    layers = tiny_arch.num_layers
    step = iteration_cost(
        toy_gpu,
        tiny_arch,
        Execution("fp16"),
        np.array([3.0, 1.0]),
        np.zeros((layers, 2)),
        np.array([[3.0, 1.0]] * layers),
        2,
    )
    assert step.time_s == pytest.approx(step.layers.time_s.sum() + step.head.time_s.sum())
    assert step.energy_J == pytest.approx(step.layers.energy_J.sum() + step.head.energy_J.sum())
    assert step.layers.time_s.shape == (10, layers)


def test_unvisited_layers_are_not_launched(toy_gpu, tiny_arch):
    layers = tiny_arch.num_layers
    visits = np.zeros((layers, 1))
    visits[1] = 1.0
    exe = Execution("fp16", routed=True)
    step = iteration_cost(toy_gpu, tiny_arch, exe, np.ones(1), np.zeros((layers, 1)), visits, 1)
    per_layer = step.layers.time_s.sum(axis=0)
    assert per_layer[1] > 0 and (np.delete(per_layer, 1) == 0).all()


def test_head_reads_the_lm_head_once_and_samples_only_logit_rows(toy_gpu, tiny_arch):
    head = head_cost(toy_gpu, tiny_arch, Execution("fp16"), new_tokens=100.0, logit_rows=4.0)
    assert head.ops == HEAD_OPS
    assert head.op("lm_head", "weight_bytes") == tiny_arch.vocab_size * tiny_arch.hidden_size * 2
    assert head.op("lm_head", "flops") == 2 * 4 * tiny_arch.vocab_size * tiny_arch.hidden_size
    assert head.op("embed", "act_bytes") == 100 * tiny_arch.hidden_size * 2 * 2
