"""Architecture specs: every file loads, parameter counts match the published model sizes."""

from __future__ import annotations

import pytest

from radsim.arch import list_archs, load_arch
from radsim.errors import ConfigError

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
    from radsim.arch import ARCH_DIR

    text = (ARCH_DIR / "smollm2-135m.toml").read_text().replace(*edit)
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_arch(path)
    assert "broken.toml" in str(info.value) and message in str(info.value)
