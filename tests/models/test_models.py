"""Routing mechanics of the PyTorch models on tiny configs (seconds in all)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from radsim.models.early_exit import EarlyExit, EarlyExitConfig  # noqa: E402
from radsim.models.llama import Llama, LlamaConfig  # noqa: E402
from radsim.models.mod import MoD, MoDConfig  # noqa: E402
from radsim.models.radial import EXIT, Radial, RadialConfig  # noqa: E402

TINY = LlamaConfig(
    vocab_size=97, hidden_size=32, num_layers=5, num_heads=4, num_kv_heads=2, ffn_size=48, max_positions=64
)


def _radial(kv_policy="none", max_passes=1, max_steps=8, seed=0) -> Radial:
    torch.manual_seed(seed)
    model = Radial(RadialConfig(base=TINY, max_steps=max_steps, max_passes=max_passes, kv_policy=kv_policy))
    return model.eval()


def _idx(b=3, t=12, seed=1):
    return torch.randint(0, TINY.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


def _random_routes(b, t, steps, layers, passes, seed=2):
    """Valid routes: each choice is a later layer, an earlier one (new pass, if allowed) or exit."""
    gen = torch.Generator().manual_seed(seed)
    routes = torch.full((b, t, steps), EXIT, dtype=torch.long)
    for i in range(b):
        for j in range(t):
            layer, p = 0, 0
            for s in range(steps - 1):
                choices = [x for x in range(layers) if x > layer or p + 1 < passes] + [EXIT]
                pick = choices[int(torch.randint(len(choices), (1,), generator=gen))]
                routes[i, j, s] = pick
                if pick == EXIT:
                    break
                p, layer = (p + 1 if pick <= layer else p), pick
    return routes


def test_forced_sequential_route_reproduces_the_sequential_model():
    model = _radial(max_steps=TINY.num_layers)
    idx = _idx()
    route = torch.tensor([1, 2, 3, 4, EXIT])
    out = model(idx, routes=route.expand(*idx.shape, 5))
    with torch.no_grad():
        assert torch.equal(out.logits, model.model(idx))
    assert (out.depth == TINY.num_layers).all()


def _reference_decode(model: Radial, idx, routes, kv_policy):
    """Token-by-token decoding with one KV cache per (sequence, pass, layer) slot, no gathering."""
    m, cfg = model.model, model.cfg
    logits = torch.zeros(*idx.shape, TINY.vocab_size)
    for b in range(idx.shape[0]):
        cache: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for t in range(idx.shape[1]):
            pos = torch.tensor([[t]])
            h = m.embed_tokens(idx[b, t]).view(1, 1, -1)
            layer, p, step = cfg.first_layer, 0, 0
            pass0_visits = []
            while True:
                block = m.layers[layer]
                x = block.input_layernorm(h)
                cache.setdefault((p, layer), []).append(_kv(block, x, pos, m.rope))
                h = h + _attend(block, x, pos, cache[(p, layer)], m.rope)
                h = h + block.mlp(block.post_attention_layernorm(h))
                if p == 0:
                    pass0_visits.append((layer, h))
                step += 1
                nxt = int(routes[b, t, step - 1]) if step < cfg.max_steps else EXIT
                if kv_policy == "copy" and p == 0:
                    end = nxt if (nxt != EXIT and nxt > layer) else TINY.num_layers
                    for skipped in range(layer + 1, end):  # skipped in pass 0: copy from current h
                        sb = m.layers[skipped]
                        cache.setdefault((0, skipped), []).append(_kv(sb, sb.input_layernorm(h), pos, m.rope))
                if nxt == EXIT:
                    break
                p, layer = (p + 1 if nxt <= layer else p), nxt
            logits[b, t] = m.lm_head(m.norm(h)).view(-1)
    return logits


def _kv(block, x, pos, rope):
    attn = block.self_attn
    k = attn.k_proj(x).view(1, 1, attn.kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(1, 1, attn.kv_heads, attn.head_dim).transpose(1, 2)
    return rope(k, pos), v


def _attend(block, x, pos, entries, rope):
    attn = block.self_attn
    q = rope(attn.q_proj(x).view(1, 1, attn.heads, attn.head_dim).transpose(1, 2), pos)
    k = torch.cat([e[0] for e in entries], dim=2).repeat_interleave(attn.heads // attn.kv_heads, dim=1)
    v = torch.cat([e[1] for e in entries], dim=2).repeat_interleave(attn.heads // attn.kv_heads, dim=1)
    w = torch.softmax(q @ k.transpose(-1, -2) / attn.head_dim**0.5, dim=-1)
    return attn.o_proj((w @ v).transpose(1, 2).reshape(1, 1, -1))


@pytest.mark.parametrize(("kv_policy", "passes"), [("none", 1), ("copy", 1), ("none", 2)])
def test_gathered_execution_equals_token_by_token_decoding(kv_policy, passes):
    model = _radial(kv_policy=kv_policy, max_passes=passes, max_steps=7)
    idx = _idx(b=2, t=9)
    routes = _random_routes(2, 9, 7, TINY.num_layers, passes)
    with torch.no_grad():
        parallel = model(idx, routes=routes).logits
        reference = _reference_decode(model, idx, routes, kv_policy)
    torch.testing.assert_close(parallel, reference, atol=1e-5, rtol=1e-4)


def test_router_routes_are_causal():
    model = _radial(max_passes=2, max_steps=8)
    torch.nn.init.normal_(model.router.proj.weight, std=1.0)  # make the router decide things
    idx = _idx(b=2, t=12)
    with torch.no_grad():
        full = model(idx)
        prefix = model(idx[:, :7])
    torch.testing.assert_close(full.logits[:, :7], prefix.logits, atol=1e-5, rtol=1e-4)
    assert torch.equal(full.depth[:, :7], prefix.depth)


@pytest.mark.parametrize("max_steps", [1, 3, 6])
def test_step_budget_holds(max_steps):
    # as many passes as steps, so that a token can always go on: only the budget stops it
    model = _radial(max_passes=max_steps, max_steps=max_steps)
    torch.nn.init.zeros_(model.router.proj.weight)
    with torch.no_grad():
        model.router.proj.bias[-1] = -10.0  # never choose to exit: only the budget stops tokens
        out = model(_idx(b=4, t=16), mode="sample", record=True)
    assert (out.depth == max_steps).all()
    visits = sum(len(v.stats.tokens) for v in out.visits)
    assert visits == int(out.depth.sum())
    assert all((v.step < max_steps).all() for v in out.visits)
    fewer_passes = _radial(max_passes=2, max_steps=max_steps)
    with torch.no_grad():
        assert (fewer_passes(_idx(b=4, t=16), mode="sample").depth <= max_steps).all()


def test_recorded_visits_are_consistent():
    model = _radial(max_passes=2, max_steps=8)
    torch.nn.init.normal_(model.router.proj.weight, std=1.0)
    with torch.no_grad():
        out = model(_idx(), record=True)
    per_token = torch.zeros(out.depth.numel(), dtype=torch.long)
    for v in out.visits:
        per_token.index_add_(0, v.stats.tokens, torch.ones_like(v.stats.tokens))
        assert ((v.prob > 0) & (v.prob <= 1)).all() and (v.stats.attn_ratio >= 0).all()
    assert torch.equal(per_token, out.depth.view(-1))


def test_straight_through_reaches_the_router():
    model = _radial(max_passes=1, max_steps=5).train()
    out = model(_idx(), mode="sample", straight_through=True)
    (out.logits.float().pow(2).mean() + out.log_prob.mean()).backward()
    assert model.router.proj.weight.grad is not None and model.router.proj.weight.grad.abs().sum() > 0


def test_mod_capacity_and_causal_predictor():
    torch.manual_seed(0)
    model = MoD(MoDConfig(base=TINY, capacity=0.25, every=2)).eval()
    idx = _idx(b=2, t=16)
    with torch.no_grad():
        out = model(idx)
        for i, visit in enumerate(out.visits):
            expected = 4 if model.cfg.routed(i) else 16
            assert (visit.sum(dim=1) == expected).all()
        causal_full, causal_prefix = model(idx, causal=True), model(idx[:, :9], causal=True)
    torch.testing.assert_close(causal_full.logits[:, :9], causal_prefix.logits, atol=1e-5, rtol=1e-4)
    assert out.predictor_loss > 0


def test_early_exit_threshold_extremes():
    torch.manual_seed(0)
    base = Llama(TINY).eval()
    idx = _idx()
    never = EarlyExit(base, EarlyExitConfig(threshold=1.0))(idx)
    with torch.no_grad():
        torch.testing.assert_close(never.logits, base(idx))
    assert (never.depth == TINY.num_layers).all()
    always = EarlyExit(base, EarlyExitConfig(threshold=1e-6, min_layer=1))(idx)
    assert (always.depth == 2).all()


def test_config_from_a_registered_arch():
    from radsim.spec.arch import load_arch

    cfg = LlamaConfig.from_arch(load_arch("llama3.1-8b"), rope_theta=500000.0, norm_eps=1e-5)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_kv_heads, cfg.ffn_size) == (4096, 32, 8, 14336)
    assert cfg.head_dim == 128 and not cfg.tied_embeddings
    with pytest.raises(ValueError, match="not a Llama-style decoder"):
        LlamaConfig.from_arch(load_arch("opt-125m"), rope_theta=1e4, norm_eps=1e-5)
