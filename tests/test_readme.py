"""The README's examples run and print what the README shows (numbers within 0.5%)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from radsim.cli.main import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
TOLERANCE = 0.005


def _numbers(text: str) -> list[float]:
    return [float(x) for x in NUMBER.findall(text)]


def _run(capsys, command: str) -> str:
    args = shlex.split(command)
    assert args[0] == "radsim"
    assert main(args[1:]) == 0
    return capsys.readouterr().out


def test_readme_commands_are_the_shipped_defaults():
    main_command = re.search(
        r"```bash\n(.*pip install -e \. && radsim study run (studies/\S+\.toml) --plot)\n```", README
    )
    assert main_command, "README lost its main command"
    assert (Path(__file__).resolve().parent.parent / main_command.group(2)).is_file()
    test_command = re.search(r"```bash\n(pip install torch==2\.13\.0 && .*pytest)\n```", README)
    assert test_command, "README lost its test command"
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "torch==2.13.0" in ci and '-e ".[test]"' in ci and "pytest" in ci


def test_readme_example_output_matches(capsys):
    block = re.search(r"```\n\$ (radsim estimate [^\n]+)\n(.*?)```", README, re.S)
    assert block
    shown, actual = block.group(2), _run(capsys, block.group(1))
    for shown_line, actual_line in zip(shown.splitlines(), actual.splitlines(), strict=True):
        assert shown_line.split("  ")[0] == actual_line.split("  ")[0]
        assert _numbers(actual_line) == pytest.approx(_numbers(shown_line), rel=TOLERANCE)


@pytest.mark.parametrize(
    ("flags", "line", "pattern"),
    [
        ("--batch 8 --depth-fraction 0.5", "time to first token", r"halves \((\d+\.\d+) ms"),
        ("--batch 8 --depth-fraction 0.5", "time per output token", r"does not fall \((\d+\.\d+) ms"),
        ("--batch 1 --depth-fraction 0.5", "time per output token", r"decodes in\s+(\d+\.\d+) ms"),
        ("--batch 1", "time per output token", r"instead of (\d+\.\d+) ms"),
    ],
)
def test_readme_prose_figures(capsys, flags, line, pattern):
    out = _run(capsys, f"radsim estimate --hw h100_sxm --arch llama3.1-8b --prompt 512 --output 128 {flags}")
    actual = next(ln for ln in out.splitlines() if ln.startswith(line))
    shown = float(re.search(pattern, README).group(1))
    assert _numbers(actual)[0] == pytest.approx(shown, rel=TOLERANCE)


def test_readme_capacity_example_matches(capsys):
    """The main question's answer as the README shows it (lines elided with '...' aside)."""
    block = re.search(r"```\n\$ (radsim capacity .*?--baseline dense)\n(.*?)```", README, re.S)
    assert block
    out = _run(capsys, " ".join(block.group(1).replace("\\\n", " ").split()) + " --quiet")
    actual = out.splitlines()
    for shown in block.group(2).splitlines():
        if shown.strip() == "...":
            continue
        same = [a for a in actual if NUMBER.sub("#", a).split() == NUMBER.sub("#", shown).split()]
        assert any(_numbers(a) == pytest.approx(_numbers(shown), rel=TOLERANCE) for a in same), shown
