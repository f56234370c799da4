"""Summarise bench/demo_sweep.py results: per setting the mean and per-seed range, and paired
differences (same seed) between two settings with a 95 % t interval.

    python bench/demo_sweep_summary.py bench/results/issue14/*.jsonl
    python bench/demo_sweep_summary.py FILES --diff "p=3 noise=uniform" "p=3 noise=none"
    python bench/demo_sweep_summary.py bench/results/issue26/mnist10k_snn_modes.jsonl \
        --diff mode=bf16_channels_last mode=fp32

A run with ``--snn-modes`` (``snn_modes`` in its line) gives one setting per mode (``mode=...``).
"""

import argparse
import json
import math
import statistics
from collections import defaultdict

TS = ("1", "2", "4", "8", "16", "32", "64")
COLS = ("ann", "limit") + tuple(f"T={T}" for T in TS)
# two-sided 95 % t quantiles by degrees of freedom
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def key(row):
    return (
        f"data={row.get('data', 'digits')} p={row['p']} noise={row['noise']} scale={row['scale']} "
        f"lam={row['lam']} opt={row['opt']} ep={row['epochs']} convs={row.get('convs_per_stage', 2)}"
    )


def values(row, snn=None):
    snn = row["snn"] if snn is None else snn
    return {"ann": row["ann"], "limit": row["limit"], **{f"T={T}": snn[T] for T in TS}}


def load(paths):
    groups = defaultdict(dict)  # key -> seed -> values
    for path in paths:
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if "snn_modes" in row:
                    for mode, snn in row["snn_modes"].items():
                        groups[f"{key(row)} mode={mode}"][row["seed"]] = values(row, snn)
                else:
                    groups[key(row)][row["seed"]] = values(row)
    return groups


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument(
        "--diff",
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "B"),
        help="paired difference A - B; each a space-separated filter such as 'p=3 noise=none'",
    )
    a = ap.parse_args(argv)
    groups = load(a.files)
    print("mean over seeds [min, max], test accuracy %")
    for k in sorted(groups):
        seeds = groups[k]
        print(f"{k}  (seeds {sorted(seeds)})")
        print(
            "   "
            + "  ".join(
                f"{c} {100 * statistics.mean(v[c] for v in seeds.values()):.1f} "
                f"[{100 * min(v[c] for v in seeds.values()):.1f}, {100 * max(v[c] for v in seeds.values()):.1f}]"
                for c in COLS
            )
        )

    def pick(filters):
        want = filters.split()
        found = [k for k in groups if all(w in k.split() for w in want)]
        if len(found) != 1:
            raise SystemExit(f"{filters!r} matches {found}")
        return found[0]

    for fa, fb in a.diff:
        ka, kb = pick(fa), pick(fb)
        seeds = sorted(set(groups[ka]) & set(groups[kb]))
        print(f"\n{ka}  minus  {kb}  (paired, seeds {seeds}): mean, 95 % t interval, per seed (points)")
        for c in COLS:
            d = [100 * (groups[ka][s][c] - groups[kb][s][c]) for s in seeds]
            mean = statistics.mean(d)
            half = T95.get(len(d) - 1, 1.96) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
            print(
                f"   {c:6s} {mean:+5.2f}  [{mean - half:+5.2f}, {mean + half:+5.2f}]  "
                + " ".join(f"{x:+.1f}" for x in d)
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
