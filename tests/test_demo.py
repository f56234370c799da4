"""na-kernels demo (na_kernels.app.demo): the numbers over seeds and the sentence computed from them
(fast, on small made-up inputs), the plot, and the quick demo end to end (slow)."""

import io
import json
import re
import sys
from contextlib import redirect_stdout

import pytest
import torch

from na_kernels.app import demo
from na_kernels.app.cli import main
from na_kernels.app.datasets import BatchLoader, mnist10k_split
from na_kernels.app.train import evaluate
from na_kernels.nn import clipped_network

TS = (1, 2, 4, 8, 16, 32, 64)


def _run(ann, limit, accs, seed=0):
    """One seed's numbers (accuracies in %, one per T in TS), as the demo records them."""
    acc = {T: a / 100 for T, a in zip(TS, accs)}
    curve = [acc[max(T for T in TS if T <= t)] for t in range(1, 65)]
    return {
        "seed": seed,
        "ann": ann / 100,
        "limit": limit / 100,
        "acc": acc,
        "curve": curve,
        "stats": {"64": {"firing_rate": 0.1, "energy_ratio": 1.0}, "4": {"firing_rate": 0.1, "energy_ratio": 0.2}},
    }


# seed by seed: a QCFS SNN that peaks at T = 2 and falls to its worse clipped network, and a
# noise-trained one that rises to its limit
QCFS_COLLAPSE = [
    _run(97.0, 57.0, [90, 97.7, 96, 93.9, 75.6, 66.8, 60.0], 0),
    _run(97.4, 60.0, [91, 97.0, 97.2, 94.0, 80.0, 70.0, 62.0], 1),
]
NOISE_RISES = [
    _run(97.5, 97.8, [80, 92, 96, 97.5, 97.8, 97.8, 97.8], 0),
    _run(97.6, 97.9, [82, 93, 96.5, 97.6, 97.8, 97.9, 97.9], 1),
]
# both level at long T; the noise behind at T = 1 in both seeds, level at T = 2 and 4
QCFS_LEVEL = [_run(98.0, 98.1, [92, 96, 97, 98, 98, 98, 98.1], 0), _run(98.2, 98.0, [90, 97.5, 98, 98, 98, 98, 98], 1)]
# at T = 1 one seed 10 points ahead, one 10 behind; at T = 2 both 0.5 ahead
QCFS_MIXED = [_run(98.0, 98.0, [80, 97, 98, 98, 98, 98, 98], 0), _run(98.0, 98.0, [90, 97, 98, 98, 98, 98, 98], 1)]
NOISE_MIXED = [_run(98.0, 98.0, [90, 97.5, 98, 98, 98, 98, 98], 0), _run(98.0, 98.0, [80, 97.5, 98, 98, 98, 98, 98], 1)]
NOISE_LEVEL = [
    _run(98.1, 98.2, [63, 96.5, 97.5, 98, 98.1, 98.2, 98.2], 0),
    _run(98.0, 98.1, [70, 97.0, 98.2, 98, 98.1, 98.1, 98.1], 1),
]


def _describe(noisy, qcfs):
    a, b = demo.summarize(noisy, TS), demo.summarize(qcfs, TS)
    return demo.describe(a, b, demo.paired_difference(noisy, qcfs, TS), TS)


def test_summarize_mean_min_max_peak_and_fall():
    s = demo.summarize(QCFS_COLLAPSE, TS)
    assert s["ann"]["per_seed"] == pytest.approx([0.97, 0.974])
    assert s["ann"]["min"] == s["ann"]["per_seed"][0] and s["ann"]["max"] == s["ann"]["per_seed"][1]
    assert s["ann"]["mean"] == pytest.approx(0.972)
    assert s["snn"][64]["mean"] == pytest.approx(0.61) and s["snn"][64]["min"] == 0.60
    assert s["peak_T"] == [2, 4]  # the best T of each seed
    assert s["fall"]["per_seed"] == pytest.approx([0.977 - 0.60, 0.972 - 0.62])
    tie = demo.summarize([_run(90, 90, [90, 95, 95, 95, 95, 95, 95])], TS)
    assert tie["peak_T"] == [2] and tie["fall"]["per_seed"] == [0.0]  # the smallest T on a tie


def test_paired_difference_is_seed_by_seed():
    d = demo.paired_difference(NOISE_LEVEL, QCFS_LEVEL, TS)
    assert d[1]["per_seed"] == pytest.approx([-0.29, -0.20]) and d[1]["max"] == pytest.approx(-0.20)
    assert d["limit"]["per_seed"] == pytest.approx([0.001, 0.001])
    assert d["ann"]["mean"] == pytest.approx(-0.0005)
    with pytest.raises(ValueError, match="same seeds on both sides"):
        demo.paired_difference(NOISE_LEVEL, QCFS_LEVEL[:1], TS)


def test_sentence_names_the_collapse_when_every_seed_shows_it():
    text = _describe(NOISE_RISES, QCFS_COLLAPSE)
    assert text.startswith(
        "This run shows the collapse without noise: in every seed the QCFS SNN peaks early (T = 2, 4)"
    )
    assert "falls by 36.4 [35.2..37.7] points to 61.0 [60.0..62.0] % at T = 64" in text
    assert "towards its clipped network (58.5 [57.0..60.0] %, ANN 97.2 [97.0..97.4] %)" in text
    assert "while the noise-trained SNN reaches 97.9 [97.8..97.9] % at T = 64" in text
    assert (
        "against QCFS with the same seed, the noise-trained SNN is behind at T = 1 (-9.5 [-10.0..-9.0] points), "
        "behind at T = 2 (-4.8 [-5.7..-4.0] points), level at T = 4 (-0.4 [-0.7..+0.0] points)."
    ) in text
    assert text.count(". ") == 0  # one sentence


def test_sentence_says_when_the_collapse_does_not_show_and_the_low_T_words():
    text = _describe(NOISE_LEVEL, QCFS_LEVEL)
    assert text.startswith("In this run neither SNN falls at long T")
    assert "the collapse without noise does not show here" in text
    assert "within 1 point of its ANN" in text
    # T = 1: both seeds more than 1 point behind; T = 2: +0.5 and -0.5, so level; T = 4: +0.5, +0.2
    assert "behind at T = 1 (-24.5 [-29.0..-20.0] points)" in text
    assert "level at T = 2 (+0.0 [-0.5..+0.5] points)" in text and "level at T = 4" in text
    ahead = _describe(QCFS_LEVEL, NOISE_LEVEL)  # the roles swapped: now "ahead"
    assert "ahead at T = 1 (+24.5 [+20.0..+29.0] points)" in ahead
    mixed = _describe(NOISE_MIXED, QCFS_MIXED)
    assert "ahead in some seeds, behind in others at T = 1 (+0.0 [-10.0..+10.0] points)" in mixed
    assert "level at T = 2 (+0.5 [+0.5..+0.5] points)" in mixed
    # T = 2: one seed 1.5 points behind, the other 0.5: behind in some, level in others
    partly = [_run(98.0, 98.0, [90, 95.5 + 1.0 * k, 98, 98, 98, 98, 98], k) for k in (0, 1)]
    assert "behind in some seeds, level in others at T = 2 (-1.0 [-1.5..-0.5] points)" in _describe(partly, QCFS_MIXED)


def test_sentence_when_the_noise_trained_snn_falls_and_for_one_seed():
    text = _describe(QCFS_COLLAPSE[:1], NOISE_LEVEL[:1])
    assert text.startswith("In this run the noise-trained SNN falls at long T in this seed")
    assert "QCFS 0.0, noise 37.7 points" in text and "[" not in text  # one seed: no range
    assert "ahead at T = 1 (+27.0 points)" in text
    both = _describe(QCFS_COLLAPSE, QCFS_COLLAPSE)
    assert both.startswith("In this run both SNNs fall at long T in every seed")
    # one seed that does not fall is enough to withhold "the collapse"
    mixed = QCFS_COLLAPSE[:1] + QCFS_LEVEL[1:]
    assert _describe(NOISE_RISES, mixed).startswith("In this run neither SNN falls")


def _results(noisy, qcfs):
    results = [
        {"name": "NoisyQuant (uniform noise)", "noise": "uniform", "runs": noisy},
        {"name": "QCFS (no noise)", "noise": "none", "runs": qcfs},
    ]
    for r in results:
        r["summary"] = demo.summarize(r["runs"], TS)
    return results


def test_table_has_a_mean_row_and_a_min_max_row_per_model():
    table = demo._demo_table(_results(NOISE_LEVEL, QCFS_LEVEL), TS, 4)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["model", "ANN", "limit", "T=1"] and len(lines) == 2 + 4
    assert lines[2].startswith("NoisyQuant (uniform noise)") and lines[2].split()[3:6] == ["98.0", "98.2", "66.5"]
    assert lines[3].split()[-9:] == [
        "98.0..98.1",
        "98.1..98.2",
        "63.0..70.0",
        "96.5..97.0",
        "97.5..98.2",
        "98.0..98.0",
        "98.1..98.1",
        "98.1..98.2",
        "98.1..98.2",
    ]
    one = demo._demo_table(_results(NOISE_LEVEL[:1], QCFS_LEVEL[:1]), TS, 4)
    assert "min..max" not in one and len(one.splitlines()) == 4


def test_first_images_is_a_fixed_mix_of_classes():
    _, test = mnist10k_split()
    a, b = demo.first_images(test, 300), demo.first_images(test, 300)
    assert len(a) == 300 and torch.equal(a.images, b.images)
    assert torch.bincount(a.labels, minlength=10).min() >= 15  # every digit, not only the first ones
    assert len(demo.first_images(test, 10**6)) == len(test)


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    results = _results(NOISE_LEVEL, QCFS_LEVEL)
    diff = demo.paired_difference(NOISE_LEVEL, QCFS_LEVEL, TS)
    path = demo._demo_plot(results, diff, str(tmp_path / "p.png"), TS, 3, "digits", [0, 1])
    assert path and (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_defaults_follow_the_data_set():
    from na_kernels.app.cli import build_parser

    def settings(*argv):
        args = demo.apply_data_defaults(build_parser().parse_args(["demo", *argv]))
        return args.epochs, args.p, args.optimizer, args.lr

    assert settings() == (3, 1, "adam", 0.001)
    assert settings("--data", "digits") == (15, 3, "sgd", 0.05)
    assert settings("--optimizer", "sgd", "--p", "3") == (3, 3, "sgd", 0.05)
    assert settings("--lr", "0.01", "--epochs", "2") == (2, 1, "adam", 0.01)


# ------------------------------------------------------------------------------- end to end (slow)


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
            assert (
                main(
                    [
                        "demo",
                        "--quick",
                        "--seeds",
                        "2",
                        "--test-limit",
                        "100",
                        "--out",
                        str(out),
                        "--no-progress",
                        "--exit-confidence",
                        "0.9",
                        "--workers",
                        "1",
                    ]
                )
                == 0
            )
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    report = json.loads((out / "demo_report.json").read_text())
    return text.getvalue(), report, models, out


def _row(text, name):
    """The table row of ``name``: [ANN, limit, T=1, ..., T=64] as printed (%)."""
    line = next(row for row in text.splitlines() if row.startswith(name) and re.search(r"x ANN$", row))
    return [float(v) for v in line[len(name) :].split()[: 2 + len(TS)]]


@pytest.mark.slow
def test_quick_demo_table_report_and_sentence(quick):
    text, report, _, out = quick
    assert report["quick"] and report["T"] == list(TS) and report["seeds"] == [0, 1]
    assert report["dataset"]["test"] == 100 and report["model"] == "mnist_cnn"
    assert (report["p"], report["optimizer"], report["lr"], report["weight_decay"]) == (1, "adam", 0.001, 0.0)
    assert [r["noise"] for r in report["results"]] == ["uniform", "none"]
    for r in report["results"]:
        assert [run["seed"] for run in r["runs"]] == [0, 1]
        for run in r["runs"]:
            assert run["ann"] >= 0.8, r["name"]  # 1 epoch; chance is 10 %
            assert len(run["curve"]) == 64 and run["curve"][3] == run["acc"]["4"]
            assert len(run["lambda"]) == 4 and all(lam > 0 for lam in run["lambda"])
        assert r["summary"]["snn"]["64"]["min"] == min(run["acc"]["64"] for run in r["runs"])
        printed = _row(text, r["name"])
        assert printed[0] == round(100 * r["summary"]["ann"]["mean"], 1)
        assert printed[2:] == [round(100 * r["summary"]["snn"][str(T)]["mean"], 1) for T in TS]
    assert bool(report["results"][0]["runs"][0]["early_exit"]) and not report["results"][0]["runs"][1]["early_exit"]
    assert report["finding"] in text and report["finding"].endswith(".")
    assert "noise minus QCFS, same seed (points): T=1 " in text
    try:
        import matplotlib  # noqa: F401

        assert (out / "demo_accuracy_vs_T.png").stat().st_size > 1000
    except ImportError:
        assert "matplotlib is not installed" in text


@pytest.mark.slow
def test_printed_limit_is_the_clipped_networks_accuracy(quick):
    _, report, models, _ = quick
    assert len(models) == 4  # 2 seeds x 2 variants, seed by seed
    test = demo.first_images(mnist10k_split()[1], 100)
    runs = [run for seed in (0, 1) for r in report["results"] for run in r["runs"] if run["seed"] == seed]
    for run, model in zip(runs, models):
        assert run["limit"] == evaluate(clipped_network(model), BatchLoader(test, 100), amp=False, show_progress=False)
        assert run["ann"] == evaluate(model, BatchLoader(test, 100), amp=False, show_progress=False)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_demo_seed_reproducible_and_runs_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    args = [
        "demo",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--seeds",
        "1",
        "--test-limit",
        "40",
        "--no-progress",
        "--seed",
        "3",
        "--exit-confidence",
    ]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert "plot:   skipped, matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "a" / "demo_accuracy_vs_T.png").exists()
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "demo_report.json").read_text())
    b = json.loads((tmp_path / "b" / "demo_report.json").read_text())
    assert a["seeds"] == [3] and a["model"] == "digits_cnn"
    assert (a["p"], a["optimizer"], a["lr"], a["momentum"]) == (3, "sgd", 0.05, 0.9)
    for ra, rb in zip(a["results"], b["results"]):
        for x, y in zip(ra["runs"], rb["runs"]):
            assert x["ann"] == y["ann"] and x["curve"] == y["curve"] and x["lambda"] == y["lambda"]
            assert x["limit"] == y["limit"] and x["history"] == y["history"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_demo_numbers_do_not_depend_on_the_worker_count(tmp_path, capsys):
    args = ["demo", "--data", "digits", "--epochs", "1", "--seeds", "2", "--test-limit", "40", "--no-progress"]
    args += ["--no-plot", "--exit-confidence", "0.9"]
    for workers in ("1", "2"):
        assert main(args + ["--workers", workers, "--out", str(tmp_path / workers)]) == 0
    text = capsys.readouterr().out
    assert "1 thread(s) in each of 2 worker processes" in text and "[4/4] seed" in text
    one, two = (json.loads((tmp_path / w / "demo_report.json").read_text()) for w in ("1", "2"))
    assert one["table"] == two["table"] and one["finding"] == two["finding"]
    for r1, r2 in zip(one["results"], two["results"]):
        assert [run["seed"] for run in r1["runs"]] == [run["seed"] for run in r2["runs"]] == [0, 1]
        for x, y in zip(r1["runs"], r2["runs"]):
            for key in ("ann", "limit", "curve", "lambda", "history", "stats", "early_exit"):
                assert x[key] == y[key], key


# ------------------------------------------------------------------------------- README's paper-scale path


def _paper_scale_commands():
    import os
    import shlex

    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    if not os.path.isfile(readme):  # an installed copy without the repository files
        pytest.skip("README.md not found")
    text = open(readme, encoding="utf-8").read()
    block = text.split("**Paper scale: CIFAR-10, ResNet-18 (not yet run by the project).**")[1]
    block = block.split("```bash\n")[1].split("```")[0].replace("\\\n", " ")
    commands = []
    for p in ("3", "7", "15"):
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("na-kernels "):
                commands.append(shlex.split(line.replace("$p", p))[1:])
    return commands


def test_readme_paper_scale_commands_parse_and_stop_clearly_without_data(tmp_path, capsys, monkeypatch):
    from na_kernels.app.cli import build_parser

    commands = _paper_scale_commands()
    assert [c[0] for c in commands] == ["train", "convert"] * 3
    for command in commands:
        args = build_parser().parse_args(command)
        if command[0] == "train":
            assert (args.arch, args.dataset, args.epochs, args.lr) == ("resnet18", "cifar10", 300, 0.1)
            assert args.batch_size == 128 and args.momentum == 0.9
            assert args.p in (3, 7, 15) and args.noise == "uniform" and args.weight_decay == 5e-4
        else:
            assert args.T == 16
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/data: an empty home
    (tmp_path / "data").mkdir()
    train = [a.replace("~", str(tmp_path)) for a in commands[0]]
    train[train.index("--out") + 1] = str(tmp_path / "runs")
    assert main(train) == 2
    assert "CIFAR-10: expected" in capsys.readouterr().err
    convert = [a.replace("runs/", str(tmp_path / "runs") + "/") for a in commands[1]]
    assert main(convert) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_out_an_existing_file_is_a_clean_error_before_any_training(tmp_path, capsys, monkeypatch):
    file = tmp_path / "results"
    file.write_text("not a folder")
    monkeypatch.setattr(demo, "_demo", lambda *a, **k: pytest.fail("the demo ran before --out was checked"))
    assert main(["demo", "--quick", "--out", str(file)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file, not a folder" in err and "Traceback" not in err
