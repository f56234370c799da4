"""Whole networks, as a user runs them (networks and variants: bench/model_cases.py).

- Training step of a CIFAR ResNet-20 (batch 64; tiny sizes: 2): NoisyQuant against the ReLU
  network and the plain-torch QCFS + noise formula, each eager and compiled, fp32 and bf16
  autocast; images/s and the peak memory of a step.
- SNN pass of the converted ResNet-20 at T = 8 (batch 64; tiny sizes: 1), fp32 and bf16:
  na_kernels with statistics off and on, compiled, channels-last (eager and compiled), and in
  the fp32 case the fast mode (bf16 channels-last) against the fp32 alternatives; the IF layers by the PyTorch
  reference loop; SpikingJelly's multi-step IFNode eager and compiled (skipped when SpikingJelly
  is not installed). Early exit at equal accuracy: test_bench_early_exit.py, in the same table.

Each case is one pytest-benchmark group; every variant is a benchmark in it with
``extra_info["table"] = "model"``, so the summary prints them in the model table: each
na_kernels variant against every other variant (bench/summarize.py, model_table).

Compiled variants (marker ``compile_model``) compile for tens of seconds each on a CPU, so they
run only for the dtypes of the size table's ``model_compile`` (full and cpu sizes: fp32; tiny:
none), or ``NA_BENCH_MODEL_COMPILE=none|fp32|all``; ``-m "not compile_model"`` deselects them.
``NA_BENCH_MODELS=resnet20,resnet18`` picks the networks (default: the size table's).
"""

import os

import model_cases
import pytest
from benchlib import SIZE_NAME, SIZES, run_case


def _architectures():
    text = os.environ.get("NA_BENCH_MODELS", "").strip()
    names = tuple(n.strip() for n in text.split(",") if n.strip()) if text else SIZES["model_archs"]
    known = ("resnet20", "resnet18")
    bad = [n for n in names if n not in known]
    if bad:
        raise pytest.UsageError(f"NA_BENCH_MODELS: unknown network(s) {bad}; accepted: {', '.join(known)}")
    return names


def _compiled_dtypes():
    text = os.environ.get("NA_BENCH_MODEL_COMPILE", "").strip().lower()
    if not text:
        return SIZES["model_compile"]
    choices = {"none": (), "fp32": ("fp32",), "all": ("fp32", "bf16")}
    if text not in choices:
        raise pytest.UsageError(f"NA_BENCH_MODEL_COMPILE must be one of {sorted(choices)}, got {text!r}")
    return choices[text]


ARCHS = _architectures()
DTYPES = ("fp32", "bf16")
COMPILE_MARK = pytest.mark.compile_model


def _skip_compiled_unless_enabled(compiled, dtype):
    if compiled and dtype not in _compiled_dtypes():
        pytest.skip(
            f"compiled model case not enabled for {dtype} at sizes {SIZE_NAME!r} (compiling takes tens of "
            "seconds a network): NA_BENCH_MODEL_COMPILE=fp32|all turns it on (bench/README.md)"
        )


def _train_params():
    for arch in ARCHS:
        for dtype in DTYPES:
            for activation in model_cases.TRAIN_ACTIVATIONS:
                yield pytest.param(arch, dtype, activation, False, id=f"{arch}-{dtype}-{activation}-eager")
                yield pytest.param(
                    arch, dtype, activation, True, id=f"{arch}-{dtype}-{activation}-compiled", marks=COMPILE_MARK
                )


@pytest.mark.parametrize("arch, dtype, activation, compiled", list(_train_params()))
def test_train_step(benchmark, copy_bandwidth, fresh_compiler, arch, dtype, activation, compiled):
    _skip_compiled_unless_enabled(compiled, dtype)
    if activation.startswith("noisy_quant"):
        pytest.importorskip("na_kernels.nn")
    batch = SIZES["train_batch"]
    step = model_cases.train_step(arch, activation, batch, dtype=dtype, compiled=compiled)
    impl = activation + ("_compiled" if compiled else "")
    title = model_cases.ACTIVATION_TITLES[activation] + (" compiled" if compiled else " eager")
    info = {
        "table": "model",
        "op": "train_step",
        "variant": title,
        "ours": activation.startswith("noisy_quant"),
        "arch": arch,
        "batch": batch,
        "dtype": dtype,
        "p": model_cases.P,
        "compiled": compiled,
        "autocast": "bf16" if dtype == "bf16" else None,
    }
    step()  # the first step makes the optimizer state (and compiles); peak_memory measures a later one
    info.update(model_cases.peak_memory(step))
    run_case(
        benchmark,
        step,
        group=f"{arch} train step batch {batch} {dtype}",
        impl=impl,
        copy_bandwidth=copy_bandwidth,
        items=batch,
        item_name="images",
        min_rounds=3,
        warmup=0,
        info=info,
    )


def _snn_params():
    for arch in ARCHS:
        for dtype in DTYPES:
            for impl in model_cases.SNN_IMPLS:
                if dtype != "fp32" and impl in model_cases.SNN_FP32_ONLY:
                    continue
                marks = (COMPILE_MARK,) if impl.endswith("_compiled") else ()
                yield pytest.param(arch, dtype, impl, id=f"{arch}-{dtype}-{impl}", marks=marks)


@pytest.mark.parametrize("arch, dtype, impl", list(_snn_params()))
def test_snn_pass(benchmark, copy_bandwidth, fresh_compiler, arch, dtype, impl):
    _skip_compiled_unless_enabled(impl.endswith("_compiled"), dtype)
    if impl.startswith("spikingjelly") and model_cases.spikingjelly_missing():
        pytest.skip(model_cases.spikingjelly_missing())
    pytest.importorskip("na_kernels.nn")
    T, batch = SIZES["snn_T"], SIZES["snn_batch"]
    infer, snn, _ = model_cases.snn_pass(arch, impl, T, batch, dtype)
    info = {
        "table": "model",
        "op": "snn_pass",
        "variant": model_cases.SNN_TITLES[impl],
        "ours": impl in model_cases.SNN_OURS,
        "arch": arch,
        "T": T,
        "batch": batch,
        "dtype": dtype,
        "if_layers": len(snn.if_layers),
    }
    infer()
    info.update(model_cases.peak_memory(infer))
    run_case(
        benchmark,
        infer,
        group=f"{arch} SNN T={T} batch {batch} {dtype}",
        impl=impl,
        copy_bandwidth=copy_bandwidth,
        items=batch,
        item_name="images",
        min_rounds=3,
        warmup=0,
        info=info,
    )
