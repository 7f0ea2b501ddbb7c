"""The scenario's inputs: one table behind the CLI and the studies, checks that name the field, stable point ids."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from radsim.cli.main import _parser, main
from radsim.errors import ConfigError
from radsim.scenario.schema import INPUTS, SCENARIO_FIELDS, Scenario, default_of, scenario_from
from radsim.study.load import expand, load_study

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_studies_keep_their_point_ids():
    # ids of every point of every shipped study, as the release before the scenario computed them
    stored = json.loads((ROOT / "tests/data/point_ids.json").read_text())
    for study, ids in stored.items():
        now = [p["point_id"] for p in expand(load_study(ROOT / study))]
        assert now[: len(ids)] == ids, study  # grids added since keep the old points' ids


def test_cli_flags_are_the_inputs_with_their_defaults():
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for cmd in ("estimate", "simulate"):
        command = sub.choices[cmd]
        dests = {a.dest: a for a in command._actions}
        read = [n for n in SCENARIO_FIELDS if cmd in INPUTS[n].commands and n not in ("command", "label")]
        assert set(read) <= set(dests), set(read) - set(dests)
        for name in read:
            action = dests[name]
            if not INPUTS[name].required:
                assert action.default == default_of(name), name
                assert "default" in action.help, name
        # parsed with only the required flags, the CLI builds the scenario of the defaults
        args = parser.parse_args([cmd, "--hw", "h100_sxm", "--arch", "llama3.1-8b"])
        from radsim.cli.scenario_args import scenario_from_args

        assert scenario_from_args(args, cmd) == Scenario(command=cmd, hw="h100_sxm", arch="llama3.1-8b")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rate_per_s": math.nan}, "'rate_per_s' must be a finite number"),
        ({"duration_s": math.inf}, "'duration_s' must be a finite number"),
        ({"burstiness": 0.0}, "'burstiness' must be > 0"),
        ({"dtype": "int4"}, "'dtype' is 'int4'; allowed: 'fp32', 'fp16', 'bf16', 'fp8'"),
        ({"depth_distribution": "uniform"}, "allowed: 'exact', 'bernoulli'"),
        ({"arrival": "poisson", "batch": 8}, "runs up to 'max_batch'"),
        ({"arrival": "replay"}, "needs 'replay'"),
        ({"electricity_usd_per_kWh": -1.0}, "must be >= 0"),
    ],
)
def test_bad_inputs_name_the_field_and_what_is_allowed(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scenario_from({"command": "simulate", "hw": "h100_sxm", "arch": "llama3.1-8b", **values}, "here")


@pytest.mark.parametrize("value", ["estimate", "simulate", "capacity"])
def test_the_legacy_engine_key_says_how_it_is_written_now(value):
    """`engine` named the command before it came to name the serving engine profile."""
    values = {"engine": value, "hw": "h100_sxm", "arch": "llama3.1-8b"}
    message = f"""here: 'engine' = "{value}" is now written 'command = "{value}"' ('engine' names the serving engine profile)"""
    with pytest.raises(ConfigError) as raised:
        scenario_from(values, "here")
    assert str(raised.value) == message
    with pytest.raises(ConfigError, match="is now written 'command"):
        scenario_from({**values, "command": value}, "here")  # also beside the new key


def test_the_command_is_hashed_under_its_legacy_name():
    """A point keeps its id across the rename (the canonical JSON says `engine`)."""
    import hashlib

    s = Scenario(command="simulate", hw="h100_sxm", arch="llama3.1-8b")
    values = {k: v for k, v in s.as_dict().items() if not INPUTS[k].later}  # later inputs at defaults
    values["engine"] = values.pop("command")
    values["batch"] = s.max_batch  # a serving run's maximum batch, under its first name
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    assert s.point_id == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_nan_on_the_command_line_is_a_clean_error(capsys):
    assert main(["simulate", "--hw", "h100_sxm", "--arch", "llama3.1-8b", "--rate", "nan"]) == 2
    assert "'rate_per_s' must be a finite number" in capsys.readouterr().err


def test_model_configs_default_as_the_scenario():
    """The configs the scenario builds keep, where they have defaults, the scenario's own."""
    from dataclasses import fields as fields_of

    from radsim.cost.estimate import Workload
    from radsim.cost.layer import Execution
    from radsim.cost.money import Pricing
    from radsim.routes.synthetic import parametric
    from radsim.sim.engine import SimConfig
    from radsim.sim.metrics import SLO
    from radsim.sim.scheduler import SchedulerConfig
    from radsim.sim.workload import WorkloadConfig

    def defaults(cls) -> dict:
        return {f.name: f.default for f in fields_of(cls)}

    workload = WorkloadConfig()
    pairs = {
        "dtype": defaults(Execution)["dtype"],
        "tp": defaults(Execution)["tp"],
        "expert_launch": defaults(Execution)["expert_launch"],
        "max_batch": defaults(SchedulerConfig)["max_batch"],
        "prefill_chunk": defaults(SchedulerConfig)["max_tokens_per_iteration"],
        "chunked_prefill": defaults(SchedulerConfig)["chunked_prefill"],
        "memory_fraction": defaults(SchedulerConfig)["memory_fraction"],
        "execution": defaults(SimConfig)["execution_policy"],
        "replicas": defaults(SimConfig)["replicas"],
        "arrival": workload.arrival,
        "rate_per_s": workload.rate_per_s,
        "duration_s": workload.duration_s,
        "burstiness": workload.burstiness,
        "prompt_tokens": workload.prompt.mean,
        "output_tokens": workload.output.mean,
        "lengths": workload.prompt.kind,
        "length_cv": workload.prompt.cv,
        "depth_fraction": defaults(Workload)["depth_fraction"],
        "depth_distribution": defaults(Workload)["depth_distribution"],
        "slo_ttft_s": defaults(SLO)["ttft_s"],
        "slo_tpot_s": defaults(SLO)["tpot_s"],
        "electricity_usd_per_kWh": defaults(Pricing)["electricity_usd_per_kWh"],
        "seed": defaults(SimConfig)["seed"],
    }
    for name, value in pairs.items():
        assert value == default_of(name), name
    assert Workload(1, 1, 1).prefill_chunk == default_of("prefill_chunk")
    assert parametric(8, 0.5).source.startswith(f"parametric({default_of('depth_distribution')} ")
