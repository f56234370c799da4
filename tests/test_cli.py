"""The na-kernels command line: train -> evaluate -> convert, errors (the demo: test_demo.py)."""
import json
import os
import subprocess
import sys

import pytest

from na_kernels.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


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
