"""Adapted distillation on tiny random models: adapters, depth targets, resumable steps, scores."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from radsim.models.llama import Llama, LlamaConfig  # noqa: E402
from radsim.models.radial import Radial, RadialConfig  # noqa: E402
from radsim.train.adapt import (  # noqa: E402
    LoRALinear,
    adapter_state,
    add_adapters,
    kl_per_token,
    merge_adapters,
    perplexity_interval,
    ratio_interval,
    score_row,
    tau_for_depth,
    window_batch,
)
from radsim.train.distill import oracle_routes  # noqa: E402

TINY = LlamaConfig(
    vocab_size=50, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2, ffn_size=48, max_positions=32
)
X = torch.from_numpy(np.random.default_rng(0).integers(0, 50, size=(3, 16)).astype(np.int64))


def _perturbed(model: Llama) -> None:
    """Give every adapter a non-zero update (a fresh one is zero, as LoRA starts)."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_b, std=0.5)


def test_fresh_adapters_leave_the_model_unchanged_and_train_only_themselves():
    torch.manual_seed(0)
    model = Llama(TINY).eval()
    before = model(X)
    params = add_adapters(model, rank=2, alpha=4.0)
    assert torch.equal(model(X), before)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params}
    assert len(params) == 2 * 7 * TINY.num_layers  # A and B on the 7 projections of every layer


def test_merging_gives_the_same_outputs_as_the_adapted_model():
    torch.manual_seed(0)
    model = Llama(TINY).eval()
    add_adapters(model, rank=3, alpha=6.0)
    _perturbed(model)
    model.double()  # the merge reassociates sums: compare in float64
    adapted = model(X)
    assert not torch.allclose(adapted.float(), Llama(TINY).eval()(X))
    state = adapter_state(model)
    assert state and all(".lora_" in k for k in state)
    merge_adapters(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model.double()(X), adapted, rtol=1e-10, atol=1e-10)


def test_adapters_load_back_into_a_fresh_model():
    torch.manual_seed(0)
    a = Llama(TINY).eval()
    add_adapters(a, rank=2, alpha=2.0)
    _perturbed(a)
    torch.manual_seed(0)
    b = Llama(TINY).eval()  # the same base weights
    add_adapters(b, rank=2, alpha=2.0)
    assert not torch.allclose(b(X), a(X))
    b.load_state_dict(adapter_state(a), strict=False)
    torch.testing.assert_close(b(X), a(X))


@pytest.mark.parametrize("depth", [1.5, 2.0, 3.2])
def test_tau_for_depth_hits_the_oracle_depth(depth):
    contrib = torch.rand(8, 32, 4, generator=torch.Generator().manual_seed(0)).half()
    tau = tau_for_depth(contrib, depth)
    routes = oracle_routes(contrib, tau)
    visits = 1 + (routes != -1).sum(-1).float().mean().item()
    assert visits == pytest.approx(depth, abs=2 / routes[..., 0].numel() + 0.02)


def test_a_steps_windows_depend_only_on_seed_and_step():
    train = np.arange(10_000, dtype=np.uint16)
    a = window_batch(train, 16, 4, seed=3, step=7)
    assert torch.equal(a, window_batch(train, 16, 4, seed=3, step=7))
    assert not torch.equal(a, window_batch(train, 16, 4, seed=3, step=8))
    assert a.shape == (4, 16) and (a[:, 1:] - a[:, :-1] == 1).all()  # consecutive tokens


def test_kl_is_zero_against_itself_and_positive_otherwise():
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    ref = torch.log_softmax(logits, -1)
    assert kl_per_token(ref, logits).abs().max() < 1e-5
    assert (kl_per_token(ref, torch.randn(2, 5, 11)) > 0).all()


def test_score_rows_give_intervals_around_the_point_and_per_source_values():
    rng = np.random.default_rng(0)
    tokens = np.full(40, 255.0)
    ref = {"loss": rng.uniform(600, 800, 40), "tokens": tokens, "depth": tokens * 4}
    worse = {"loss": ref["loss"] + 50, "tokens": tokens, "depth": tokens * 3}
    sources = np.repeat([0, 1], 20)
    full = score_row("sequential", None, ref, ref, sources, ["a", "b"], seed=0)
    row = score_row("radial_adapted", 0.75, worse, ref, sources, ["a", "b"], seed=0)
    assert full["ratio_to_full"] == 1.0 and full["mean_depth"] == 4.0
    assert row["perplexity_lo"] < row["perplexity"] < row["perplexity_hi"]
    assert row["ratio_to_full"] == pytest.approx(np.exp(50 / 255))
    assert row["ratio_lo"] <= row["ratio_to_full"] <= row["ratio_hi"]
    assert row["mean_depth"] == 3.0 and row["windows"] == 40
    expected_a = np.exp(worse["loss"][:20].sum() / tokens[:20].sum())
    assert row["perplexity[a]"] == pytest.approx(expected_a)


def test_a_constant_gap_has_a_tight_paired_interval():
    rng = np.random.default_rng(1)
    tokens = np.full(50, 100.0)
    ref = rng.uniform(200, 400, 50)
    lo, hi = ratio_interval(ref + 10, ref, tokens, seed=0)
    assert lo == pytest.approx(np.exp(0.1), rel=1e-9) and hi == pytest.approx(np.exp(0.1), rel=1e-9)
    plo, phi = perplexity_interval(ref, tokens, seed=0)
    assert plo < np.exp(ref.sum() / tokens.sum()) < phi


def test_adapted_radial_model_routes_and_backpropagates_into_adapters_and_router():
    torch.manual_seed(0)
    model = Radial(RadialConfig(base=TINY, max_steps=4, max_passes=1, kv_policy="copy"))
    params = add_adapters(model.model, rank=2, alpha=2.0)
    _perturbed(model.model)
    out = model(X, mode="sample", straight_through=True, temperature=0.5)
    loss = out.logits.logsumexp(-1).mean() - (out.log_prob * out.depth.float()).mean()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert model.router.proj.weight.grad is not None and model.router.proj.weight.grad.abs().sum() > 0


def test_a_detached_router_input_keeps_the_route_loss_out_of_the_layers():
    torch.manual_seed(0)
    model = Radial(RadialConfig(base=TINY, max_steps=4, max_passes=1, kv_policy="copy"))
    params = add_adapters(model.model, rank=2, alpha=2.0)
    _perturbed(model.model)
    for detach in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        out = model(X, mode="sample", temperature=0.5, detach_router_input=detach)
        (out.log_prob * out.depth.float()).mean().backward()  # a policy-gradient loss only
        reached = any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        assert reached is not detach
        assert model.router.proj.weight.grad.abs().sum() > 0


def _tiny_run(tmp_path, steps=4, router_lr=0.0, routing="argmax", **adapt_extra):
    from radsim.train.config import AdaptSection, DataSection, RunConfig

    cfg = RunConfig(
        name="tiny-adapt",
        kind="radial_adapt",
        data=DataSection(seq_len=16, batch=2, vocab=0),
        adapt=AdaptSection(
            steps=steps,
            checkpoint_every=2,
            lora_rank=2,
            lora_alpha=2.0,
            warmup_steps=1,
            router_lr=router_lr,
            routing=routing,
            **adapt_extra,
        ),
    )
    torch.manual_seed(0)
    teacher = Llama(TINY).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    from radsim.models.radial import Router

    router = Router(RadialConfig(base=TINY, max_steps=TINY.num_layers, max_passes=1, kv_policy="copy"))
    torch.nn.init.normal_(router.proj.weight, std=1.0)
    train = np.random.default_rng(0).integers(0, 50, size=5000).astype(np.uint16)
    return cfg, teacher, router, train


@pytest.mark.parametrize(("router_lr", "routing"), [(0.0, "argmax"), (1e-2, "sample")])
def test_an_interrupted_adaptation_resumes_to_the_same_numbers(tmp_path, monkeypatch, router_lr, routing):
    import copy

    import radsim.train.adapt as adapt

    cfg, teacher, router, train = _tiny_run(tmp_path, router_lr=router_lr, routing=routing)
    start = copy.deepcopy(router.state_dict())
    whole, log = adapt.adapt_one(cfg, 0.75, teacher, teacher, router, train, tmp_path / "whole")
    assert len(log) == 4 and all(np.isfinite(r["kl"]) for r in log)
    frozen = all(torch.equal(v, start[k]) for k, v in whole.router.state_dict().items())
    assert frozen is (router_lr == 0)
    assert any(v.abs().sum() > 0 for k, v in adapter_state(whole.model).items() if "lora_b" in k)

    real_write, writes = adapt.atomic_write, []

    def write_then_stop(path, write):
        real_write(path, write)
        writes.append(path)
        raise KeyboardInterrupt  # the session ends right after the first checkpoint (step 2)

    monkeypatch.setattr(adapt, "atomic_write", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        adapt.adapt_one(cfg, 0.75, teacher, teacher, router, train, tmp_path / "cut")
    monkeypatch.setattr(adapt, "atomic_write", real_write)
    assert torch.load(writes[0], weights_only=False)["step"] == 2
    resumed, log2 = adapt.adapt_one(cfg, 0.75, teacher, teacher, router, train, tmp_path / "cut")
    assert [r["kl"] for r in log2] == [r["kl"] for r in log]
    for key, value in adapter_state(whole.model).items():
        assert torch.equal(value, adapter_state(resumed.model)[key]), key


@pytest.mark.parametrize("target", [0.25, 1.0])
def test_the_exit_bias_moves_the_depth_towards_its_target(tmp_path, target):
    import radsim.train.adapt as adapt

    cfg, teacher, router, train = _tiny_run(tmp_path, steps=12, exit_bias_lr=20.0)
    layers = TINY.num_layers
    model, log = adapt.adapt_one(cfg, target, teacher, teacher, router, train, tmp_path / "run")
    bias = [r["exit_bias"] for r in log]
    start = float(router.proj.bias[layers].detach())
    for before, row, after in zip([start, *bias[:-1]], log, bias, strict=True):
        gap = target * layers - row["depth"]  # below the target: fewer exits, a lower bias
        assert after == pytest.approx(before - 20.0 * gap / layers, abs=1e-5)
    first, last = log[0]["depth"], log[-1]["depth"]
    assert abs(last - target * layers) < abs(first - target * layers)
    assert float(model.router.proj.bias[layers]) == pytest.approx(bias[-1])
    frozen = {k: v for k, v in model.router.state_dict().items() if k != "proj.bias"}
    assert all(torch.equal(v, router.state_dict()[k]) for k, v in frozen.items())  # only the bias


def test_the_saved_model_is_the_trained_model(tmp_path):
    """What `save_adapted` writes and `adapted_model` reads back (adapters in float16, merged) routes
    and predicts as the student did at the end of training: the same routes, the same depth, logits
    within float16 rounding. (A change of the router after training once made the evaluated models
    far worse than the trained ones.)"""
    import copy

    import radsim.train.adapt as adapt

    cfg, teacher, router, train = _tiny_run(tmp_path, steps=4, exit_bias_lr=20.0)
    student, log = adapt.adapt_one(cfg, 0.5, teacher, teacher, router, train, tmp_path / "run")
    adapt.save_adapted(tmp_path / "adapter.pt", student, cfg, 0.5, log)
    saved = adapt.load_adapter_file(tmp_path / "adapter.pt")
    assert torch.equal(saved["router"]["proj.bias"], student.router.proj.bias.detach())
    reloaded = adapt.adapted_model(saved, copy.deepcopy(teacher)).eval()
    x = adapt.window_batch(train, cfg.data.seq_len, cfg.data.batch, cfg.seed, 100)
    with torch.no_grad():
        want, got = student(x, record=True), reloaded(x, record=True)
    assert torch.equal(got.depth, want.depth)
    assert [(v.layer, v.choice.tolist()) for v in got.visits] == [
        (v.layer, v.choice.tolist()) for v in want.visits
    ]
    torch.testing.assert_close(got.logits, want.logits, rtol=2e-2, atol=2e-2)
    other = copy.deepcopy(saved)
    other["adapters"] = {k.replace("layers.", "blocks."): v for k, v in saved["adapters"].items()}
    with pytest.raises(adapt.ConfigError, match="does not fit"):
        adapt.adapted_model(other, copy.deepcopy(teacher))


@pytest.mark.parametrize("router_lr", [0.0, 1e-3])
def test_a_frozen_router_passes_no_gradient_into_the_layers(tmp_path, monkeypatch, router_lr):
    """The straight-through scale only where the router trains; with it frozen, argmax routing is a
    plain forward (else the scale's gradient reaches the adapters through the router's input)."""
    import radsim.train.adapt as adapt
    from radsim.models.radial import Radial as RadialModel

    seen, real = [], RadialModel.forward

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("straight_through", False))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RadialModel, "forward", spy)
    cfg, teacher, router, train = _tiny_run(tmp_path, steps=1, router_lr=router_lr)
    adapt.adapt_one(cfg, 0.75, teacher, teacher, router, train, tmp_path / "run")
    assert seen == [router_lr > 0]
    # and the leak it avoids: with a frozen router, the scale changes the adapters' gradient
    torch.manual_seed(0)
    model = Radial(RadialConfig(base=TINY, max_steps=4, max_passes=1, kv_policy="copy"))
    params = add_adapters(model.model, rank=2, alpha=2.0)
    _perturbed(model.model)
    for p in model.router.parameters():
        p.requires_grad_(False)
    grads = []
    for straight in (False, True):
        model.zero_grad(set_to_none=True)
        real(model, X, mode="argmax", straight_through=straight).logits.logsumexp(-1).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert not torch.allclose(grads[0], grads[1])
