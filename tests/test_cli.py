"""The na-kernels command line: train -> evaluate -> convert, errors (the demo: test_demo.py)."""

import json
import os
import subprocess
import sys

import pytest
from cli_runs import train_digits

from na_kernels.app.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_evaluate_convert_on_digits(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_digits(run, 2, "--stop-after", "1") == 0
    assert "stopping after epoch 1" in capsys.readouterr().out
    assert train_digits(run, 2, "--resume") == 0  # default: <out>/last.pt
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
    rc = main(
        [
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path),
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and str(tmp_path) in err
    rc = main(
        [
            "train",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(tmp_path),
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert rc == 2 and "cifar-10-batches-py" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.slow
def test_console_entry_point_help():
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "na_kernels.app.cli", "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0
    for command in ("demo", "train", "evaluate", "convert"):
        assert command in proc.stdout


def test_progress_falls_back_to_a_plain_stderr_line(monkeypatch, capsys):
    from na_kernels.app.train import progress

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
    from na_kernels.app.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--dataset", "digits", "--p", "3.0", "--noise", "none"])
    assert args.p == 3 and type(args.p) is int and args.noise == "none"
    assert parser.parse_args(["convert", "--checkpoint", "c.pt", "--T", "8"]).T == 8
    for bad, message in (
        (["--p", "2.5"], "p must be an int >= 1"),
        (["--noise", "laplace"], "invalid choice"),
        (["--epochs", "0"], "epochs must be an int >= 1"),
        (["--lam", "-1"], "lam must be a finite float > min_lam"),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(["train", "--dataset", "digits", *bad])
        assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# bad input: one `na-kernels ...: error: ...` line, exit status 2, never a traceback
# ----------------------------------------------------------------------------------------


def run_cli(argv, capsys):
    """(exit status, stderr) of ``main(argv)``; an exception other than SystemExit escapes (fails)."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def assert_one_line_error(rc, err, message):
    assert rc == 2, err
    assert "Traceback" not in err and "\x1b[" not in err, err
    lines = [l for l in err.splitlines() if "error:" in l]
    assert len(lines) == 1 and lines[0].startswith("na-kernels"), err
    assert message in lines[0], err


TINY = [
    "--dataset",
    "digits",
    "--arch",
    "digits_cnn",
    "--epochs",
    "1",
    "--max-steps-per-epoch",
    "1",
    "--batch-size",
    "16",
    "--no-progress",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Paths to a good checkpoint, damaged ones, and damaged MNIST / CIFAR folders."""
    import pickle
    import struct

    import numpy as np
    import torch

    root = tmp_path_factory.mktemp("bad")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *TINY, "--out", str(root / "good")]) == 0
    finally:
        torch.set_num_threads(threads)
    good = torch.load(root / "good" / "last.pt", weights_only=True)
    paths = {"root": root, "good": root / "good" / "last.pt", "file": root / "a_file"}
    paths["file"].write_text("x")
    for name, change in (
        ("nometa", {"meta": None}),
        ("noconfig", {"config": None}),
        ("nomodel", {"model": None}),
        ("badarch", {"config": {**good["config"], "arch": "resnet9000"}}),
        ("badweights", {"model": {"stray": torch.zeros(1)}}),
        ("noopt", {"optimizer": None}),
    ):
        state = {k: v for k, v in good.items() if change.get(k, 0) is not None}
        state.update({k: v for k, v in change.items() if v is not None})
        torch.save(state, root / f"{name}.pt")
        paths[name] = root / f"{name}.pt"
    weights = good["model"]
    lam_key = next(k for k in weights if k.endswith("raw_lam"))
    conv_key = next(k for k in weights if k.endswith("weight") and weights[k].dim() == 4)
    for name, model in (
        ("nanlam", {**weights, lam_key: torch.full_like(weights[lam_key], float("nan"))}),
        ("badshape", {**weights, conv_key: torch.zeros(3, 3)}),
        ("missingkey", {k: v for k, v in weights.items() if k != conv_key}),
    ):
        torch.save({**good, "model": model}, root / f"{name}.pt")
        paths[name] = root / f"{name}.pt"
    paths["lam_key"], paths["conv_key"] = lam_key, conv_key
    (root / "garbage.pt").write_bytes(b"not a checkpoint " * 8)
    paths["garbage"] = root / "garbage.pt"
    import argparse

    torch.save({"args": argparse.Namespace(x=1)}, root / "pickled.pt")  # torch's weights_only advice, ANSI
    paths["pickled"] = root / "pickled.pt"

    def mnist(name, n=4, dims=None, magic=None):
        folder = root / name
        folder.mkdir()
        for split in ("train", "t10k"):
            images = np.zeros((n, 28, 28), np.uint8)
            head = (magic or bytes([0, 0, 8, 3])) + struct.pack(">III", *(dims or images.shape))
            (folder / f"{split}-images-idx3-ubyte").write_bytes(head + images.tobytes())
            (folder / f"{split}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", n) + bytes(n))
        return folder

    paths["mnist_good"] = mnist("mnist_good")
    paths["mnist_overflow"] = mnist("mnist_overflow", dims=(2**32 - 1,) * 3)
    paths["mnist_empty"] = mnist("mnist_empty", n=0)
    paths["mnist_magic"] = mnist("mnist_magic", magic=b"\x00\x00\x08\x01")  # a labels header on images

    def cifar(name, labels):
        folder = root / name / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            with open(folder / f, "wb") as fh:
                pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, fh)
        return root / name

    paths["cifar_text"] = cifar("cifar_text", ["cat", "dog"])
    paths["cifar_float"] = cifar("cifar_float", [0.5, 1.5])
    paths["cifar_none"] = cifar("cifar_none", [None, 1])
    return paths


def _mnist(key, *extra):
    return lambda p: [
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        str(p[key]),
        "--epochs",
        "1",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(p["root"] / "o"),
        *extra,
    ]


def _cifar(key):
    return lambda p: [
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(p[key]),
        "--epochs",
        "1",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(p["root"] / "o"),
    ]


def _train(*extra):
    return lambda p: ["train", *TINY, "--out", str(p["root"] / "o"), *extra]


def _ckpt(command, key, *extra):
    return lambda p: [command, "--checkpoint", str(p[key]), "--device", "cpu", "--no-progress", *extra]


HAS_GPU = __import__("torch").cuda.is_available()

BAD_INPUTS = [  # (id, argv from the fixture's paths, what the error line must say)
    ("lam-negative", _train("--lam", "-1"), 'lam must be a finite float > min_lam (0.001) or "auto", got -1.0'),
    ("lam-nan", _train("--lam", "nan"), "lam must be finite, got nan"),
    ("lam-word", _train("--lam", "big"), "not a number or 'auto': 'big'"),
    ("lr-negative", _train("--lr", "-0.1"), "argument --lr: lr must be > 0, got -0.1"),
    ("lr-nan", _train("--lr", "nan"), "argument --lr: lr must be finite, got nan"),
    ("momentum-negative", _train("--momentum", "-1"), "argument --momentum: momentum must be >= 0.0, got -1.0"),
    ("weight-decay-negative", _train("--weight-decay", "-1"), "weight_decay must be >= 0.0, got -1.0"),
    ("warmup-negative", _train("--warmup-epochs", "-3"), "warmup_epochs must be an int >= 0, got -3"),
    (
        "warmup-not-shorter-than-training",
        _train("--warmup-epochs", "1"),
        "warmup_epochs (1) must be fewer than epochs (1): the learning rate would never reach its peak",
    ),
    ("seed-too-large", _train("--seed", str(2**64)), "seed must be an int in 0 .. 2**32 - 1"),
    ("seed-negative", _train("--seed", "-1"), "seed must be an int >= 0, got -1"),
    (
        "batch-larger-than-data",
        _train("--batch-size", "5000"),
        "batch size 5000 x 1 process(es) is larger than the 1258 training images of digits",
    ),
    ("device-cuda", lambda p: _train()(p) + ["--device", "cuda"], "no CUDA GPU is available here"),  # no GPU only
    ("device-cuda-index", lambda p: _train()(p) + ["--device", "cuda:99"], "'cuda:99'"),
    ("device-tpu", lambda p: _train()(p) + ["--device", "tpu"], "'tpu' is not a device; use cpu, cuda or cuda:<index>"),
    ("out-is-a-file", lambda p: ["train", *TINY, "--out", str(p["file"])], "is a file, not a folder"),
    ("out-under-a-file", lambda p: ["train", *TINY, "--out", str(p["file"] / "sub")], "cannot be created: "),
    ("out-holds-a-run", lambda p: ["train", *TINY, "--out", str(p["good"].parent)], "already holds a run"),
    (
        "demo-lam-zero",
        lambda p: ["demo", "--quick", "--lam", "0", "--out", str(p["root"] / "d")],
        'argument --lam: lam must be a finite float > min_lam (0.001) or "auto", got 0',
    ),
    ("evaluate-no-meta", _ckpt("evaluate", "nometa"), "has no 'meta' (dict expected)"),
    ("evaluate-no-config", _ckpt("evaluate", "noconfig"), "has no 'config' (dict expected)"),
    ("evaluate-no-weights", _ckpt("evaluate", "nomodel"), "has no 'model' (dict expected)"),
    ("evaluate-wrong-weights", _ckpt("evaluate", "badweights"), "the weights do not fit arch 'digits_cnn'"),
    ("evaluate-unknown-arch", _ckpt("evaluate", "badarch"), "unknown architecture 'resnet9000'"),
    ("evaluate-not-a-checkpoint", _ckpt("evaluate", "garbage"), "is not a readable na_kernels checkpoint"),
    (
        "evaluate-pickled-objects",
        _ckpt("evaluate", "pickled"),
        "Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default.",
    ),
    (
        "evaluate-device-tpu",
        lambda p: ["evaluate", "--checkpoint", str(p["good"]), "--device", "tpu"],
        "'tpu' is not a device",
    ),
    ("convert-no-meta", _ckpt("convert", "nometa", "--T", "2"), "has no 'meta'"),
    ("convert-nan-lam", _ckpt("convert", "nanlam", "--T", "2"), "holds NaN or infinite values"),
    ("convert-wrong-shape", _ckpt("convert", "badshape", "--T", "2"), "1 of another shape (e.g. "),
    ("convert-missing-tensor", _ckpt("convert", "missingkey", "--T", "2"), "missing 1 (e.g. "),
    ("evaluate-nan-lam", _ckpt("evaluate", "nanlam"), "holds NaN or infinite values"),
    (
        "convert-save-under-a-file",
        lambda p: _ckpt("convert", "good", "--T", "2", "--save", str(p["file"] / "net.snn"))(p),
        "cannot be created",
    ),
    (
        "convert-report-under-a-file",
        lambda p: _ckpt("convert", "good", "--T", "2", "--report", str(p["file"] / "r.json"))(p),
        "cannot be created",
    ),
    ("resume-no-weights", lambda p: _train("--resume", str(p["nomodel"]))(p), "has no 'model'"),
    ("resume-no-optimizer", lambda p: _train("--resume", str(p["noopt"]))(p), "holds no optimizer state"),
    ("arch-unknown", _train("--arch", "resnet9000"), "argument --arch: invalid choice: 'resnet9000'"),
    (
        "mnist-arch-digits_cnn",
        _mnist("mnist_good", "--arch", "digits_cnn"),
        "arch 'digits_cnn' takes 8x8 images but dataset 'mnist' has 32x32; choose an arch for 32x32 images",
    ),
    (
        "digits-arch-vgg16",
        lambda p: ["train", *TINY, "--arch", "vgg16", "--out", str(p["root"] / "o")],
        "arch 'vgg16' takes 32x32 images but dataset 'digits' has 8x8",
    ),
    (
        "mnist-header-overflow",
        _mnist("mnist_overflow"),  # the size in exact integers, not an int64 overflow
        f"idx header says (4294967295, 4294967295, 4294967295) ({(2**32 - 1) ** 3} bytes of data)",
    ),
    ("mnist-no-images", _mnist("mnist_empty"), "holds 0 images"),
    ("mnist-bad-magic", _mnist("mnist_magic"), "bad magic number 0x00000801, expected 0x00000803"),
    ("cifar-text-labels", _cifar("cifar_text"), "'labels' must hold integer class labels, got <U3 values (e.g. 'cat')"),
    ("cifar-float-labels", _cifar("cifar_float"), "got float64 values (e.g. 0.5)"),
    ("cifar-none-labels", _cifar("cifar_none"), "got object values (e.g. None)"),
]


@pytest.mark.parametrize(
    "argv,message",
    [
        pytest.param(a, m, id=i, marks=pytest.mark.skipif(HAS_GPU and i == "device-cuda", reason="a GPU is present"))
        for i, a, m in BAD_INPUTS
    ],
)
def test_bad_input_is_one_clear_error_line(bad_inputs, capsys, argv, message):
    rc, err = run_cli(argv(bad_inputs), capsys)
    assert_one_line_error(rc, err, message)
    assert not (bad_inputs["root"] / "o" / "last.pt").exists()  # refused before training


def test_existing_run_is_kept_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = (out / "last.pt").read_bytes()
    rc, err = run_cli(["train", *TINY, "--out", str(out), "--seed", "5"], capsys)
    assert_one_line_error(rc, err, "continue it with --resume")
    assert (out / "last.pt").read_bytes() == before
    assert main(["train", *TINY, "--out", str(out), "--seed", "5", "--overwrite"]) == 0
    assert (out / "last.pt").read_bytes() != before


def test_train_writes_best_checkpoint_and_metrics(tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "3", "--max-steps-per-epoch", "4", "--lr", "0.05", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    epochs = metrics["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for e in epochs:
        assert set(e) >= {"train_loss", "train_acc", "test_acc", "lr"} and e["train_loss"] > 0
    assert epochs[0]["lr"] > epochs[1]["lr"] > epochs[2]["lr"] >= 0  # cosine
    accs = [e["test_acc"] for e in epochs]
    best_epoch = accs.index(max(accs)) + 1  # the earliest best
    assert metrics["best"] == {"epoch": best_epoch, "test_acc": max(accs), "checkpoint": str(out / "best.pt")}
    assert metrics["last"] == epochs[-1] and metrics["config"]["epochs"] == 3
    from na_kernels.app.train import load_checkpoint

    best = load_checkpoint(str(out / "best.pt"))
    assert best["epoch"] == best_epoch and load_checkpoint(str(out / "last.pt"))["epoch"] == 3
    assert f"best test accuracy {100 * max(accs):.2f}% (epoch {best_epoch})" in text
    # best.pt holds that epoch's weights: evaluating it gives its recorded accuracy
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--no-progress", "--device", "cpu"]) == 0
    assert f"{100 * max(accs):.2f}%" in capsys.readouterr().out
    assert isinstance(best["model"], dict) and all(isinstance(v, torch.Tensor) for v in best["model"].values())


def test_help_shows_every_default(capsys):
    from na_kernels.app.cli import build_parser

    parser = build_parser()
    for command, expected in (
        (
            "train",
            [
                "--epochs EPOCHS",
                "(default: 300)",
                "(default: 0.1)",
                "(default: 0.9)",
                "(default: 0.0005)",
                "(default: runs/na_kernels)",
                "(default: resnet20)",
                "(default: uniform)",
            ],
        ),
        ("evaluate", ["(default: 256)"]),
        ("convert", ["(default: 32)", "(default: 256)"]),
        ("demo", ["(default: 32)", "(default: 16)", "(default: adam 0.001, sgd 0.05)"]),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for piece in expected:
            assert piece in text, (command, piece)
        assert "(default: None)" not in text and "(default: False)" not in text
        assert text.count("(default") >= 3


def test_lam_auto_is_the_train_default_and_converts(tmp_path, capsys):
    """--lam auto (each λ from its first batch) is the default: a fixed 8 stays near chance for the
    first epochs at p = 3 (measured on the digits, see the lead's note)."""
    from na_kernels.app.cli import build_parser

    assert build_parser().parse_args(["train", "--dataset", "digits"]).lam == "auto"
    assert build_parser().parse_args(["train", "--dataset", "digits", "--lam", "2"]).lam == 2
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    from na_kernels.app.train import load_checkpoint, network_from_checkpoint

    state = load_checkpoint(str(out / "last.pt"))
    assert state["config"]["lam"] == "auto"
    lams = [float(m.lam.detach()) for m in network_from_checkpoint(state).modules() if hasattr(m, "raw_lam")]
    assert len(lams) == 5 and all(l != 8.0 for l in lams)  # each set from data, none left at the placeholder
    assert main(["convert", "--checkpoint", str(out / "last.pt"), "--T", "2", "--no-progress", "--device", "cpu"]) == 0
    assert "SNN:" in capsys.readouterr().out


@pytest.mark.parametrize("key,which", [("nanlam", "lam_key"), ("badshape", "conv_key"), ("missingkey", "conv_key")])
def test_damaged_checkpoint_error_names_the_tensor(bad_inputs, capsys, key, which):
    rc, err = run_cli(_ckpt("convert", key, "--T", "2")(bad_inputs), capsys)
    assert_one_line_error(rc, err, repr(bad_inputs[which]).strip("'"))


def test_convert_saves_a_network_that_loads(bad_inputs, tmp_path, capsys):
    import torch

    from na_kernels.app.train import load_checkpoint, network_from_checkpoint
    from na_kernels.nn import load_snn, to_snn

    path = tmp_path / "net.snn"
    assert main(_ckpt("convert", "good", "--T", "3", "--save", str(path))(bad_inputs)) == 0
    assert f"saved the SNN to {path}" in capsys.readouterr().out
    loaded = load_snn(path)
    assert loaded.T == 3 and loaded.statistics()["samples"] == 0  # saved before any run
    expected = to_snn(network_from_checkpoint(load_checkpoint(str(bad_inputs["good"]))), 3)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected(x))


def _finetune_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "finetune_snn",
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "finetune_snn.py"),
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_script_reads_a_train_checkpoint(bad_inputs):
    """python/finetune_snn.py --checkpoint <last.pt of na-kernels train> (once: KeyError 'p')."""
    import torch

    from na_kernels.nn import to_snn

    script = _finetune_script()
    model, (x_train, x_test) = script.load_ann(str(bad_inputs["good"]))
    assert x_train.shape[1:] == (1, 8, 8) and x_test.shape[1:] == (1, 8, 8)
    assert abs(float(x_train.mean())) < 0.2 and 0.8 < float(x_train.std()) < 1.2  # normalized as trained
    snn = to_snn(model, T=2)
    labels = torch.arange(8) % 10
    losses = script.finetune(snn, x_train[:8], labels, epochs=1, lr=1e-3, batch_size=8)
    assert len(losses) == 1 and losses[0] > 0


@pytest.mark.parametrize(
    "key,message",
    [
        ("nanlam", "holds NaN or infinite values"),
        ("badshape", "of another shape"),
        ("missingkey", "missing 1"),
        ("garbage", "is not a readable checkpoint"),
    ],
)
def test_finetune_script_bad_checkpoint_is_one_error_line(bad_inputs, capsys, key, message):
    script = _finetune_script()
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--checkpoint", str(bad_inputs[key])])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("finetune_snn.py: error:") and message in lines[0], err


def test_finetune_script_reads_a_train_noisyquant_checkpoint(tmp_path):
    import torch

    from na_kernels.nn import replace_activations

    script = _finetune_script()
    torch.manual_seed(0)
    model, _ = replace_activations(script.make_model(), p=3, lam=2.0)
    path = tmp_path / "digits_noisyquant.pt"
    torch.save({"state_dict": model.state_dict(), "p": 3, "noise": "uniform"}, path)
    loaded, (x_train, _) = script.load_ann(str(path))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert x_train.shape[1:] == (1, 8, 8)
    torch.save({"state_dict": model.state_dict(), "p": 2.5}, path)
    with pytest.raises(script.CheckpointError, match="'p' must be an int >= 1, got 2.5"):
        script.load_ann(str(path))
