"""The python/ example scripts run end to end (few epochs) and report sensible numbers."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains and converts in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_train_then_convert_examples(tmp_path):
    out = run([os.path.join(ROOT, "python", "train_noisyquant.py"), "--epochs", "1"], tmp_path)
    assert "replaced 3 activation(s) at 3 call site(s) with NoisyQuant" in out
    acc = float(out.strip().splitlines()[-2].split("test accuracy ")[1].rstrip("%"))
    assert acc > 80.0
    # the weights go to ./runs/ (git-ignored), never into the folder the script runs from
    assert (tmp_path / "runs" / "digits_noisyquant.pt").exists()
    assert not list(tmp_path.glob("*.pt"))
    out = run([os.path.join(ROOT, "python", "convert_snn.py"), "--T", "8"], tmp_path)
    lines = {l.split()[1]: float(l.split()[-1].rstrip("%")) for l in out.splitlines() if l.startswith("SNN, T=")}
    assert set(lines) == {"T=1", "T=2", "T=4", "T=8"}
    assert lines["T=8"] > 80.0
    assert "SNN statistics" in out and "SNN/ANN" in out


def test_convert_example_without_checkpoint_says_what_to_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "python", "convert_snn.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode != 0 and "run python python/train_noisyquant.py first" in proc.stderr


def test_the_examples_output_folder_is_git_ignored():
    path = os.path.join(ROOT, ".gitignore")
    if not os.path.isfile(path):  # an installed copy without the repository files
        return
    with open(path) as f:
        assert "runs/" in f.read().split()
