"""Summary statistics of a routing trace: depth, layer use, reuse, and batch union coverage.

Union coverage is what decides memory-bound decode cost: a layer's weights are read once per batch
if *any* token in it visits the layer. For each batch size B it is the mean fraction of layers that
at least one of B tokens visits, over `samples` random batches of B distinct tokens:

- `random_tokens`: B tokens drawn without replacement from the whole trace. Each sample draws one
  ordering of tokens and B takes its first B, so the estimate never decreases with B.
- `same_position`: B different sequences at one position, as in a decode step; the position is
  drawn uniformly among those that at least B sequences reach (B is skipped where none does).
- `independent_model`: mean over layers l of 1 - (1 - p_l)^B, with p_l the fraction of tokens that
  visit layer l. This is the exact expectation for B tokens drawn *with* replacement, whatever the
  correlation between a token's layers; `same_position` departs from it where tokens at one
  position route alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from radsim.errors import ConfigError
from radsim.routes.trace import Trace, sort_visits, token_starts, validate_trace

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _check_args(batch_sizes: Sequence[int], samples: int) -> None:
    if not batch_sizes or any(not isinstance(b, int | np.integer) or b < 1 for b in batch_sizes):
        raise ConfigError(f"batch_sizes must be ints >= 1, got {list(batch_sizes)}")
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")


def _depth_stats(depth: np.ndarray) -> dict[str, Any]:
    """Mean, spread, percentiles and histogram of per-token depth."""
    p10, p50, p90 = np.percentile(depth, [10, 50, 90])
    values, counts = np.unique(depth, return_counts=True)
    return {
        "mean": float(depth.mean()),
        "std": float(depth.std()),
        "min": int(depth.min()),
        "p10": float(p10),
        "p50": float(p50),
        "p90": float(p90),
        "max": int(depth.max()),
        "histogram": {int(d): int(c) for d, c in zip(values, counts, strict=True)},
    }


def _random_tokens(mask: np.ndarray, sizes: list[int], samples: int, rng: np.random.Generator) -> dict:
    """Mean union coverage of B tokens drawn without replacement; nested draws keep it monotone in B."""
    tokens = mask.shape[0]
    sizes = [b for b in sizes if b <= tokens]
    if not sizes:
        return {}
    draws = np.stack([rng.choice(tokens, size=max(sizes), replace=False) for _ in range(samples)])
    covered = np.logical_or.accumulate(mask[draws], axis=1).sum(axis=2)  # (samples, max B) layers
    return {b: float(covered[:, b - 1].mean() / mask.shape[1]) for b in sizes}


def _same_position(
    mask: np.ndarray, pos: np.ndarray, sizes: list[int], samples: int, rng: np.random.Generator
) -> dict:
    """Mean union coverage of B distinct sequences' tokens at one shared position."""
    order = np.argsort(pos, kind="stable")  # token indices grouped by position
    _, starts, counts = np.unique(pos[order], return_index=True, return_counts=True)
    out = {}
    for b in sizes:
        eligible = np.flatnonzero(counts >= b)
        if eligible.size == 0:
            continue
        picks = [
            starts[p] + rng.choice(counts[p], size=b, replace=False)
            for p in rng.choice(eligible, size=samples)
        ]
        covered = mask[order[np.stack(picks)]].any(axis=1).sum(axis=1)  # (samples,) layers
        out[b] = float(covered.mean() / mask.shape[1])
    return out


def route_text(layers: np.ndarray) -> str:
    """A route as text: '0 -> 5 -> 5 -> 7 -> exit', runs of three or more consecutive layers as
    '0..12'."""
    parts, i, n = [], 0, len(layers)
    while i < n:
        j = i
        while j + 1 < n and layers[j + 1] == layers[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{layers[i]}..{layers[j]}")
        else:
            parts += [str(x) for x in layers[i : j + 1]]
        i = j + 1
    return " -> ".join([*parts, "exit"])


def _route_stats(
    layer: np.ndarray, tid: np.ndarray, depth: np.ndarray, seq: np.ndarray, pos: np.ndarray, pairs: int, rng
) -> dict[str, Any]:
    """How diverse the tokens' routes are: distinct routes, their entropy, the commonest, and how
    often two tokens take the same route (at one position, as in a static decode step, or anywhere,
    as tokens of different sequences in a continuous batch), with the mean Jaccard overlap of the
    layer sets two such tokens visit."""
    tokens, longest = depth.size, int(depth.max())
    routes = np.full((tokens, longest), -1, dtype=np.int32)  # each token's layers in order, padded
    step = np.arange(layer.size) - np.repeat(np.cumsum(depth) - depth, depth)
    routes[tid, step] = layer
    unique, route_of, counts = np.unique(routes, axis=0, return_inverse=True, return_counts=True)
    route_of = route_of.reshape(-1)
    share = counts / tokens
    entropy = float(-(share * np.log2(share)).sum()) + 0.0  # no "-0.00" for a single route
    top = np.argsort(-counts, kind="stable")[:5]
    mask = np.zeros((tokens, int(layer.max()) + 1), dtype=bool)
    mask[tid, layer] = True

    def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        if not a.size:  # one sequence: no pairs of different sequences
            return {}
        same = route_of[a] == route_of[b]
        inter = (mask[a] & mask[b]).sum(axis=1)
        union = (mask[a] | mask[b]).sum(axis=1)
        return {
            "same_route": float(same.mean()),
            "layer_jaccard": float((inter / np.maximum(union, 1)).mean()),
        }

    # random pairs of tokens of different sequences
    a, b = rng.integers(tokens, size=pairs), rng.integers(tokens, size=pairs)
    keep = seq[a] != seq[b]
    anywhere = agreement(a[keep], b[keep])
    # pairs of different sequences at one position
    order = np.lexsort((seq, pos))
    _, starts, sizes = np.unique(pos[order], return_index=True, return_counts=True)
    shared = np.flatnonzero(sizes >= 2)
    at = shared[rng.integers(shared.size, size=pairs)] if shared.size else np.zeros(0, dtype=np.int64)
    i = rng.integers(sizes[at]) if at.size else at
    j = (i + 1 + rng.integers(np.maximum(sizes[at] - 1, 1))) % np.maximum(sizes[at], 1) if at.size else at
    position = agreement(order[starts[at] + i], order[starts[at] + j]) if at.size else {}
    return {
        "distinct": int(unique.shape[0]),
        "entropy_bits": entropy,
        "effective_routes": float(2.0**entropy),
        "top": [{"route": route_text(unique[r][unique[r] >= 0]), "share": float(share[r])} for r in top],
        "pairs": pairs,
        "agreement_same_position": position,
        "agreement_any_position": anywhere,
    }


def _independent(freq: np.ndarray, sizes: list[int]) -> dict:
    """Expected covered fraction if each token visited layer l independently with probability p_l."""
    return {b: float(np.mean(1.0 - (1.0 - freq) ** b)) for b in sizes}


def trace_stats(
    trace: Trace, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, samples: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Depth, layer use, reuse and union coverage of a valid trace; deterministic for a seed."""
    _check_args(batch_sizes, samples)
    validate_trace(trace)
    sizes = sorted({int(b) for b in batch_sizes})
    v = sort_visits(trace.visits)
    num_layers = trace.num_layers
    start = token_starts(v)
    tid = np.cumsum(start) - 1
    tokens = int(tid[-1]) + 1
    depth = np.bincount(tid)
    layer = v["layer"].to_numpy().astype(np.int64)
    mask = np.zeros((tokens, num_layers), dtype=bool)
    mask[tid, layer] = True
    freq = mask.mean(axis=0)
    distinct = mask.sum(axis=1)
    passes = v["pass"].to_numpy()[np.cumsum(depth) - 1].astype(np.int64) + 1
    rng = np.random.default_rng(seed)
    pos = v["pos"].to_numpy()[start]
    return {
        "tokens": tokens,
        "sequences": int(v["seq"].nunique()),
        "num_layers": num_layers,
        "visits": len(v),
        "depth": _depth_stats(depth),
        "depth_fraction_mean": float(depth.mean() / num_layers),
        "layer_visit_frequency": [float(f) for f in freq],
        "visits_per_layer": [float(c) / tokens for c in np.bincount(layer, minlength=num_layers)],
        "reuse_rate": float(np.mean(distinct < depth)),
        "reused_visit_fraction": float((depth.sum() - distinct.sum()) / depth.sum()),
        "passes": {"mean": float(passes.mean()), "max": int(passes.max())},
        "exit_prob_mean": float(v["prob_exit"].to_numpy().mean(dtype=np.float64)),
        "routes": _route_stats(layer, tid, depth, v["seq"].to_numpy()[start], pos, pairs=20000, rng=rng),
        "union_coverage": {
            "batch_sizes": sizes,
            "samples": samples,
            "seed": seed,
            "random_tokens": _random_tokens(mask, sizes, samples, rng),
            "same_position": _same_position(mask, pos, sizes, samples, rng),
            "independent_model": _independent(freq, sizes),
        },
    }


def _row(values: Sequence[float], fmt: str, per_line: int = 8) -> str:
    """Per-layer values as 'layer: value' pairs, `per_line` to a line."""
    pairs = [f"{i:>3}: {x:{fmt}}" for i, x in enumerate(values)]
    lines = ["  ".join(pairs[i : i + per_line]) for i in range(0, len(pairs), per_line)]
    return ("\n" + " " * 24).join(lines)


def _coverage_table(cov: dict[str, Any]) -> list[str]:
    lines = [f"{'B':>5}  {'random tokens':>13}  {'same position':>13}  {'independent':>11}"]
    for b in cov["batch_sizes"]:
        cells = [cov[k].get(b) for k in ("random_tokens", "same_position", "independent_model")]
        text = [f"{c:.3f}" if c is not None else "-" for c in cells]
        lines.append(f"{b:>5}  {text[0]:>13}  {text[1]:>13}  {text[2]:>11}")
    return lines


def _route_lines(r: dict[str, Any]) -> list[str]:
    def agree(a: dict[str, float]) -> str:
        if not a:
            return "-"
        return f"{100 * a['same_route']:.1f}% take the same route, layer-set overlap {a['layer_jaccard']:.2f}"

    lines = [
        f"{'routes':<24}{r['distinct']} distinct, entropy {r['entropy_bits']:.2f} bits "
        f"({r['effective_routes']:.1f} effective routes)",
        *(f"{'':<24}{100 * t['share']:5.1f}%  {t['route']}" for t in r["top"]),
        f"{'pairs at one position':<24}{agree(r['agreement_same_position'])}",
        f"{'pairs anywhere':<24}{agree(r['agreement_any_position'])} ({r['pairs']} pairs, other sequences)",
    ]
    return lines


def format_stats(stats: dict[str, Any]) -> str:
    """A readable text report of `trace_stats` output."""
    d = stats["depth"]
    hist = ", ".join(f"{k}: {v}" for k, v in sorted(d["histogram"].items()))
    cov = stats["union_coverage"]
    lines = [
        f"{'tokens':<24}{stats['tokens']} in {stats['sequences']} sequences, {stats['visits']} visits",
        f"{'layers':<24}{stats['num_layers']}",
        f"{'depth':<24}mean {d['mean']:.2f} (std {d['std']:.2f}), {100 * stats['depth_fraction_mean']:.1f}% "
        f"of layers; min {d['min']}, p10 {d['p10']:g}, p50 {d['p50']:g}, p90 {d['p90']:g}, max {d['max']}",
        f"{'depth histogram':<24}{hist}",
        f"{'passes':<24}mean {stats['passes']['mean']:.2f}, max {stats['passes']['max']}",
        f"{'reuse':<24}{100 * stats['reuse_rate']:.1f}% of tokens revisit a layer; "
        f"{100 * stats['reused_visit_fraction']:.1f}% of visits are repeats",
        f"{'exit probability':<24}mean {stats['exit_prob_mean']:.3f}",
        *_route_lines(stats["routes"]),
        f"{'layer visit frequency':<24}{_row(stats['layer_visit_frequency'], '.2f')}",
        f"{'visits per layer':<24}{_row(stats['visits_per_layer'], '.2f')}",
        f"union coverage (fraction of layers any of B tokens visits; {cov['samples']} samples, seed {cov['seed']})",
        *_coverage_table(cov),
    ]
    return "\n".join(lines)
