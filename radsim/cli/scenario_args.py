"""Command-line flags of a scenario, generated from its one table of inputs (`radsim.scenario.schema`).

Each input a command reads becomes one flag, `--name-with-dashes`, with the input's type, default,
allowed values and help; older spellings stay as aliases. Parsed flags become a `Scenario`, whose
construction runs the same checks as a study point's.
"""

from __future__ import annotations

import argparse
from typing import Any

from radsim.scenario.schema import SCENARIO_FIELDS, Scenario, default_of, input_of, scenario_from

_METAVARS = {
    "int": "N",
    "float": "X",
    "str": "TEXT",
    "hw": "NAME|PATH",
    "arch": "NAME|PATH",
    "trace": "PATH",
    "replay": "PATH",
}


def flag(name: str) -> str:
    """The flag of an input."""
    return "--" + name.replace("_", "-").lower()


def add_scenario_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """One flag for every input `command` reads, in table order, defaults shown by `--help`."""
    for name in SCENARIO_FIELDS:
        spec = input_of(name)
        if name in ("command", "label") or command not in spec.commands:
            continue
        names = [flag(name), *(f for f in spec.flags if f != flag(name))]
        kwargs: dict[str, Any] = {"dest": name, "help": spec.help}
        if spec.required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default_of(name)
            kwargs["help"] += " (default: %(default)r)"
        if spec.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = spec.kind
            kwargs["metavar"] = None if spec.allowed else _METAVARS.get(name, _METAVARS[spec.kind.__name__])
            if spec.allowed:
                kwargs["choices"] = spec.allowed
        parser.add_argument(*names, **{k: v for k, v in kwargs.items() if v is not None or k == "default"})


def scenario_from_args(args: argparse.Namespace, command: str) -> Scenario:
    """The scenario the parsed flags describe (checked as a study point is)."""
    values = {name: getattr(args, name) for name in SCENARIO_FIELDS if hasattr(args, name)}
    return scenario_from({**values, "command": command}, f"radsim {command}")
