"""The na-kernels command line: the demo end to end, train -> evaluate -> convert, errors."""
import json
import os
import subprocess
import sys

import pytest

from na_kernels.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_quick_end_to_end_accuracy_floor(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for header in ("ANN", "T=1", "T=2", "T=4", "T=8", "T=16", "T=32", "rate", "energy"):
        assert header in text
    assert "NoisyQuant (uniform noise)" in text and "QCFS (no noise)" in text
    report = json.loads((out / "demo_report.json").read_text())
    assert report["quick"] and report["T"] == [1, 2, 4, 8, 16, 32]
    names = [r["noise"] for r in report["results"]]
    assert names == ["uniform", "none"]
    for r in report["results"]:
        # floors for 3 epochs on the 8x8 digits (chance is 10 %); full demo reaches ~99 %
        assert r["ann_acc"] >= 0.85, r["name"]
        per_T = r["snn"]["per_T"]
        assert per_T["1"]["acc"] >= 0.5, r["name"]
        for T in ("4", "8", "16", "32"):
            assert per_T[T]["acc"] >= 0.85, (r["name"], T)
        curve = r["snn"]["acc_every_t"]
        assert len(curve) == 32 and abs(curve[3] - per_T["4"]["acc"]) < 1e-12  # t-step run == prefix of 32
        assert 0.0 < per_T["32"]["firing_rate"] < 1.0
        ratios = [per_T[T]["energy_ratio"] for T in ("1", "2", "4", "8", "16", "32")]
        assert ratios == sorted(ratios) and ratios[0] > 0  # energy grows with T
        assert len(r["lambda"]) == 5 and all(l > 0 for l in r["lambda"])
    try:
        import matplotlib  # noqa: F401

        assert (out / "demo_accuracy_vs_T.png").stat().st_size > 1000
    except ImportError:
        assert "matplotlib is not installed" in text


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
        assert ra["history"] == rb["history"]


def test_train_evaluate_convert_on_digits(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--dataset", "digits", "--arch", "digits_cnn", "--p", "3", "--lam", "2", "--lr", "0.05",
              "--batch-size", "64", "--epochs", "2", "--out", str(run), "--no-progress", "--device", "cpu"]
    assert main(["train", *common, "--stop-after", "1"]) == 0
    assert "stopping after epoch 1" in capsys.readouterr().out
    assert main(["train", *common, "--resume"]) == 0  # default: <out>/last.pt
    text = capsys.readouterr().out
    assert "resumed from" in text and "epoch 2/2" in text and "epoch 1/2" not in text
    ckpt = str(run / "last.pt")
    assert main(["evaluate", "--checkpoint", ckpt, "--no-progress"]) == 0
    text = capsys.readouterr().out
    acc = float(text.split("test accuracy (quantized ANN, no noise) ")[1].split("%")[0])
    assert acc > 50.0
    report = tmp_path / "convert.json"
    assert main(["convert", "--checkpoint", ckpt, "--T", "8", "--report", str(report), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "SNN statistics" in text and "T:" in text
    data = json.loads(report.read_text())
    assert len(data["snn_acc_every_t"]) == 8 and data["snn_acc_every_t"][-1] > 0.5
    assert data["statistics"]["energy"]["ratio"] > 0


def test_clear_errors_for_missing_data_and_checkpoint(tmp_path, capsys):
    rc = main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "1", "--out",
               str(tmp_path / "o"), "--no-progress", "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and str(tmp_path) in err
    rc = main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1", "--out",
               str(tmp_path / "o"), "--no-progress", "--device", "cpu"])
    assert rc == 2 and "cifar-10-batches-py" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_console_entry_point_help():
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "na_kernels.cli", "--help"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0
    for command in ("demo", "train", "evaluate", "convert"):
        assert command in proc.stdout


def test_progress_falls_back_to_a_plain_stderr_line(monkeypatch, capsys):
    from na_kernels.train import progress

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    bar = progress(range(5), desc="work")
    assert list(bar) == [0, 1, 2, 3, 4]
    bar.set_postfix_str("done")
    err = capsys.readouterr().err
    assert "work: 5/5" in err
    assert list(progress(range(3), desc="quiet", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_options_follow_the_shared_argument_rules(capsys):
    from na_kernels.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--dataset", "digits", "--p", "3.0", "--noise", "none"])
    assert args.p == 3 and type(args.p) is int and args.noise == "none"
    assert parser.parse_args(["convert", "--checkpoint", "c.pt", "--T", "8"]).T == 8
    for bad, message in ((["--p", "2.5"], "p must be an int >= 1"), (["--noise", "laplace"], "invalid choice"),
                         (["--epochs", "0"], "epochs must be an int >= 1"), (["--lam", "-1"], "lam must be > 0")):
        with pytest.raises(SystemExit):
            parser.parse_args(["train", "--dataset", "digits", *bad])
        assert message in capsys.readouterr().err
