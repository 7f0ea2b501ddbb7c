"""DLO on a tiny config: exact expansion, MLP-only skipping, training gates, traces of expanded layers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from radsim.models.dlo import DLOConfig, expand, expanded_indices, gemm_flops_per_token  # noqa: E402
from radsim.models.llama import KV_COMPUTE, KV_WRITE, Llama, LlamaConfig  # noqa: E402
from radsim.routes.trace import read_trace, write_trace  # noqa: E402
from radsim.train.capture import capture, model_meta, run_meta  # noqa: E402

TINY = LlamaConfig(
    vocab_size=61, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2, ffn_size=48, max_positions=32
)
WINDOWS = np.random.default_rng(0).integers(0, 61, size=(5, 12)).astype(np.int64)


def _pretrained() -> Llama:
    torch.manual_seed(0)
    return Llama(TINY).eval()


def _idx():
    return torch.from_numpy(WINDOWS[:3])


def test_expanded_indices():
    assert expanded_indices(30, [3, 7]) == (4, 9)
    assert expanded_indices(4, [1, 3]) == (2, 5)
    with pytest.raises(ValueError, match="insert_after"):
        expanded_indices(4, [4])


def test_expansion_is_exact_at_init():
    base = _pretrained()
    dlo = expand(base, [1, 3]).eval()
    assert dlo.cfg.base.num_layers == 6 and dlo.cfg.expanded_layers == (2, 5)
    with torch.no_grad():
        out = dlo(_idx())
        torch.testing.assert_close(out.logits, base(_idx()), atol=0, rtol=0)
    assert all(r.all() for r in out.run)  # routers start by running every MLP
    # the copies are independent parameters
    assert dlo.model.layers[2].mlp.up_proj.weight is not dlo.model.layers[1].mlp.up_proj.weight
    assert dlo.model.layers[2].mlp.down_proj.weight.abs().sum() == 0


def test_skipping_drops_only_the_mlp():
    dlo = expand(_pretrained(), [1]).eval()
    torch.nn.init.normal_(dlo.routers[0].weight, std=1.0)
    torch.nn.init.zeros_(dlo.routers[0].bias)
    x = _idx()
    with torch.no_grad():
        out = dlo(x)
        run = out.run[0]
        assert run.any() and (~run).any()
        m = dlo.model
        layer = m.layers[0]
        h, pos = m.embed_tokens(x), m.positions(x)
        hn, _ = layer.visit(h, pos, run, m.rope, "compute")  # the shared building block, KV complete
        for later in m.layers[1:]:
            hn = later(hn, pos, m.rope)
        torch.testing.assert_close(out.logits, m.lm_head(m.norm(hn)), atol=1e-5, rtol=1e-5)


def test_training_gate_is_straight_through():
    dlo = expand(_pretrained(), [1])
    out = dlo(_idx(), train=True, sim_threshold=0.9)
    assert len(out.skip_target) == 5
    assert out.skip_target[2].all()  # the zero-output new layer leaves its input unchanged: skip it
    out.logits.sum().backward()
    assert dlo.routers[0].bias.grad is not None and dlo.routers[0].bias.grad.abs() > 0


def test_trace_marks_expanded_layers_and_mlp_skips(tmp_path):
    dlo = expand(_pretrained(), [0, 2]).eval()
    torch.nn.init.normal_(dlo.routers[3].weight, std=1.0)
    torch.nn.init.zeros_(dlo.routers[3].bias)
    extra = {"expanded_layers": list(dlo.cfg.expanded_layers)}
    meta = run_meta(
        model_meta("tiny-dlo", "dlo", dlo, extra), "compute", "test", int(WINDOWS.size), 0, "tiny"
    )
    trace = capture(dlo, WINDOWS, batch=2, meta=meta)
    back = read_trace(write_trace(trace, tmp_path / "d.parquet"))
    v = back.visits
    assert back.meta["model"]["expanded_layers"] == [1, 4]
    assert back.meta["model"]["config"]["expanded_layers"] == [1, 4]
    assert back.meta["kv_policy"] == "compute" and back.num_layers == 6
    assert (v.groupby(["seq", "pos"]).size() == 6).all()
    skipped = v[v["kv_action"] == KV_COMPUTE]
    assert len(skipped) > 0 and set(skipped["layer"]) == {3}
    assert skipped["mlp_ratio"].isna().all() and skipped["attn_ratio"].notna().all()
    ran = v[v["kv_action"] == KV_WRITE]
    assert ran["mlp_ratio"].notna().all()
    assert ((v["prob"] >= 0.5) == (v["kv_action"] == KV_WRITE)).all()


def test_flops_count_layers_run():
    full = gemm_flops_per_token(TINY, 4, 4)
    assert full - gemm_flops_per_token(TINY, 3, 4) == 2 * 3 * 32 * 48


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="expanded_layers"):
        DLOConfig(base=TINY, expanded_layers=(9,))
