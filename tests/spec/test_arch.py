"""Architecture specs: every file loads, parameter counts match the published model sizes."""

from __future__ import annotations

import pytest

from radsim.errors import ConfigError
from radsim.spec.arch import list_archs, load_arch

# Parameter counts reported by the model cards / papers.
PUBLISHED_PARAMS = {
    "llama2-7b": 6.74e9,
    "llama2-13b": 13.02e9,
    "llama2-70b": 68.98e9,
    "llama3.1-8b": 8.03e9,
    "llama3.1-70b": 70.55e9,
    "mistral-7b": 7.24e9,
    "opt-125m": 125.2e6,
    "opt-350m": 331.2e6,
    "opt-1.3b": 1.316e9,
    "opt-66b": 65.7e9,
    "smollm2-135m": 134.5e6,
}


def test_required_archs_are_shipped():
    names = set(list_archs())
    assert set(PUBLISHED_PARAMS) <= names
    assert {f"opt-{s}" for s in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b")} <= names


@pytest.mark.parametrize("name", list_archs())
def test_every_arch_loads(name):
    arch = load_arch(name)
    assert arch.name == name and arch.source.startswith("https://")
    assert arch.num_heads * arch.head_dim >= arch.hidden_size // 2


@pytest.mark.parametrize(("name", "params"), PUBLISHED_PARAMS.items())
def test_param_counts_match_published(name, params):
    assert load_arch(name).total_params == pytest.approx(params, rel=0.005)


def test_with_layers_rescales_depth_only():
    base = load_arch("llama2-7b")
    deeper = base.with_layers(48)
    assert deeper.num_layers == 48 and deeper.hidden_size == base.hidden_size
    assert deeper.total_params - base.total_params == 16 * base.layer_params


def test_unknown_arch_lists_valid():
    with pytest.raises(ConfigError, match="valid names: .*llama2-7b"):
        load_arch("llama9")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('ffn_kind = "swiglu"', 'ffn_kind = "mish"'), "'ffn_kind' is 'mish'; allowed: swiglu, relu, gelu"),
        (("num_layers = 30", "num_layers = 0"), "'num_layers' must be positive"),
        (("num_layers = 30", "num_layers = 3.5"), "'num_layers' must be an integer"),
        (("num_kv_heads = 3", "num_kv_heads = 2"), "multiple of 'num_kv_heads'"),
        (("vocab_size = 49152\n", ""), "missing required key 'vocab_size'"),
        (("linear_bias = false", "linear_bias = false\nrope_theta = 1"), "unknown key(s) ['rope_theta']"),
    ],
)
def test_bad_arch_file_names_file_and_field(tmp_path, edit, message):
    from radsim.spec.arch import ARCH_DIR

    text = (ARCH_DIR / "smollm2-135m.toml").read_text().replace(*edit)
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_arch(path)
    assert "broken.toml" in str(info.value) and message in str(info.value)


def test_finedeep_scratch_params_counted_by_hand():
    arch = load_arch("finedeep-scratch")
    assert (arch.ffn_sublayers, arch.ffn_experts_per_sublayer, arch.ffn_expert_size) == (2, 4, 64)
    d, e = 192, 64
    experts = 8 * 3 * d * e  # 8 SwiGLU experts of 64: the dense MLP's 3 x 192 x 512 weights
    routers = 2 * d * 4  # Linear(d, K) per sub-layer
    norms = 1 * d  # the second sub-layer normalises its input
    assert arch.mlp_params == experts + routers + norms == 296_640
    attn = d * (192 + 2 * 64) + 192 * d
    assert arch.layer_params == attn + arch.mlp_params + 2 * d
    assert arch.total_params == 8 * arch.layer_params + 8192 * d + d == 4_735_680  # tied head


def test_finedeep_8b_matches_dense_parameters_and_dlo_adds_layers():
    dense = load_arch("llama3.1-8b")
    finedeep = load_arch("llama3.1-8b-finedeep")
    assert finedeep.ffn_expert_size * 8 == dense.ffn_size
    assert finedeep.total_params - dense.total_params == 32 * (2 * 4096 * 4 + 4096)
    assert finedeep.total_params == pytest.approx(dense.total_params, rel=5e-4)
    dlo = load_arch("llama3.1-8b-dlo")
    assert dlo.num_layers == 40 and dlo.total_params - dense.total_params == 8 * dense.layer_params
    assert dlo.with_layers(32).total_params == dense.total_params
    small = load_arch("smollm2-135m-dlo")
    assert small.total_params - load_arch("smollm2-135m").total_params == 8 * small.layer_params


def test_dense_default_is_one_expert():
    arch = load_arch("llama3.1-8b")
    assert (arch.ffn_sublayers, arch.ffn_experts_per_sublayer, arch.ffn_expert_size) == (1, 1, 14336)
    assert not arch.finedeep and arch.mlp_params == 3 * 4096 * 14336


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("ffn_sublayers = 0", "'ffn_sublayers' must be positive"),
        ("ffn_experts_per_sublayer = 2.0", "'ffn_experts_per_sublayer' must be an integer"),
        (
            "ffn_sublayers = 5",
            "ffn_size (1536) must be a multiple of ffn_sublayers x ffn_experts_per_sublayer (5)",
        ),
        (
            "ffn_sublayers = 4\nffn_experts_per_sublayer = 4\nffn_expert_size = 100",
            "ffn_size (1536) must equal ffn_sublayers x ffn_experts_per_sublayer x ffn_expert_size",
        ),
        ("ffn_experts = 4", "unknown key(s) ['ffn_experts']"),
    ],
)
def test_bad_finedeep_keys_name_file_and_field(tmp_path, edit, message):
    from radsim.spec.arch import ARCH_DIR

    text = (ARCH_DIR / "smollm2-135m.toml").read_text() + edit + "\n"
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_arch(path)
    assert "broken.toml" in str(info.value) and message in str(info.value)
