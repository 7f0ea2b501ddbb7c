"""Host time under engine profiles: what each profile adds, and where it cannot lower the GPU's time."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radsim.cost.host import dispatch_s, iteration_time_s, launch_counts
from radsim.cost.layer import Execution
from radsim.spec.arch import load_arch
from radsim.spec.engine import list_engines, load_engine
from radsim.spec.hardware import load_hardware


def test_ideal_is_the_gpu_time():
    gpu = np.array([1e-4, 5e-3])
    np.testing.assert_array_equal(iteration_time_s(load_engine("ideal"), gpu, 300, 32, 8, True, False), gpu)


def test_eager_pays_dispatch_per_kernel_and_its_loop_serially():
    eager = load_engine("eager")
    # 300 kernels at 6.5 us = 1.95 ms of dispatch: a 1 ms GPU iteration is host-bound
    t = iteration_time_s(eager, 1e-3, 300, 32, 4, True, False)
    assert t == pytest.approx(300 * eager.host_launch_s + eager.host_iteration_s + 4 * eager.host_sequence_s)
    # a long GPU iteration hides the dispatch, not the serial loop
    assert iteration_time_s(eager, 1.0, 300, 32, 4, True, False) == pytest.approx(
        1.0 + eager.host_iteration_s + 4 * eager.host_sequence_s
    )


def test_graphs_replace_dispatch_in_decode_only():
    graphs = load_engine("graphs")
    assert dispatch_s(graphs, 300, 32, 8, True, False) == pytest.approx(graphs.graph_launch_s)
    assert dispatch_s(graphs, 300, 32, 8, False, False) == pytest.approx(300 * graphs.host_launch_s)
    # a routed model replays one graph per layer pass: the layers visited change every step
    assert dispatch_s(graphs, 300, 24, 8, True, True) == pytest.approx(24 * graphs.graph_launch_s)
    # batches above the largest captured graph launch eagerly
    big = graphs.graph_max_batch + 1
    assert dispatch_s(graphs, 300, 32, big, True, False) == pytest.approx(300 * graphs.host_launch_s)


def test_overlap_hides_host_work_up_to_the_gpu_time():
    vllm = load_engine("vllm")
    assert iteration_time_s(vllm, 10e-3, 300, 32, 256, True, False) == pytest.approx(10e-3)
    floor = vllm.graph_launch_s + vllm.host_iteration_s + 256 * vllm.host_sequence_s
    assert iteration_time_s(vllm, 1e-4, 300, 32, 256, True, False) == pytest.approx(floor)


@settings(max_examples=200, deadline=None)
@given(
    gpu=st.floats(1e-6, 1.0),
    launches=st.integers(1, 5000),
    passes=st.integers(1, 200),
    sequences=st.integers(1, 1024),
    decode_only=st.booleans(),
    routed=st.booleans(),
    name=st.sampled_from(list_engines()),
)
def test_host_time_never_lowers_the_gpu_time_and_grows_with_work(
    gpu, launches, passes, sequences, decode_only, routed, name
):
    engine = load_engine(name)
    t = float(iteration_time_s(engine, gpu, launches, passes, sequences, decode_only, routed))
    assert t >= gpu
    # more GPU time, more launches or more sequences (within the same graph regime) never cost less
    assert iteration_time_s(engine, gpu * 1.5, launches, passes, sequences, decode_only, routed) >= t
    assert iteration_time_s(engine, gpu, launches + 10, passes, sequences, decode_only, routed) >= t
    if not engine.graphed(sequences, decode_only) or engine.graphed(sequences + 1, decode_only):
        assert iteration_time_s(engine, gpu, launches, passes, sequences + 1, decode_only, routed) >= t


def test_launch_counts_follow_the_cost_model():
    hw, arch = load_hardware("h100_sxm"), load_arch("llama3.1-8b")
    one = launch_counts(hw, arch, Execution("bf16"))
    # norm, QKV, RoPE with KV write, attention, output projection, norm, gate-up, activation, down
    assert one.per_pass == 9 and one.head == 4
    assert launch_counts(hw, arch, Execution("bf16", tp=2)).per_pass == 11  # two all-reduces
    assert launch_counts(hw, arch, Execution("bf16", routed=True)).per_pass > one.per_pass


def test_graph_free_tensor_parallel_batch1_decode_has_a_host_floor():
    hw, arch = load_hardware("h100_sxm"), load_arch("llama3.1-70b")
    eager = load_engine("eager")
    times = []
    for tp in (2, 4, 8):
        counts = launch_counts(hw, arch, Execution("bf16", tp=tp))
        floor = counts.launches(arch.num_layers) * eager.host_launch_s
        times.append(
            float(
                iteration_time_s(
                    eager, 1e-4, counts.launches(arch.num_layers), arch.num_layers, 1, True, False
                )
            )
        )
        assert times[-1] >= floor
    assert times[-1] >= times[0]  # more GPUs, more all-reduce launches: the host floor does not shrink


def test_nothing_is_added_where_the_profile_is_zero():
    zero = replace(
        load_engine("vllm"), host_launch_s=0.0, graph_launch_s=0.0, host_iteration_s=0.0, host_sequence_s=0.0
    )
    assert zero.adds_nothing
