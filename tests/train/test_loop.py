"""Scratch training on synthetic tokens: a radial router's load balance, and resumable checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import radsim.train.loop as loop  # noqa: E402
from radsim.models.llama import LlamaConfig, lm_loss  # noqa: E402
from radsim.models.radial import Radial, RadialConfig  # noqa: E402
from radsim.train.config import DataSection, ModelSection, RadialSection, RunConfig, TrainSection  # noqa: E402

TINY = LlamaConfig(
    vocab_size=50, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2, ffn_size=48, max_positions=32
)
X = torch.from_numpy(np.random.default_rng(0).integers(0, 50, size=(3, 16)).astype(np.int64))


def test_balance_loss_is_one_when_layers_share_evenly_and_larger_when_one_takes_all():
    torch.manual_seed(0)
    model = Radial(RadialConfig(base=TINY, max_steps=6, max_passes=2))
    with torch.no_grad():
        model.router.proj.weight.zero_()
        model.router.proj.bias.zero_()
        even = model(X, mode="sample")  # uniform router: every option alike
        skip_only = Radial(RadialConfig(base=TINY, max_steps=6, max_passes=1))
        skip_only.router.proj.weight.zero_()
        skip_only.router.proj.bias.zero_()
        skip_only.router.proj.bias[3] = 20.0  # everyone jumps from layer 0 to the last layer, then exits
        skewed = skip_only(X, mode="sample")
    assert even.choice_count.sum() > 0
    assert even.balance_loss().item() == pytest.approx(1.0, abs=0.25)
    assert skewed.balance_loss().item() == pytest.approx(TINY.num_layers, rel=0.01)


def test_balance_loss_reaches_the_router():
    torch.manual_seed(0)
    model = Radial(RadialConfig(base=TINY, max_steps=6, max_passes=2))
    torch.nn.init.normal_(model.router.proj.weight, std=1.0)
    model(X, mode="sample").balance_loss().backward()
    assert model.router.proj.weight.grad.abs().sum() > 0


def _config(steps: int = 6, depth_target: float = 0.0, penalty_kp: float = 0.0) -> RunConfig:
    return RunConfig(
        name="tiny-radial",
        kind="radial_scratch",
        data=DataSection(seq_len=16, batch=2, vocab=64),
        model=ModelSection(hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2, ffn_size=48),
        train=TrainSection(
            steps=steps,
            lr=1e-2,
            warmup_steps=1,
            compute_penalty=0.01,
            router_warmup_steps=2,
            balance_weight=0.1,
            eval_tokens=64,
            checkpoint_every=2,
            depth_target=depth_target,
            penalty_kp=penalty_kp,
        ),
        radial=RadialSection(max_steps=6, max_passes=2),
    )


@pytest.mark.parametrize(("depth_target", "penalty_kp"), [(0.0, 0.0), (3.0, 0.0), (3.0, 2.0)])
def test_an_interrupted_scratch_run_resumes_to_the_same_model(
    tmp_path, monkeypatch, synthetic_text, depth_target, penalty_kp
):
    cfg = _config(depth_target=depth_target, penalty_kp=penalty_kp)
    whole = loop.train_scratch(cfg, tmp_path / "whole")
    real, written = loop._atomic, []

    def stop_after_first_checkpoint(path, write):
        real(path, write)
        written.append(path.name)
        if path.name == "checkpoint.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_atomic", stop_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        loop.train_scratch(cfg, tmp_path / "cut")
    monkeypatch.setattr(loop, "_atomic", real)
    assert written == ["checkpoint.pt"]
    resumed = loop.train_scratch(cfg, tmp_path / "cut")
    assert resumed["val"] == whole["val"]
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "cut" / "log.csv").read_text().splitlines()
    penalty = ["penalty"] if depth_target else []
    assert log[0].split(",") == ["step", "elapsed_s", "lm", "depth", *penalty, "balance"] and len(log) == 7
    if depth_target:  # the multiplier moved after the warm-up, by the depth's distance from its target
        values = [float(row.split(",")[4]) for row in log[1:]]
        assert values[:3] == [0.01] * 3 and values[3] != values[2]


def test_the_depth_penalty_is_integral_plus_proportional_control(tmp_path, synthetic_text):
    """The penalty each step's router sees: the multiplier (moved by penalty_lr x error after every
    step past the warm-up) plus penalty_kp x the previous step's error, error = (depth - target) / L."""
    cfg = _config(steps=8, depth_target=3.0, penalty_kp=2.0)
    loop.train_scratch(cfg, tmp_path / "run")
    rows = [line.split(",") for line in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    depth, seen = [float(r[3]) for r in rows], [float(r[4]) for r in rows]
    t, layers = cfg.train, cfg.model.num_layers
    integral, error, expected = t.compute_penalty, 0.0, []
    for step, d in enumerate(depth):
        expected.append(
            integral + t.penalty_kp * error if step >= t.router_warmup_steps else t.compute_penalty
        )
        if step >= t.router_warmup_steps:
            error = (d - t.depth_target) / layers
            integral += t.penalty_lr * error
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert any(abs(d - t.depth_target) > 0 for d in depth[t.router_warmup_steps :])  # not vacuous


def test_scratch_evaluation_samples_every_source_in_proportion_with_an_interval(tmp_path, synthetic_text):
    cfg = _config(steps=3)
    val = loop.train_scratch(cfg, tmp_path / "run")["val"]
    names = sorted(loop.corpus.SOURCES)
    assert val["windows"] == 4 and val["tokens"] == 4 * 15  # eval_tokens 64 in windows of 16
    assert val["perplexity_lo"] <= val["perplexity"] <= val["perplexity_hi"]
    per_source = [val[f"perplexity[{n}]"] for n in names]
    assert all(np.isfinite(per_source)) and min(per_source) <= val["perplexity"] <= max(per_source)


def test_warmup_visits_draw_layer_zero_then_an_ordered_subset_each_step(synthetic_text):
    cfg = _config()
    cfg = RunConfig(
        name=cfg.name,
        kind=cfg.kind,
        seed=0,
        data=cfg.data,
        model=ModelSection(hidden_size=32, num_layers=8, num_heads=4, num_kv_heads=2, ffn_size=48),
        train=TrainSection(steps=4, router_warmup_steps=4, warmup_visits=3, eval_tokens=64),
        radial=RadialSection(max_steps=6, max_passes=2),
    )
    model = loop.build_model(cfg, 64)
    seen = []
    real = model.forward

    def spy(x, routes=None, **kw):
        seen.append(routes[0, 0].clone())
        return real(x, routes=routes, **kw)

    model.forward = spy
    for step in range(4):
        _, info = loop.step_loss(model, torch.zeros((2, 16), dtype=torch.long), step, cfg)
        assert info["depth"] == 3.0  # layer 0 and two more
    for route in seen:
        chosen = route[route >= 0]
        assert len(chosen) == 2 and bool((chosen[1:] > chosen[:-1]).all()) and int(chosen.min()) >= 1
    assert len({tuple(r.tolist()) for r in seen}) > 1  # a fresh subset every step
    again = []
    model.forward = lambda x, routes=None, **kw: (
        again.append(routes[0, 0].clone()) or real(x, routes=routes, **kw)
    )
    loop.step_loss(model, torch.zeros((2, 16), dtype=torch.long), 0, cfg)
    assert torch.equal(again[0], seen[0])  # drawn from (seed, step)


def _dense(name: str, train: TrainSection) -> RunConfig:
    """A tiny dense scratch run."""
    return RunConfig(
        name=name,
        kind="dense_scratch",
        seed=0,
        data=DataSection(seq_len=16, batch=2, vocab=64),
        model=ModelSection(hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2, ffn_size=48),
        train=train,
    )


def test_the_exit_loss_trains_the_shared_head_on_every_layer():
    cfg = _dense("tiny-dense", TrainSection(steps=1, exit_loss_weight=0.5, eval_tokens=64))
    torch.manual_seed(0)
    model = loop.build_model(cfg, 64)
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 64, size=(2, 16)).astype(np.int64))
    states = model.hidden_states(x)
    for step in range(5):  # exits after layers 1, 2, 3 in turn (the last layer's is the LM loss)
        loss, info = loop.step_loss(model, x, step, cfg)
        layer = 1 + step % 3
        assert info["exit_layer"] == layer
        assert info["exit_lm"] == pytest.approx(
            lm_loss(model.lm_head(model.norm(states[layer])), x).item(), rel=1e-5
        )
        assert info["lm"] == pytest.approx(lm_loss(model(x), x).item(), rel=1e-5)
        assert loss.item() == pytest.approx(info["lm"] + 0.5 * info["exit_lm"], rel=1e-5)
    loss.backward()
    assert model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0
    plain = _dense(cfg.name, TrainSection())
    assert "exit_lm" not in loop.step_loss(model, x, 0, plain)[1]


def test_capture_draws_proportional_test_windows_and_says_so(tmp_path, synthetic_text):
    from radsim.cli.main import main
    from radsim.routes.trace import read_trace

    loop.train_scratch(_config(steps=3), tmp_path / "run")
    out = tmp_path / "traces" / "tiny.parquet"
    main(
        ["capture", "--run", str(tmp_path / "run"), "--windows", "proportional", "--tokens", "90"]
        + ["--seq-len", "16", "--seed", "3", "--threads", "1", "--out", str(out)]
    )
    trace = read_trace(out)
    windows, sources, names = loop.validation_sample(16, 90 + 15, 3, None, split="test")
    assert trace.meta["data"]["tokens"] == windows.size == 6 * 16
    assert "in proportion" in trace.meta["data"]["windows"] and "seed 3" in trace.meta["data"]["windows"]
    assert sorted(set(sources.tolist())) == [0, 1, 2]  # every source
    assert trace.visits["seq"].nunique() == len(windows)
    assert "in proportion to its tokens" in out.with_suffix(".md").read_text()


def test_an_early_exit_capture_of_a_run_trained_for_exits_says_so(tmp_path, synthetic_text):
    from radsim.cli.main import main
    from radsim.routes.trace import read_trace

    train = TrainSection(steps=3, lr=1e-2, warmup_steps=1, exit_loss_weight=1.0, eval_tokens=64)
    cfg = _dense("tiny-exit", train)
    loop.train_scratch(cfg, tmp_path / "run")
    out = tmp_path / "exit.parquet"
    argv = ["capture", "--run", str(tmp_path / "run"), "--early-exit", "0.05", "--tokens", "60"]
    assert main([*argv, "--seq-len", "16", "--out", str(out)]) == 0
    model = read_trace(out).meta["model"]
    assert model["kind"] == "early_exit" and model["exit_loss_weight"] == 1.0
    assert "rotational early-exit loss (weight 1)" in model["exit_rule"]
