"""Real English text for training and evaluation, from Debian packages the project installs.

Sources (about 18 MB): the King James Bible (`bible-kjv`, printed by its `bible` program), the
Python 3.11 documentation in plain text (`python3.11-doc`) and the fortune cookies (`fortunes`).
Each source is cut into documents (a Bible chapter, a documentation page, a fortune file); a
document goes wholly to one split, chosen by a hash of its name (90% train, 5% validation, 5% test),
so held-out text never overlaps training text. Token ids are cached as uint16 `.npy` files.
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radsim.errors import ConfigError
from radsim.files import atomic_write

PYDOC_DIR = Path("/usr/share/doc/python3.11/html/_sources")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
SPLITS = ("train", "val", "test")
INSTALL_HINT = "apt-get install -y bible-kjv python3.11-doc fortunes"


@dataclass(frozen=True)
class Document:
    """A named piece of text from one source."""

    source: str
    name: str
    text: str

    @property
    def split(self) -> str:
        """train, val or test, fixed by a hash of the document's name."""
        bucket = int(hashlib.sha256(f"{self.source}/{self.name}".encode()).hexdigest(), 16) % 100
        return "val" if bucket < 5 else "test" if bucket < 10 else "train"


def bible_documents() -> Iterator[Document]:
    """The King James Bible, one document per chapter."""
    try:
        out = subprocess.run(
            ["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True, timeout=300
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ConfigError(
            f"cannot run `bible` (package bible-kjv): {exc}; install with: {INSTALL_HINT}"
        ) from exc
    chapters: dict[str, list[str]] = {}
    for line in out.splitlines():
        match = re.match(r"^(\w+?)(\d+):(\d+) (.*)$", line)
        if match:
            book, chapter, _, text = match.groups()
            chapters.setdefault(f"{book}{chapter}", []).append(text)
    for name, verses in chapters.items():
        yield Document("bible-kjv", name, "\n".join(verses) + "\n")


def pydoc_documents() -> Iterator[Document]:
    """The Python 3.11 documentation, one document per page."""
    for path in sorted(PYDOC_DIR.rglob("*.txt")):
        yield Document("python3.11-doc", str(path.relative_to(PYDOC_DIR)), path.read_text(errors="replace"))


def fortune_documents() -> Iterator[Document]:
    """Fortune cookies, one document per collection file."""
    for path in sorted(FORTUNE_DIR.iterdir()):
        if path.is_file() and path.suffix not in (".dat", ".u8") and not path.is_symlink():
            text = path.read_text(errors="replace").replace("\n%\n", "\n\n")
            yield Document("fortunes", path.name, text)


SOURCES: dict[str, Callable[[], Iterator[Document]]] = {
    "bible-kjv": bible_documents,
    "python3.11-doc": pydoc_documents,
    "fortunes": fortune_documents,
}


def documents(sources: tuple[str, ...] = tuple(SOURCES)) -> list[Document]:
    """All documents of the named sources."""
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ConfigError(f"unknown corpus source(s) {sorted(unknown)}; allowed: {', '.join(SOURCES)}")
    if "python3.11-doc" in sources and not PYDOC_DIR.exists():
        raise ConfigError(f"{PYDOC_DIR} not found; install with: {INSTALL_HINT}")
    if "fortunes" in sources and not FORTUNE_DIR.exists():
        raise ConfigError(f"{FORTUNE_DIR} not found; install with: {INSTALL_HINT}")
    return [doc for source in sources for doc in SOURCES[source]()]


def build_splits(tokenize: Callable[[str], list[int]], eos: int, cache_dir: Path) -> dict[str, Path]:
    """Tokenise every document into train/val/test arrays (documents joined by EOS), cached."""
    paths = {split: cache_dir / f"{split}.npy" for split in SPLITS}
    if all(p.exists() for p in paths.values()):
        return paths
    cache_dir.mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[int]] = {split: [] for split in SPLITS}
    for doc in documents():
        ids[doc.split].extend(tokenize(doc.text) + [eos])
    for split, path in paths.items():
        atomic_write(path, functools.partial(_save, array=np.asarray(ids[split], dtype=np.uint16)))
    return paths


def build_source_splits(
    tokenize: Callable[[str], list[int]], eos: int, cache_dir: Path
) -> dict[tuple[str, str], Path]:
    """Token ids of every (split, source), documents joined by EOS, cached; the same documents and
    splits as `build_splits`, kept apart by source so that an evaluation can sample each in proportion."""
    paths = {(split, src): cache_dir / f"{split}-{src}.npy" for split in SPLITS for src in SOURCES}
    if all(p.exists() for p in paths.values()):
        return paths
    cache_dir.mkdir(parents=True, exist_ok=True)
    ids: dict[tuple[str, str], list[int]] = {key: [] for key in paths}
    for doc in documents():
        ids[(doc.split, doc.source)].extend(tokenize(doc.text) + [eos])
    for key, path in paths.items():
        atomic_write(path, functools.partial(_save, array=np.asarray(ids[key], dtype=np.uint16)))
    return paths


def proportional_counts(sizes: dict[str, int], total: int) -> dict[str, int]:
    """`total` split over the keys in proportion to `sizes` (largest remainder), at least one each."""
    if total < len(sizes):
        raise ConfigError(
            f"cannot sample {total} windows from {len(sizes)} sources; allowed: >= {len(sizes)}"
        )
    weight = sum(sizes.values())
    exact = {k: total * v / weight for k, v in sizes.items()}
    counts = {k: max(1, int(e)) for k, e in exact.items()}
    by_remainder = sorted(sizes, key=lambda k: (counts[k] - exact[k], k))
    i = 0
    while sum(counts.values()) < total:
        counts[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(counts.values()) > total:  # the minimum of one may overshoot
        k = max((k for k in counts if counts[k] > 1), key=lambda k: counts[k] - exact[k])
        counts[k] -= 1
    return counts


def representative_windows(
    arrays: dict[str, np.ndarray], seq_len: int, limit_tokens: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping (n, seq_len) windows drawn at random from every source in proportion to its
    tokens, and each window's source (n,) as an index into `sorted(arrays)`; the same for a seed."""
    names = sorted(arrays)
    slots = {k: len(arrays[k]) // seq_len for k in names}
    short = [k for k in names if slots[k] < 1]
    if short:
        raise ConfigError(
            f"source(s) {short} hold fewer than {seq_len} tokens; allowed: sources with a window"
        )
    counts = proportional_counts(slots, max(len(names), limit_tokens // seq_len))
    rng = np.random.default_rng(seed)
    out, source = [], []
    for i, k in enumerate(names):
        take = min(counts[k], slots[k])
        for slot in np.sort(rng.choice(slots[k], size=take, replace=False)):
            out.append(np.asarray(arrays[k][slot * seq_len : (slot + 1) * seq_len], dtype=np.int64))
            source.append(i)
    return np.stack(out), np.asarray(source, dtype=np.int64)


def _save(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:  # a handle: np.save would add .npy to the temporary's name
        np.save(handle, array)


def load_split(paths: dict[str, Path], split: str) -> np.ndarray:
    """Token ids of one split (memory-mapped)."""
    if split not in SPLITS:
        raise ConfigError(f"split '{split}' unknown; allowed: {', '.join(SPLITS)}")
    return np.load(paths[split], mmap_mode="r")


def batches(tokens: np.ndarray, seq_len: int, batch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless random (batch, seq_len) windows of a token array, for training."""
    high = len(tokens) - seq_len
    while True:
        starts = rng.integers(0, high, size=batch)
        yield np.stack([tokens[s : s + seq_len] for s in starts]).astype(np.int64)


def windows(tokens: np.ndarray, seq_len: int, limit_tokens: int) -> np.ndarray:
    """Consecutive non-overlapping (n, seq_len) windows from the start, up to limit_tokens, for evaluation."""
    n = min(len(tokens), limit_tokens) // seq_len
    return np.asarray(tokens[: n * seq_len], dtype=np.int64).reshape(n, seq_len)
