"""pytest-benchmark JSON -> markdown summary of the na_kernels benchmark suite.

    python bench/summarize.py bench/results/<machine>-<date>.json [-o summary.md]

For every case (a pytest-benchmark group: op, mode, size, dtype) one row: the op, the case, the
na_kernels median time, its effective GB/s (the fused-kernel byte model in
extra_info["bytes_moved"]), its fraction of the copy bandwidth measured in the same run, and its
ratio to each alternative measured in the same run (alternative's median / na_kernels' median;
> 1 means na_kernels is faster); in the files, each alternative's median time too. Above the
table: the device, the copy bandwidth and the allocator setting of the run; after it, the
project's internal targets, met or missed.

Time: extra_info["time_s"] where the suite recorded one (on CUDA: triton do_bench median),
else pytest-benchmark's median. The conftest imports this module to print the same summary
at the end of ``pytest bench/ --benchmark-only`` (without the alternatives' time columns).
"""

import argparse
import json
import sys

OURS = "na_kernels"
ALTERNATIVES = ("eager", "compile", "spikingjelly")
IMPL_TITLES = {"na_kernels": "na_kernels", "eager": "eager", "compile": "torch.compile", "spikingjelly": "SpikingJelly"}


def case_time(record):
    extra = record.get("extra_info") or {}
    if extra.get("time_s"):
        return float(extra["time_s"])
    stats = record.get("stats") or {}
    return float(stats["median"]) if stats.get("median") else None


def is_model_case(record):
    """Whether a record is a whole-network case (``extra_info["table"] == "model"``): those go to
    the model table, each na_kernels variant (``extra_info["ours"]``) against every other variant
    of its group."""
    return (record.get("extra_info") or {}).get("table") == "model"


def _by_case(records):
    cases = {}
    for record in records:
        extra = record.get("extra_info") or {}
        case, impl = extra.get("case") or record.get("group"), extra.get("impl")
        if case and impl:
            cases.setdefault(case, {})[impl] = record
    return cases


def add_speedups(records):
    """Put speedup_vs_<impl> (that impl's time / na_kernels' time) into na_kernels' extra_info; in
    model cases into every na_kernels variant's, and memory_vs_<impl> (its peak / that impl's)."""
    records = list(records)
    for impls in _by_case([r for r in records if is_model_case(r)]).values():
        for record in impls.values():
            extra = record["extra_info"]
            if not extra.get("ours"):
                continue
            ours_time, ours_memory = case_time(record), extra.get("peak_memory_bytes")
            for impl, other in impls.items():
                if other is record or other["extra_info"].get("ours"):
                    continue
                other_time, other_memory = case_time(other), other["extra_info"].get("peak_memory_bytes")
                if ours_time and other_time:
                    extra[f"speedup_vs_{impl}"] = other_time / ours_time
                if ours_memory and other_memory:
                    extra[f"memory_vs_{impl}"] = ours_memory / other_memory
    for impls in _by_case([r for r in records if not is_model_case(r)]).values():
        ours = impls.get(OURS)
        ours_time = case_time(ours) if ours else None
        if not ours_time:
            continue
        for impl, record in impls.items():
            other = case_time(record)
            if impl != OURS and other:
                ours["extra_info"][f"speedup_vs_{impl}"] = other / ours_time


def _fmt_time(seconds):
    if seconds is None:
        return "–"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale or unit == "µs":
            return f"{seconds / scale:.3g} {unit}"


def _fmt(value, pattern):
    return "–" if value is None else pattern.format(value)


def _case_key(case):
    # order: op, mode, then numbers inside the name in numeric order
    import re

    parts = re.split(r"(\d+)", case)
    return [int(p) if p.isdigit() else p for p in parts]


def malloc_line(info):
    """How glibc malloc was set up in the measured process (CPU timings depend on it)."""
    if "malloc_env" not in info:
        return "Allocator: not recorded in this file."
    malloc = info.get("malloc_env")
    if malloc:
        settings = " ".join(f"{k}={v}" for k, v in sorted(malloc.items()))
        return (
            f"Allocator: TUNED glibc malloc ({settings}): not a plain process, so not what "
            f"`pytest bench/ --benchmark-only` prints by default (bench/README.md, 'malloc')."
        )
    return "Allocator: glibc malloc defaults (a plain process, as `pytest bench/ --benchmark-only` runs)."


def _split_case(case):
    """("integrate_fire", "fwd T=8 N=2^19 fp32") from the group name (op = its first word)."""
    op, _, rest = case.partition(" ")
    return op, rest


def render(records, machine_info=None, alternative_times=True):
    """The markdown summary: one row per case (medians), then the project's internal targets.

    alternative_times: also one column per alternative with its median time (the files that
    run_gpu.py and main() write); the terminal summary of the suite leaves them out.
    """
    records = list(records)
    add_speedups(records)
    model_records = [r for r in records if is_model_case(r)]
    cases = _by_case([r for r in records if not is_model_case(r)])
    info = (machine_info or {}).get("na_bench", {})
    lines = []
    copy = info.get("copy_bandwidth") or {}
    if info:
        lines.append(
            f"Device: {info.get('device_name')} ({info.get('device')}, sizes '{info.get('sizes')}', "
            f"{info.get('threads')} threads, torch {info.get('torch')}); load average at the end "
            f"{info.get('load_average')}."
        )
    load, threads = info.get("load_average"), info.get("threads")
    # the suite's own threads count in the load average: more than one core beyond them is others'
    if info.get("device") == "cpu" and load and threads and load[0] > threads + 1:
        lines.append(
            f"WARNING: load average {load[0]} with {threads} benchmark threads: other processes "
            "shared the cores, so times and ratios are unreliable; rerun on a quiet machine."
        )
    if copy:
        lines.append(f"Copy bandwidth: {copy['gbps']:.1f} GB/s ({copy.get('method')}).")
    if info:
        lines.append(malloc_line(info))
    if lines:
        lines.append("")

    if cases:
        present = [impl for impl in ALTERNATIVES if any(impl in impls for impls in cases.values())]
        header = ["op", "case", "time", "GB/s", "% copy"] + [f"× vs {IMPL_TITLES[i]}" for i in present]
        if alternative_times:
            header += [f"{IMPL_TITLES[i]} time" for i in present]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for case in sorted(cases, key=_case_key):
            impls = cases[case]
            ours = impls.get(OURS)
            extra = (ours or {}).get("extra_info", {})
            ours_time = case_time(ours) if ours else None
            throughput = [f"{k[:-6]}/s {v:,.1f}" for k, v in extra.items() if k.endswith("_per_s")]
            cell = _fmt_time(ours_time) + (f" ({throughput[0]})" if throughput else "")
            row = [
                *_split_case(case),
                cell,
                _fmt(extra.get("gbps"), "{:.2f}"),
                _fmt(
                    None
                    if extra.get("fraction_of_copy_bandwidth") is None
                    else 100 * extra["fraction_of_copy_bandwidth"],
                    "{:.0f} %",
                ),
            ]
            for impl in present:
                other = case_time(impls[impl]) if impl in impls else None
                row.append(_fmt(other / ours_time if other and ours_time else None, "{:.2f}×"))
            if alternative_times:
                for impl in present:
                    row.append(_fmt_time(case_time(impls[impl])) if impl in impls else "–")
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", LEGEND]
    if model_records:
        lines += ([""] if cases else []) + model_table(model_records, alternative_times)
    lines.append("")
    lines.extend(targets(cases, info.get("device", "cpu"), info.get("device_name", ""), model_records))
    return "\n".join(lines)


def _fmt_bytes(nbytes):
    return "–" if not nbytes else f"{nbytes / (1 << 20):,.0f} MiB"


def model_table(records, alternative_times=True):
    """Whole networks: one row per na_kernels variant of a case, with its time, images/s and peak
    memory, and its ratio to every other variant of the case measured in this run."""
    cases = _by_case(records)
    header = (
        "| model case | na_kernels variant | time | images/s | peak memory | × time vs (> 1: faster) "
        "| × memory vs (< 1: less) |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for case in sorted(cases, key=_case_key):
        impls = cases[case]
        others = [impl for impl, r in impls.items() if not r["extra_info"].get("ours")]
        titles = {impl: r["extra_info"].get("variant", impl) for impl, r in impls.items()}
        for impl, record in impls.items():
            extra = record["extra_info"]
            if not extra.get("ours"):
                continue
            seconds = case_time(record)
            rate = extra.get("images_per_s")
            versus = [
                f"{extra[f'speedup_vs_{o}']:.2f}× {titles[o]}"
                + (f" ({_fmt_time(case_time(impls[o]))})" if alternative_times else "")
                for o in others
                if f"speedup_vs_{o}" in extra
            ]
            memory = [f"{extra[f'memory_vs_{o}']:.2f}× {titles[o]}" for o in others if f"memory_vs_{o}" in extra]
            lines.append(
                "| "
                + " | ".join(
                    [
                        case,
                        extra.get("variant", impl),
                        _fmt_time(seconds),
                        _fmt(rate, "{:,.1f}"),
                        _fmt_bytes(extra.get("peak_memory_bytes")),
                        "; ".join(versus) or "–",
                        "; ".join(memory) or "–",
                    ]
                )
                + " |"
            )
    lines += ["", MODEL_LEGEND]
    return lines


MODEL_LEGEND = "\n".join(
    (
        "Model cases: time = median per call (a training step, one SNN pass over the batch at T steps, or",
        "the early-exit bench's pass over its test set);",
        "× time vs X: X's median / this variant's (> 1: this variant is faster); × memory vs X: this variant's",
        "peak memory per call / X's (< 1: it needs less); peak memory: bench/model_cases.py, peak_memory.",
    )
)


LEGEND = "\n".join(
    (
        "time: na_kernels' median per call. GB/s: the fewest bytes a fused kernel must move / time.",
        "% copy: GB/s / the copy bandwidth above (past 100 % when the data stay in cache).",
        "× vs X: X's median / na_kernels' median, both from this run (> 1: na_kernels is faster);",
        "–: not measured (not installed, skipped or deselected).",
    )
)


def _ratio(impls, other):
    ours, alt = impls.get(OURS), impls.get(other)
    if not ours or not alt:
        return None
    t_ours, t_alt = case_time(ours), case_time(alt)
    return t_alt / t_ours if t_ours and t_alt else None


def _fraction(impls):
    ours = impls.get(OURS)
    return (ours or {}).get("extra_info", {}).get("fraction_of_copy_bandwidth")


def _check(label, value, goal, kind):
    if value is None:
        return f"- {label}: not measured in this run"
    if kind == "ratio":
        verdict = "met" if value >= goal else f"MISSED by {goal / value:.2f}× (needs {goal:g}×)"
        return f"- {label}: {value:.2f}× — {verdict}"
    verdict = "met" if value >= goal else f"MISSED by {100 * (goal - value):.0f} points (needs {100 * goal:.0f} %)"
    return f"- {label}: {100 * value:.0f} % of copy bandwidth — {verdict}"


def _model_targets(records):
    """Issue 26's whole-network goals (both devices), checked against this run's model cases."""
    out = []
    for case, impls in sorted(_by_case(records).items(), key=lambda item: _case_key(item[0])):
        op = (next(iter(impls.values()))["extra_info"]).get("op")
        if op == "train_step":
            for ours, relu, how in (
                ("noisy_quant", "relu", "eager"),
                ("noisy_quant_compiled", "relu_compiled", "compiled"),
                ("noisy_quant_fused", "relu", "eager, fused with BatchNorm"),
                ("noisy_quant_fused_compiled", "relu_compiled", "compiled, fused with BatchNorm"),
            ):
                speedup = (impls.get(ours) or {}).get("extra_info", {}).get(f"speedup_vs_{relu}")
                label = f"- {case}: NoisyQuant's step {how} ≤ 1.05× the ReLU network's"
                if speedup is None:
                    out.append(f"{label}: not measured in this run")
                else:
                    cost = 1 / speedup
                    out.append(
                        f"{label}: {cost:.2f}× — " + ("met" if cost <= 1.05 else f"MISSED by {cost / 1.05:.2f}×")
                    )
            for ours, how in (("noisy_quant", ""), ("noisy_quant_fused", " fused with BatchNorm")):
                memory = (impls.get(ours) or {}).get("extra_info", {}).get("memory_vs_relu")
                verdict = (
                    "not measured in this run"
                    if memory is None
                    else f"{memory:.2f}× — " + ("met" if memory <= 1.0 else f"MISSED by {memory:.2f}×")
                )
                out.append(f"- {case}: NoisyQuant's{how} peak memory ≤ the ReLU network's: {verdict}")
            eager, compiled = impls.get("noisy_quant"), impls.get("noisy_quant_compiled")
            ratio = (case_time(eager) / case_time(compiled)) if eager and compiled and case_time(compiled) else None
            out.append(
                _check(f"{case}: compiled NoisyQuant never slower than eager (eager / compiled)", ratio, 1.0, "ratio")
            )
        elif op == "snn_pass" and (next(iter(impls.values()))["extra_info"]).get("dtype") == "fp32":
            for ours in ("na_kernels", "na_kernels_compiled", "channels_last", "fast", "event"):
                extra = (impls.get(ours) or {}).get("extra_info", {})
                out.append(
                    _check(
                        f"{case}: {extra.get('variant', ours)} ≥ 2.5× compiled SpikingJelly",
                        extra.get("speedup_vs_spikingjelly_compiled"),
                        2.5,
                        "ratio",
                    )
                )
    return out


def targets(cases, device, device_name="", model_records=()):
    """The targets of issue 11 (the tracker's goals, not promises), checked against this run.

    CPU targets depend on the SIMD level the C++ kernels ran at (read from the device name).
    """
    avx2_only = "C++ kernels: avx2" in (device_name or "")
    out = [
        f"Project targets (internal, {'GPU' if device == 'cuda' else 'CPU'}; goals of the issue tracker, "
        f"checked against this run):"
    ]
    for case in sorted(cases, key=_case_key):
        impls, extra = cases[case], (cases[case].get(OURS) or {}).get("extra_info", {})
        op, mode, T = extra.get("op"), extra.get("mode"), extra.get("T")
        if device != "cuda":
            if op == "noisy_quant" and mode == "fwd+bwd" and extra.get("numel", 0) >= 1 << 23:
                goal = 6.0 if avx2_only else 12.0
                out.append(_check(f"{case}: ≥ {goal:g}× eager", _ratio(impls, "eager"), goal, "ratio"))
                out.append(_check(f"{case}: ≥ 50 % of copy", _fraction(impls), 0.50, "fraction"))
            if op == "integrate_fire" and mode == "fwd" and T == 8 and not avx2_only:
                out.append(_check(f"{case}: ≥ 1.3× torch.compile", _ratio(impls, "compile"), 1.3, "ratio"))
                out.append(_check(f"{case}: ≥ 10× SpikingJelly", _ratio(impls, "spikingjelly"), 10.0, "ratio"))
                out.append(_check(f"{case}: ≥ 60 % of copy", _fraction(impls), 0.60, "fraction"))
            if op == "integrate_fire" and mode == "fwd+bwd" and T == 8 and avx2_only:
                out.append(_check(f"{case}: ≥ 3× SpikingJelly", _ratio(impls, "spikingjelly"), 3.0, "ratio"))
        elif op == "noisy_quant" and mode == "fwd" and extra.get("numel", 0) >= 1 << 26:
            out.append(_check(f"{case}: ≥ 85 % of copy", _fraction(impls), 0.85, "fraction"))
            out.append(_check(f"{case}: ≥ 1.5× torch.compile", _ratio(impls, "compile"), 1.5, "ratio"))
    out.extend(_model_targets(model_records))
    if len(out) == 1:
        out.append("- no targeted case in this run")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("-o", "--output", help="write the markdown here (default: stdout)")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    text = render(data.get("benchmarks", []), data.get("machine_info"))
    header = f"# na_kernels benchmarks — {data.get('datetime', '')}\n\n"
    if args.output:
        with open(args.output, "w") as f:
            f.write(header + text + "\n")
    else:
        sys.stdout.write(header + text + "\n")


if __name__ == "__main__":
    main()
