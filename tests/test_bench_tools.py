"""The benchmark's own instruments (bench/): the model table of the summary and the peak-memory
measurement of a call. No timing here: only that they compute what they claim."""

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import summarize  # noqa: E402  (bench/ is not a package: its folder goes on sys.path first)


def _record(case, impl, seconds, ours, memory=None, table="model", **extra):
    info = {"case": case, "impl": impl, "time_s": seconds, "ours": ours, "table": table, "variant": impl.upper()}
    if memory is not None:
        info["peak_memory_bytes"] = memory
    info.update(extra)
    return {"group": case, "name": impl, "extra_info": info, "stats": {"median": seconds}}


def test_model_table_ratios_every_variant_against_every_alternative():
    case = "resnet20 train step batch 2 fp32"
    records = [
        _record(case, "noisy_quant", 0.2, True, 100 << 20, op="train_step"),
        _record(case, "noisy_quant_compiled", 0.1, True, 80 << 20, op="train_step"),
        _record(case, "relu", 0.1, False, 50 << 20, op="train_step"),
        _record(case, "relu_compiled", 0.05, False, op="train_step"),
        _record("integrate_fire fwd T=8", "na_kernels", 1.0, None, table=None),
        _record("integrate_fire fwd T=8", "eager", 4.0, None, table=None),
    ]
    text = summarize.render(records)
    extra = records[0]["extra_info"]
    assert extra["speedup_vs_relu"] == pytest.approx(0.5) and extra["memory_vs_relu"] == pytest.approx(2.0)
    assert "speedup_vs_noisy_quant_compiled" not in extra  # ours against alternatives only
    assert "memory_vs_relu_compiled" not in extra  # no memory measured there
    assert records[1]["extra_info"]["speedup_vs_relu_compiled"] == pytest.approx(0.5)
    assert records[4]["extra_info"]["speedup_vs_eager"] == pytest.approx(4.0)  # the op table as before
    model_rows = [line for line in text.splitlines() if line.startswith(f"| {case} |")]
    assert len(model_rows) == 2 and "0.50× RELU" in model_rows[0] and "2.00× RELU" in model_rows[0]
    assert "| integrate_fire | fwd T=8 |" in text
    # issue 26's targets: NoisyQuant's eager step costs 2x ReLU's, memory 2x, compiling helps
    assert f"- {case}: NoisyQuant's step eager ≤ 1.05× the ReLU network's: 2.00× — MISSED by 1.90×" in text
    assert f"- {case}: NoisyQuant's peak memory ≤ the ReLU network's: 2.00× — MISSED by 2.00×" in text
    assert f"- {case}: compiled NoisyQuant never slower than eager (eager / compiled): 2.00× — met" in text


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_peak_memory_sees_a_touched_allocation_and_nothing_else():
    import model_cases

    size = 64 << 20

    def touch():
        torch.ones(size // 4)  # written, freed at return

    busy, idle = model_cases.peak_memory(touch), model_cases.peak_memory(lambda: None)
    if not busy:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert size - (1 << 20) <= busy["peak_memory_bytes"] < size + (16 << 20)  # other pages come and go
    assert idle["peak_memory_bytes"] < 4 << 20


def test_spikingjelly_baseline_is_the_same_network():
    pytest.importorskip("spikingjelly.activation_based.neuron")
    import model_cases

    snn = model_cases.converted("resnet20", 4)
    sj = model_cases.spikingjelly_snn(snn)
    assert sj.if_layers and all(type(layer).__name__ == "SpikingJellyIF" for layer in sj.if_layers.values())
    x, _ = model_cases.images(2)
    with torch.no_grad():
        torch.testing.assert_close(sj(x), snn(x), rtol=0, atol=0)  # same sums, same order: bitwise
    assert snn.statistics()["total"]["spikes"] > 0
