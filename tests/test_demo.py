"""na-kernels demo (na_kernels.demo): the quick demo end to end, the shape of its result, reproducibility."""
import io
import json
import re
import sys
from contextlib import redirect_stdout

import pytest
import torch

from na_kernels import demo
from na_kernels.cli import main
from na_kernels.datasets import BatchLoader, digits_split
from na_kernels.nn import clipped_network
from na_kernels.train import evaluate

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # trains networks

TS = ["1", "2", "4", "8", "16", "32", "64"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick demo's printed text, report and trained models (captured from _demo_train)."""
    out = tmp_path_factory.mktemp("demo")
    models = []
    train_variant = demo._demo_train

    def capture(*args, **kwargs):
        trained = train_variant(*args, **kwargs)
        models.append(trained["model"])
        return trained

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setattr(demo, "_demo_train", capture)
    text = io.StringIO()
    try:
        with redirect_stdout(text):
            assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    report = json.loads((out / "demo_report.json").read_text())
    return text.getvalue(), report, models, out


def _row(text, name):
    """The table row of ``name``: [ANN, limit, T=1, ..., T=64] as printed (%)."""
    line = next(l for l in text.splitlines() if l.startswith(name) and re.search(r"x ANN$", l))
    return [float(v) for v in line[len(name):].split()[:2 + len(TS)]]


def test_quick_demo_table_and_report_shape(quick):
    text, report, _, out = quick
    for header in ["ANN", "limit"] + [f"T={T}" for T in TS] + ["rate", "energy"]:
        assert header in text
    assert report["quick"] and report["T"] == [int(T) for T in TS]
    assert [r["noise"] for r in report["results"]] == ["uniform", "none"]
    assert report["p"] == 3 and report["results"][0]["name"] == "NoisyQuant (uniform noise)"
    for r in report["results"]:
        assert r["ann_acc"] >= 0.85, r["name"]  # 3 epochs; chance is 10 %
        per_T = r["snn"]["per_T"]
        assert list(per_T) == TS
        curve = r["snn"]["acc_every_t"]
        assert len(curve) == 64 and abs(curve[3] - per_T["4"]["acc"]) < 1e-12  # t-step run == prefix of 64
        ratios = [per_T[T]["energy_ratio"] for T in TS]
        assert ratios == sorted(ratios) and ratios[0] > 0  # energy grows with T
        assert len(r["lambda"]) == 5 and all(l > 0 for l in r["lambda"])
        printed = _row(text, r["name"])
        assert printed[0] == round(100 * r["ann_acc"], 1) and printed[1] == round(100 * r["limit_acc"], 1)
        assert printed[2:] == [round(100 * per_T[T]["acc"], 1) for T in TS]
    noisy = report["results"][0]
    # with noise the SNN converges to its limit: at T = 64 within 1 point (2 of 200 test images)
    assert abs(noisy["snn"]["per_T"]["64"]["acc"] - noisy["limit_acc"]) <= 0.01 + 1e-9
    assert "SNN best" in text and "its limit" in text
    try:
        import matplotlib  # noqa: F401

        assert (out / "demo_accuracy_vs_T.png").stat().st_size > 1000
    except ImportError:
        assert "matplotlib is not installed" in text


def test_printed_limit_is_the_clipped_networks_accuracy(quick):
    _, report, models, _ = quick
    assert len(models) == 2
    _, test = digits_split()
    test = test.subset(torch.arange(200))
    for r, model in zip(report["results"], models):
        acc = evaluate(clipped_network(model), BatchLoader(test, 100), amp=False, show_progress=False)
        assert r["limit_acc"] == acc, r["name"]
        assert r["ann_acc"] == evaluate(model, BatchLoader(test, 100), amp=False, show_progress=False)


def test_demo_seed_reproducible_and_runs_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    args = ["demo", "--epochs", "1", "--test-limit", "40", "--no-progress", "--seed", "3"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert "plot:   skipped, matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "a" / "demo_accuracy_vs_T.png").exists()
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "demo_report.json").read_text())
    b = json.loads((tmp_path / "b" / "demo_report.json").read_text())
    for ra, rb in zip(a["results"], b["results"]):
        assert ra["ann_acc"] == rb["ann_acc"] and ra["snn"] == rb["snn"] and ra["lambda"] == rb["lambda"]
        assert ra["limit_acc"] == rb["limit_acc"] and ra["history"] == rb["history"]
