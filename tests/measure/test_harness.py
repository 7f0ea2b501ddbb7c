"""The timing harness: replayed routes, the serving-style step against the reference model, tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radsim.measure.harness import (
    Config,
    build_weights,
    grid,
    make_caches,
    measure,
    measure_config,
    plan_step,
    read_csv,
    run_step,
)
from radsim.measure.specs import SPECS, step_routes
from radsim.measure.timing import CpuDevice
from radsim.routes.replay import StepRoutes, slot_batches


def test_sequential_prefill_matches_the_reference_model():
    # The fused, KV-cached harness computes the same logits as radsim.models.llama.Llama.forward.
    from radsim.measure.specs import spec_arch
    from radsim.models.llama import Llama, LlamaConfig

    spec = SPECS["tiny-seq"]
    routes = step_routes(spec, "prefill", 2, 12)
    w = build_weights(spec, torch.device("cpu"), torch.float32, max_pos=64)
    torch.manual_seed(0)
    ref = Llama(LlamaConfig.from_arch(spec_arch(spec), rope_theta=spec.rope_theta, norm_eps=1e-5))
    ids = torch.randint(0, 512, (2, 12))
    with torch.inference_mode():
        plans = plan_step(routes, False, torch.device("cpu"))
        caches = make_caches(plans, w, 2, torch.device("cpu"), torch.float32)
        got = run_step(ids, plans, caches, w, "prefill")
        want = ref(ids)[:, -1]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_decode_slots_hold_the_earlier_visits():
    # token 0 visits slots 0, 1; token 1 visits slot 1; the new token 2 visits slots 0 and 2
    slots = np.array([[[0, 1], [1, -1], [0, 2]]])
    batches = slot_batches(StepRoutes("decode", slots, num_layers=3, kv_policy="none"))
    assert [b.slot for b in batches] == [0, 2]
    assert [float(b.context_tokens[0]) for b in batches] == [1.0, 0.0]
    copy = slot_batches(StepRoutes("decode", slots, num_layers=3, kv_policy="copy"))
    assert [b.slot for b in copy] == [0, 1, 2]  # skippers write K/V in every first-pass layer
    assert [float(b.visiting_tokens[0]) for b in copy] == [1.0, 0.0, 1.0]
    assert all(float(b.context_tokens[0]) == 2.0 for b in copy)


def test_a_slot_visited_twice_by_one_token_is_rejected():
    slots = np.array([[[0, 0]]])
    with pytest.raises(ValueError, match="twice"):
        slot_batches(StepRoutes("prefill", slots, num_layers=2, kv_policy="none"))


@pytest.mark.parametrize("model", ["tiny-seq", "tiny-radial"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_measure_config_rows(model, phase):
    rows = measure_config(CpuDevice(), Config(model, phase, 3, 16), warmup=1, repeats=3)
    scopes = [r["scope"] for r in rows]
    assert scopes[:2] == ["step", "embed"] and scopes[-1] == "head"
    step = rows[0]
    assert step["time_s_p10"] <= step["time_s"] <= step["time_s_p90"]
    assert step["peak_memory_bytes"] == pytest.approx(
        step["weights_bytes"] + step["kv_cache_bytes"] + step["activation_bytes"]
    )
    assert step["activation_bytes"] > 0
    slot = next(r for r in rows if r["scope"] == "slot")
    assert len(slot["new_tokens"].split()) == 3


def test_radial_routes_replay_a_trace():
    routes = step_routes(SPECS["scratch-radial"], "decode", 2, 40)
    assert routes.slots.shape[:2] == (2, 41)
    assert routes.kv_policy == "none"
    assert max(b.pass_index for b in slot_batches(routes)) <= 1


def test_measure_writes_a_table_and_its_environment(tmp_path):
    configs = grid(["tiny-seq"], ["prefill", "decode"], [1, 2], [8], [8])
    path = measure(configs, tmp_path, warmup=1, repeats=2, log=lambda _: None)
    rows = read_csv(path)
    assert {r["config_id"] for r in rows} == {c.config_id for c in configs}
    env = (tmp_path / "environment.json").read_text()
    assert '"torch_threads": 1' in env and '"cpu_model"' in env


def test_grid_rejects_unknown_models():
    with pytest.raises(ValueError, match="valid"):
        grid(["nope"], ["decode"], [1], [8], [8])


def test_measure_core_imports_without_pandas():
    # A bare GPU box has torch and numpy only: the harness must not import pandas, simpy or plotly.
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pandas'] = None; sys.modules['simpy'] = None; sys.modules['plotly'] = None;"
        "sys.modules['scipy'] = None; import radsim.measure.harness, radsim.measure.timing"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
