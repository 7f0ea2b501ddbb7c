"""Capacity under SLOs: the rate found meets them, 1.5 times it does not, tighter SLOs never raise it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from radsim.cli.main import main
from radsim.errors import ConfigError
from radsim.scenario.capacity import CapacitySearch, find_capacity, meets_slo
from radsim.scenario.run import run_simulation
from radsim.scenario.schema import Scenario

BASE = Scenario(
    command="capacity",
    hw="h100_sxm",
    arch="llama3.1-8b",
    prompt_tokens=256,
    output_tokens=64,
    duration_s=15.0,
    slo_ttft_s=1.0,
    slo_tpot_s=0.05,
)


@pytest.fixture(scope="module")
def capacity() -> dict:
    found = find_capacity(BASE, CapacitySearch(start_rate_per_s=8.0))
    found.pop("rate_run")
    return found


def test_the_rate_found_meets_the_slo_and_one_and_a_half_times_it_does_not(capacity):
    rate = capacity["max_rate_per_s"]
    assert rate > 0 and capacity["failing_rate_per_s"] <= rate * 1.03
    _, at = run_simulation(replace(BASE, command="simulate", rate_per_s=rate))
    assert (
        meets_slo(at, BASE, 90)
        and at["ttft_s_p90"] <= BASE.slo_ttft_s
        and at["tpot_s_p90"] <= BASE.slo_tpot_s
    )
    _, above = run_simulation(replace(BASE, command="simulate", rate_per_s=1.5 * rate))
    assert not meets_slo(above, BASE, 90)
    assert capacity["cost_usd_per_Mtok"] == pytest.approx(at["cost_usd_per_Mtok"])


def test_tightening_an_slo_never_raises_the_capacity(capacity):
    search = CapacitySearch(start_rate_per_s=8.0)
    tighter_ttft = find_capacity(replace(BASE, slo_ttft_s=0.3), search)["max_rate_per_s"]
    tighter_pct = find_capacity(replace(BASE, slo_percentile=99), search)["max_rate_per_s"]
    assert tighter_pct <= capacity["max_rate_per_s"]
    tighter_tpot = find_capacity(replace(BASE, slo_tpot_s=0.02), search)["max_rate_per_s"]
    assert tighter_ttft <= capacity["max_rate_per_s"] and tighter_tpot <= capacity["max_rate_per_s"]


def test_the_search_is_deterministic_and_refuses_what_it_cannot_search(capacity):
    again = find_capacity(BASE, CapacitySearch(start_rate_per_s=8.0))
    again.pop("rate_run")
    assert again == capacity
    with pytest.raises(ConfigError, match="poisson or gamma"):
        replace(BASE, arrival="batch")
    with pytest.raises(ConfigError, match="'slo_percentile' is 75"):
        replace(BASE, slo_percentile=75)


def test_cli_prints_one_json_object_and_a_deployment(capsys):
    args = [
        "capacity",
        "--hw",
        "h100_sxm",
        "--arch",
        "llama3.1-8b",
        "--prompt-tokens",
        "256",
        "--output-tokens",
        "64",
    ]
    args += [
        "--duration",
        "10",
        "--slo-ttft",
        "1.0",
        "--slo-tpot",
        "0.05",
        "--start-rate",
        "8",
        "--tolerance",
        "0.05",
    ]
    assert main([*args, "--target-rate", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["max_rate_per_s"] > 0 and out["deployment"]["cheapest"]["replicas"] >= 1
    assert out["deployment"]["cheapest"]["replicas"] * out["max_rate_per_s"] >= 100


def test_probes_list_every_rate_simulated_and_bracket_the_capacity(capacity):
    probes = capacity["probes"]
    rates = [p["rate_per_s"] for p in probes]
    assert rates == sorted(rates) and len(rates) == capacity["simulations"]
    by_rate = {p["rate_per_s"]: p for p in probes}
    assert by_rate[capacity["max_rate_per_s"]]["meets_slo"]
    assert not by_rate[capacity["failing_rate_per_s"]]["meets_slo"]
    assert by_rate[capacity["max_rate_per_s"]]["ttft_s_p90"] == capacity["ttft_s_p90"]
    seen = []
    found = find_capacity(
        BASE, CapacitySearch(start_rate_per_s=8.0), on_probe=lambda r, ok: seen.append((r, ok))
    )
    assert sorted(seen) == [(p["rate_per_s"], p["meets_slo"]) for p in probes] and found["probes"] == probes
