"""Per-sample early exit against the fixed-T run, on the demo's noise model (digits_cnn, p = 3,
uniform noise; trained once per session by the demo's own training function, or loaded from
``NA_BENCH_EXIT_MODEL``, a torch.save'd model): the held-out digits (539 images) in batches of
256 at T = 8, fixed T against the early exit at the confidence threshold ``bench/early_exit.py``
keeps (the smallest mean exit step within 0.2 points of the fixed-T accuracy), chunk 1 and 2;
and the compaction between two chunks (every IF layer's potential, the input and the stem's
outputs, to half of a batch of 256) on its own. Statistics off. ``python bench/early_exit.py`` prints the same with
the targets; the numbers here are images/s (extra_info["images_per_s"]). The fixed-T run and the
early exits are one case of the summary's model table (each early exit's ratio to the fixed run,
the accuracies in the variant's name); the compaction cases are in the op table.
"""

import os

import early_exit as bench_exit
import pytest
import torch
from benchlib import DEVICE, SIZE_NAME, run_case

T = 8
BATCH = 256
THRESHOLDS = bench_exit.DEFAULT_THRESHOLDS


@pytest.fixture(scope="module")
def setup():
    from na_kernels.app.datasets import BatchLoader, digits_split
    from na_kernels.app.train import evaluate_snn
    from na_kernels.nn import exit_tradeoff, to_snn

    path = os.environ.get("NA_BENCH_EXIT_MODEL")
    if path:
        model = torch.load(path, weights_only=False).eval()
    else:
        model, _ = bench_exit.demo_model(epochs=3 if SIZE_NAME == "tiny" else None)
    _, test = digits_split()
    snn = to_snn(model, T).to(DEVICE).eval()
    batches = [(x, y) for x, y in BatchLoader(test, BATCH, device=DEVICE)]
    fixed_acc = evaluate_snn(snn, batches, T=T, show_progress=False)[-1]
    rows = exit_tradeoff(snn, batches, THRESHOLDS, T_max=T)
    eligible = [r for r in rows if r["accuracy"] >= fixed_acc - 0.002 - 1e-12] or rows[-1:]
    kept = min(eligible, key=lambda r: (r["mean_exit_step"], -r["accuracy"]))
    snn.record_statistics(False)
    return dict(snn=snn, batches=batches, images=len(test), fixed_acc=fixed_acc, kept=kept)


GROUP = f"early_exit digits T={T} batch {BATCH}"  # fixed T and the early exits: one model-table case


def test_fixed_T(benchmark, copy_bandwidth, setup):
    run_case(
        benchmark,
        bench_exit.fixed_run(setup["snn"], setup["batches"], T),
        group=GROUP,
        impl="fixed",
        copy_bandwidth=copy_bandwidth,
        items=setup["images"],
        item_name="images",
        min_rounds=3,
        info={
            "table": "model",
            "ours": False,
            "variant": f"fixed T={T} ({100 * setup['fixed_acc']:.1f} %)",
            "op": "early_exit",
            "mode": "fixed",
            "T": T,
            "batch": BATCH,
            "accuracy": setup["fixed_acc"],
        },
    )


@pytest.mark.parametrize("chunk", [1, 2])
def test_early_exit(benchmark, copy_bandwidth, setup, chunk):
    from na_kernels.nn import ExitRule

    kept = setup["kept"]
    rule = ExitRule(confidence=kept["confidence"])
    variant = (
        f"early exit {rule.describe()}, chunk {chunk} ({100 * kept['accuracy']:.1f} %, "
        f"mean exit step {kept['mean_exit_step']:.2f})"
    )
    run_case(
        benchmark,
        bench_exit.adaptive_run(setup["snn"], setup["batches"], rule, T, chunk),
        group=GROUP,
        impl=f"early_exit_chunk{chunk}",
        copy_bandwidth=copy_bandwidth,
        items=setup["images"],
        item_name="images",
        min_rounds=3,
        info={
            "table": "model",
            "ours": True,
            "variant": variant,
            "op": "early_exit",
            "mode": "adaptive",
            "T": T,
            "chunk": chunk,
            "batch": BATCH,
            "confidence": kept["confidence"],
            "accuracy": kept["accuracy"],
            "fixed_accuracy": setup["fixed_acc"],
            "mean_exit_step": kept["mean_exit_step"],
        },
    )


@pytest.mark.parametrize("chunk", [1, 2])
def test_compaction(benchmark, copy_bandwidth, setup, chunk):
    snn = setup["snn"]
    x = setup["batches"][0][0]
    one_chunk, compaction = bench_exit.chunk_and_compaction(snn, x, chunk)
    try:
        one_chunk()
        moved = sum(v.numel() * v.element_size() for v in (layer.v for layer in snn.if_layers.values()))
        run_case(
            benchmark,
            compaction,
            group=f"early_exit compaction after a chunk of {chunk} at batch {x.shape[0]}",
            impl="na_kernels",
            copy_bandwidth=copy_bandwidth,
            bytes_moved=moved,  # half read, half written
            info={"op": "early_exit_compaction", "mode": "compaction", "chunk": chunk, "batch": x.shape[0]},
        )
    finally:
        snn._set(carry_state=False, v=None, time_steps=1)
