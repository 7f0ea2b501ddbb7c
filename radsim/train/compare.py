"""Scratch runs scored on one representative validation sample, and compared window by window.

`score_run` evaluates a trained run folder on the representative validation sample
(`radsim.train.loop.validation_sample`: windows from every source in proportion, seeded) and keeps
every window's summed loss and depth in `NAME-windows.csv` beside a `NAME.json` summary, in a
results folder. The windows depend only on (seq_len, tokens, seed), not on the model, so runs scored
apart (in another session, after the model file is gone) are compared on the very same windows:
`comparison` reads every scored run of the folder and gives each perplexity with its bootstrap
interval, per source, and its ratio to a reference run with a paired interval (the same windows
resampled for both).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, cast

import numpy as np

from radsim.errors import ConfigError
from radsim.files import atomic_write_text

WINDOW_COLUMNS = ("window", "source", "loss_sum_nats", "depth_sum", "predicted_tokens")


def score_run(
    run_dir: Path,
    out_dir: Path,
    tokens: int = 32768,
    seed: int = 0,
    batch: int = 8,
    early_exit: float | None = None,
    min_layer: int = 0,
) -> dict[str, Any]:
    """Evaluate a run on the representative validation sample; write its windows and summary.

    With `early_exit` (a threshold in (0, 1]), a sequential run is evaluated under confidence-based
    early exit (`radsim.models.early_exit`, KV copied) and named NAME-exitTHRESHOLD."""
    from radsim.models.early_exit import EarlyExit, EarlyExitConfig
    from radsim.models.llama import Llama
    from radsim.train.loop import (
        ScratchModel,
        _params,
        load_run,
        summarize_windows,
        validation_sample,
        window_losses,
    )

    cfg, loaded, mapping = load_run(run_dir)
    model: ScratchModel | EarlyExit = cast("ScratchModel", loaded)
    name = cfg.name
    params = _params(model)
    if early_exit is not None:
        if not isinstance(model, Llama) or cfg.kind != "dense_scratch":
            raise ConfigError(
                f"{run_dir}: early exit needs a sequential (dense_scratch) run; it is {cfg.kind}"
            )
        model = EarlyExit(model, EarlyExitConfig(threshold=early_exit, min_layer=min_layer))
        name = f"{cfg.name}-exit{early_exit:g}"
    seq = cfg.data.seq_len
    windows, sources, names = validation_sample(seq, tokens, seed, mapping if cfg.data.vocab else None)
    loss, depth = window_losses(model, windows, batch)
    summary = {
        "run": name,
        "early_exit": None if early_exit is None else {"threshold": early_exit, "min_layer": min_layer},
        "kind": cfg.kind,
        "layers_owned": cfg.model.num_layers,
        "params": params,
        "train_tokens": cfg.train.steps * cfg.data.batch * seq,
        "seq_len": seq,
        "sample_tokens": tokens,
        "seed": seed,
        "sources": names,
        **summarize_windows(loss, depth, seq - 1, sources, names, seed),
    }
    lines = [",".join(WINDOW_COLUMNS)] + [
        f"{i},{names[s]},{loss_i!r},{depth_i!r},{seq - 1}"
        for i, (s, loss_i, depth_i) in enumerate(
            zip(sources.tolist(), loss.tolist(), depth.tolist(), strict=True)
        )
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{name}-windows.csv", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / f"{name}.json", json.dumps(summary, indent=2) + "\n")
    return summary


def read_windows(path: Path) -> dict[str, np.ndarray]:
    """A `NAME-windows.csv` as arrays (ConfigError naming the file if it is not one)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or set(WINDOW_COLUMNS) - set(rows[0]):
        raise ConfigError(f"{path}: not a scored run's windows; columns {', '.join(WINDOW_COLUMNS)} expected")
    return {
        "source": np.array([r["source"] for r in rows]),
        "loss": np.array([float(r["loss_sum_nats"]) for r in rows]),
        "depth": np.array([float(r["depth_sum"]) for r in rows]),
        "tokens": np.array([float(r["predicted_tokens"]) for r in rows]),
    }


def comparison(out_dir: Path, reference: str) -> list[dict[str, Any]]:
    """Every scored run of `out_dir` against `reference`: perplexity [95% interval], mean depth,
    ratio to the reference [paired 95% interval], per source; written to `comparison.csv`."""
    from radsim.train.adapt import perplexity_interval, ratio_interval

    summaries = {p.stem: json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))}
    summaries = {k: v for k, v in summaries.items() if "run" in v and (out_dir / f"{k}-windows.csv").exists()}
    if reference not in summaries:
        raise ConfigError(f"{out_dir}: no scored run {reference!r}; scored: {', '.join(summaries) or 'none'}")
    ref = read_windows(out_dir / f"{reference}-windows.csv")
    rows = []
    for name, summary in summaries.items():
        w = read_windows(out_dir / f"{name}-windows.csv")
        if len(w["loss"]) != len(ref["loss"]) or (w["source"] != ref["source"]).any():
            raise ConfigError(
                f"{out_dir}: {name} was scored on other windows than {reference}; score both alike"
            )
        seed = int(summary["seed"])
        lo, hi = perplexity_interval(w["loss"], w["tokens"], seed)
        row = {
            "run": name,
            "layers_owned": summary["layers_owned"],
            "params": summary["params"],
            "train_tokens": summary["train_tokens"],
            "mean_depth": float(w["depth"].sum() / w["tokens"].sum()),
            "perplexity": float(np.exp(w["loss"].sum() / w["tokens"].sum())),
            "perplexity_lo": lo,
            "perplexity_hi": hi,
            "ratio_to_reference": float(np.exp((w["loss"].sum() - ref["loss"].sum()) / w["tokens"].sum())),
        }
        row["ratio_lo"], row["ratio_hi"] = (
            (1.0, 1.0) if name == reference else ratio_interval(w["loss"], ref["loss"], w["tokens"], seed)
        )
        for source in summary["sources"]:
            part = w["source"] == source
            row[f"perplexity[{source}]"] = float(np.exp(w["loss"][part].sum() / w["tokens"][part].sum()))
        rows.append(row)
    header = list(rows[0])
    text = ",".join(header) + "\n" + "".join(",".join(str(r[k]) for k in header) + "\n" for r in rows)
    atomic_write_text(out_dir / "comparison.csv", text)
    return rows
