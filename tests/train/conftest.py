"""Synthetic token splits in place of the real corpus, for training tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def synthetic_text(tmp_path, monkeypatch):
    """Random tokens as the train/val/test splits and as every (split, source) of them."""
    pytest.importorskip("torch")
    import radsim.train.loop as loop

    rng = np.random.default_rng(0)
    paths = {}
    for split, n in (("train", 20_000), ("val", 2_000), ("test", 2_000)):
        paths[split] = tmp_path / f"{split}.npy"
        np.save(paths[split], rng.integers(0, 200, size=n).astype(np.uint16))
    monkeypatch.setattr(loop, "text_splits", lambda: paths)
    by_source = {}
    for split in ("train", "val", "test"):
        for i, src in enumerate(sorted(loop.corpus.SOURCES)):
            by_source[(split, src)] = tmp_path / f"{split}-{src}.npy"
            np.save(by_source[(split, src)], rng.integers(0, 200, size=600 * (i + 1)).astype(np.uint16))
    monkeypatch.setattr(loop, "source_splits", lambda: by_source)
