"""Finedeep on a tiny config: shapes, causality, router weights, parameter parity with dense."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from radsim.models.finedeep import Finedeep, FinedeepConfig, router_entropy  # noqa: E402
from radsim.models.llama import Llama, LlamaConfig  # noqa: E402

TINY = LlamaConfig(
    vocab_size=97, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, ffn_size=48, max_positions=64
)
CFG = FinedeepConfig(base=TINY, sub_layers=2, experts=3)


def _model() -> Finedeep:
    torch.manual_seed(0)
    return Finedeep(CFG).eval()


def _idx(b=2, t=10, seed=1):
    return torch.randint(0, TINY.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_expert_size():
    out = _model()(_idx(), record=True)
    assert CFG.hidden == 48 // 6
    assert out.logits.shape == (2, 10, TINY.vocab_size)
    assert len(out.weights) == TINY.num_layers
    assert out.weights[0].shape == (2, 10, 2, 3)  # (B, T, M, K)
    assert len(out.stats[0].tokens) == 20


def test_router_weights_are_a_distribution_and_entropy_is_bounded():
    out = _model()(_idx())
    for w in out.weights:
        assert (w > 0).all() and (w < 1).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
        ent = router_entropy(w)
        assert (ent >= 0).all() and (ent <= torch.log(torch.tensor(3.0)) + 1e-6).all()


def test_causal():
    model, idx = _model(), _idx()
    changed = idx.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % TINY.vocab_size
    with torch.no_grad():
        a, b = model(idx).logits, model(changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_ffn_parameters_match_the_dense_model():
    dense = sum(p.numel() for p in Llama(TINY).layers[0].mlp.parameters())
    sub = Finedeep(CFG).layers[0].sub_layers
    experts = sum(s.gate_proj.numel() + s.up_proj.numel() + s.down_proj.numel() for s in sub)
    assert experts == dense


def test_bad_split_is_rejected():
    with pytest.raises(ValueError, match="expert_size"):
        FinedeepConfig(base=TINY, sub_layers=7, experts=7)


def test_capture_round_trips(tmp_path):
    import numpy as np

    from radsim.routes.trace import read_trace, write_trace
    from radsim.train.capture import capture, model_meta, run_meta

    windows = np.random.default_rng(0).integers(0, TINY.vocab_size, size=(5, 12)).astype(np.int64)
    model = _model()
    meta = run_meta(
        model_meta("tiny-finedeep", "finedeep", model, {}), "none", "test", int(windows.size), 0, "t"
    )
    back = read_trace(write_trace(capture(model, windows, batch=2, meta=meta), tmp_path / "f.parquet"))
    config = back.meta["model"]["config"]
    assert back.meta["model"]["kind"] == "finedeep"
    assert (config["sub_layers"], config["experts"], config["expert_hidden"]) == (2, 3, 8)
    assert config["router_shape"] == [32, 3]
    assert (back.visits.groupby(["seq", "pos"]).size() == TINY.num_layers).all()
    assert (back.visits["entropy"] > 0).all() and (back.visits["entropy"] <= np.log(3) * 1.01).all()
    with torch.no_grad():
        logits = model(torch.from_numpy(windows)).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, TINY.vocab_size), torch.from_numpy(windows[:, 1:]).reshape(-1)
    )
    assert back.meta["quality"]["loss_nats"] == pytest.approx(loss.item(), rel=1e-5)
