"""Refactor equality: how far a study's results moved, point by point, against a reference table.

Run: python benchmarks/refactor_equality.py REFERENCE.csv NEW.csv [--metrics ttft_s,tpot_s,...]
Both tables are matched on `point_id` (the ids are stable across releases; a table of a release
that named `command` `engine` is read as today's). Prints, for each group of
points (command, arrival, routes, batch), the largest relative change of each metric, and the count
of points whose every metric is equal to 1e-12; the exit code is 1 when a point is missing.
Use it after a change that must not move numbers (a refactor) or to report the ones that moved.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from radsim.study.sweep import upgrade_columns  # a reference table written before `command`

DEFAULT_METRICS = "ttft_s,tpot_s,e2e_s,output_tokens_per_s,peak_memory_bytes,avg_power_W,cost_usd_per_Mtok"


def compare(reference: pd.DataFrame, new: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per point: the relative change of each metric (NaN where either side is empty)."""
    both = reference.merge(new, on="point_id", suffixes=("_ref", ""), how="inner")
    out = both[["point_id", "command", "arrival", "routes", "batch"]].copy()
    for m in metrics:
        ref, cur = both[f"{m}_ref"].astype(float), both[m].astype(float)
        out[m] = np.where((ref == 0) & (cur == 0), 0.0, (cur - ref) / ref.abs())
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("reference")
    parser.add_argument("new")
    parser.add_argument("--metrics", default=DEFAULT_METRICS)
    args = parser.parse_args()
    metrics = args.metrics.split(",")
    reference, new = (upgrade_columns(pd.read_csv(p)) for p in (args.reference, args.new))
    missing = sorted(set(reference["point_id"]) - set(new["point_id"]))
    diff = compare(reference, new, [m for m in metrics if m in reference and m in new])
    shown = [m for m in metrics if m in diff]
    equal = (diff[shown].abs().fillna(0.0) <= 1e-12).all(axis=1)
    print(f"{len(diff)} points matched, {int(equal.sum())} equal to 1e-12, {len(missing)} missing")
    moved = diff[~equal]
    if len(moved):
        table = moved.groupby(["command", "arrival", "routes", "batch"])[shown].agg(lambda s: s.abs().max())
        with pd.option_context(
            "display.width",
            250,
            "display.max_columns",
            20,
            "display.max_rows",
            500,
            "display.float_format",
            "{:.2e}".format,
        ):
            print("largest |relative change| per group of points that moved:")
            print(table)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
