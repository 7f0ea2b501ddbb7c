"""Engine profiles: every shipped file loads with a source per figure; bad files name field and values."""

from __future__ import annotations

import pytest

from radsim.errors import ConfigError
from radsim.spec.engine import ENGINE_DIR, list_engines, load_engine, parse_engine


def test_shipped_profiles_load_with_sources():
    names = list_engines()
    assert {"ideal", "eager", "graphs", "vllm", "sglang", "trtllm"} <= set(names)
    for name in names:
        profile = load_engine(name)
        assert profile.description
        assert set(profile.sources) == set(profile.summary()) - {"name", "stem", "description"}
        assert all(s.strip() for s in profile.sources.values())


def test_ideal_adds_nothing_and_the_others_do():
    assert load_engine("ideal").adds_nothing
    assert not any(load_engine(n).adds_nothing for n in list_engines() if n != "ideal")


def test_graph_free_profiles_capture_nothing():
    eager = load_engine("eager")
    assert not eager.decode_graphs and not eager.graphed(1, True)
    vllm = load_engine("vllm")
    assert vllm.graphed(1, True) and vllm.graphed(512, True)
    assert not vllm.graphed(513, True) and not vllm.graphed(8, False)


def _raw(**changes):
    import tomllib

    raw = tomllib.loads((ENGINE_DIR / "vllm.toml").read_text())
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(mixed_launches={"value": "lazy", "source": "x"}), "allowed: eager, piecewise"),
        (dict(allreduce={"value": "mpi", "source": "x"}), "allowed: custom, nccl"),
        (dict(host_launch_s={"value": -1.0, "source": "x"}), "finite number >= 0"),
        (dict(host_launch_s=5e-6), "inline table"),
        (dict(overlap={"value": 1, "source": "x"}), "true or false"),
        (dict(graph_max_batch={"value": 0, "source": "x"}), "graph_max_batch"),
        (dict(speed={"value": 1, "source": "x"}), "unknown key"),
        (dict(host_sequence_s={"value": 1e-6, "source": " "}), "source"),
    ],
)
def test_bad_profiles_name_the_file_and_field(tmp_path, changes, message):
    path = tmp_path / "mine.toml"
    with pytest.raises(ConfigError, match=message) as info:
        parse_engine(_raw(**changes), path)
    assert str(path) in str(info.value)


def test_unknown_engine_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="unknown engine 'tgi'; allowed: eager, graphs, ideal"):
        load_engine("tgi")


def test_a_profile_file_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text((ENGINE_DIR / "eager.toml").read_text())
    assert load_engine(str(path)).stem == "mine"
