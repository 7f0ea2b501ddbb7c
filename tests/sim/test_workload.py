"""Workloads: arrival processes, length distributions, CSV replay."""

from __future__ import annotations

import numpy as np
import pytest

from radsim.errors import ConfigError
from radsim.sim.workload import LengthDist, WorkloadConfig, generate, read_replay


def test_poisson_rate_and_determinism():
    cfg = WorkloadConfig(rate_per_s=50, duration_s=200, seed=3)
    requests = generate(cfg)
    assert len(requests) == pytest.approx(10_000, rel=0.05)
    assert all(0 <= r.arrival_at < 200 for r in requests)
    assert requests == generate(cfg)
    gaps = np.diff([r.arrival_at for r in requests])
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)


def test_gamma_is_burstier_with_the_same_rate():
    requests = generate(WorkloadConfig(arrival="gamma", rate_per_s=50, duration_s=200, burstiness=3.0))
    gaps = np.diff([r.arrival_at for r in requests])
    assert len(requests) == pytest.approx(10_000, rel=0.15)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.15)


def test_length_distributions():
    rng = np.random.default_rng(0)
    assert (LengthDist("fixed", mean=7).sample(rng, 5) == 7).all()
    uniform = LengthDist("uniform", low=3, high=5).sample(rng, 1000)
    assert set(uniform) == {3, 4, 5}
    lognormal = LengthDist("lognormal", mean=300, cv=0.5, max_tokens=100_000).sample(rng, 20_000)
    assert lognormal.mean() == pytest.approx(300, rel=0.03)
    assert LengthDist("lognormal", mean=300, cv=2, max_tokens=400).sample(rng, 1000).max() <= 400


def test_replay(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("prompt_tokens,output_tokens,arrival_s\n10,5,2.5\n20,3,0.5\n")
    requests = read_replay(path)
    assert [(r.arrival_at, r.prompt_tokens, r.output_tokens) for r in requests] == [
        (0.5, 20, 3),
        (2.5, 10, 5),
    ]
    assert generate(WorkloadConfig(arrival="replay", replay_csv=str(path))) == requests


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "needs columns arrival_s, prompt_tokens, output_tokens"),
        ("arrival_s,prompt_tokens,output_tokens\nsoon,1,1\n", ":2:"),
        ("arrival_s,prompt_tokens,output_tokens\n1,0,1\n", "token counts >= 1"),
    ],
)
def test_bad_replay_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_replay(path)
    assert "bad.csv" in str(info.value) and message in str(info.value)


def test_bad_config():
    with pytest.raises(ConfigError, match="allowed: poisson, gamma, replay"):
        WorkloadConfig(arrival="weibull")
    with pytest.raises(ConfigError, match="--rate"):
        WorkloadConfig(rate_per_s=0)
