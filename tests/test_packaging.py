"""The wheel carries the hardware and architecture registries: `radsim hw list` works outside a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("radsim-*.whl"))


def test_wheel_ships_every_device_and_architecture(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    folders = (("radsim/spec/hw_models", "*.toml"), ("radsim/spec/archs", "*.toml"))
    folders += tuple(
        (str(d.relative_to(ROOT)), "*") for d in (ROOT / "radsim/spec/kernel_tables").iterdir() if d.is_dir()
    )
    for folder, pattern in folders:
        shipped = {p.name for p in (ROOT / folder).glob(pattern)}
        assert shipped and {f"{folder}/{n}" for n in shipped} <= names, folder


def test_installed_wheel_lists_every_device_from_any_directory(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = f"import sys; sys.path.insert(0, {str(target)!r}); from radsim.cli.main import main; sys.exit(main(['hw', 'list']))"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, check=True
    )
    assert (
        str(target)
        in subprocess.run(
            [
                sys.executable,
                "-c",
                code.replace("main(['hw', 'list'])", "print(__import__('radsim').__file__) or 0"),
            ],
            cwd=elsewhere,
            capture_output=True,
            text=True,
        ).stdout
    )
    for device in (ROOT / "radsim/spec/hw_models").glob("*.toml"):
        assert device.stem in run.stdout, device.stem
