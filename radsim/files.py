"""Files radsim reads and writes: text that must be UTF-8, outputs probed before any work, atomic writes.

Every command that writes checks its outputs first (`output_dir`, `output_file`): the folder is
created and a file is created and removed in it, so that an `--out` that is a file, lies under a
file or cannot be written fails in a second, naming the option, not after minutes of work. Writes
go through a temporary file with a unique name in the target folder and `os.replace`, so a reader
never sees half a file and two writers never share a temporary. JSON output maps NaN and infinity
to null (`json_text`): what radsim prints as JSON is always valid JSON. Standard library only, so
that the measurement harness (torch and numpy only) may use it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radsim.errors import ConfigError


def cache_dir() -> Path:
    """Where radsim keeps derived artefacts (SmolLM2's weights, token ids, route books):
    $RADSIM_CACHE, else ~/.cache/radsim."""
    return Path(os.environ.get("RADSIM_CACHE", Path.home() / ".cache" / "radsim"))


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of `path`; ConfigError naming the file when it is unreadable or not UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from exc


def check_text(path: str | Path, what: str = "file") -> None:
    """Raise ConfigError unless `path` is a readable UTF-8 file."""
    read_text(path, what)


def output_dir(path: str | Path, option: str) -> Path:
    """Create the folder `path` (and its parents) and prove it writable; ConfigError naming `option`."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"lies under {parent}, which is a file"
            raise ConfigError(f"{option} {path}: {where}; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".radsim-probe-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from exc
    return path


def output_file(path: str | Path, option: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Check that `path` can be written (its folder created and writable, not a folder itself)."""
    path = Path(path)
    if suffixes and path.suffix not in suffixes:
        raise ConfigError(f"{option} {path}: the file must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name")
    output_dir(path.parent, f"{option} {path}: folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{option} {path}: the file exists and cannot be overwritten")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a uniquely named temporary beside `path`, then rename it onto `path`.

    The file gets the permissions a plain `open` would give it (mkstemp's are owner-only).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def umask() -> int:
    """The process's file-creation mask (read from /proc where it can be, without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return atomic_write(path, write)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (in dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype"):  # a numpy scalar
        return finite(value.item())
    return value


def json_text(value: Any, **kwargs: Any) -> str:
    """JSON of `value` with non-finite numbers as null: never NaN or Infinity, which JSON lacks."""
    try:  # every number finite and every value JSON's own: `finite` would change nothing
        return json.dumps(value, allow_nan=False, **kwargs)
    except (TypeError, ValueError):
        return json.dumps(finite(value), allow_nan=False, **kwargs)
