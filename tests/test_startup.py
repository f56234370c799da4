"""Start-up: `import na_kernels` and `na-kernels --help` load no torch, `import na_kernels.nn` no
torch.compile machinery and no Triton; statistics counters stay eager under torch.compile."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import na_kernels


def _loaded_after(code, tmp_path):
    """(stdout, the module names of ``sys.modules``) after ``code`` runs in a fresh interpreter that
    imports the na_kernels these tests import."""
    script = code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(na_kernels.__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, set(proc.stdout.splitlines()[-1].split())


@pytest.mark.slow
def test_import_and_help_load_no_torch(tmp_path):
    _, loaded = _loaded_after("import na_kernels", tmp_path)
    assert "torch" not in loaded
    out, loaded = _loaded_after(
        "from na_kernels.app.cli import main\n"
        "for argv in (['--help'], ['--version'], ['not-a-command']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass",
        tmp_path,
    )
    assert "torch" not in loaded
    assert all(command in out for command in ("demo", "train", "evaluate", "convert")) and "na_kernels 0.1.0" in out


@pytest.mark.slow
def test_nn_import_loads_no_compiler_and_no_triton(tmp_path):
    _, loaded = _loaded_after("import na_kernels.nn", tmp_path)
    assert "torch" in loaded and "na_kernels.ops.noisy_quant" in loaded
    assert not {"torch._dynamo", "triton", "sympy"} & loaded, {"torch._dynamo", "triton", "sympy"} & loaded


def test_public_names_load_on_first_use():
    assert na_kernels.noisy_quant is na_kernels.ops.noisy_quant.noisy_quant
    assert na_kernels.integrate_fire is na_kernels.ops.integrate_fire.integrate_fire
    assert {"noisy_quant", "integrate_fire", "set_backend", "use_backend"} <= set(dir(na_kernels))
    assert torch.ops.na_kernels.noisy_quant.default is not None  # registered by then
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = na_kernels.not_a_name
    assert not hasattr(na_kernels, "__not_a_dunder__")


def test_statistics_are_counted_when_compiled_before_any_eager_run():
    """The counters count in the compiled graph whether the first call is compiled or not."""
    import torch._dynamo

    from na_kernels.nn import NoisyQuant, to_snn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), NoisyQuant(3, lam=1.0), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.randn(2, 1, 6, 6)
    compiled_snn, eager_snn = to_snn(model.eval(), T=3), to_snn(model.eval(), T=3)
    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(compiled_snn, backend=counting_backend)
    with torch.no_grad():
        first = compiled(x)
        compiled(x)  # may recompile once: a guard on the table _spec's label parsing fills on first use
        settled = len(graphs)
        compiled(x)
        for _ in range(3):
            expected = eager_snn(x)
    torch._dynamo.reset()
    assert len(graphs) == settled  # no recompilation for the same shape
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    got, want = compiled_snn.statistics(), eager_snn.statistics()
    assert got["samples"] == want["samples"] == 6
    assert [layer["spikes"] for layer in got["if_layers"]] == [layer["spikes"] for layer in want["if_layers"]]
    assert got["total"]["sops_per_sample"] == want["total"]["sops_per_sample"] > 0


_WITHOUT_TRITON = r"""
import importlib, pkgutil, sys
sys.modules["triton"] = None  # as if triton were not installed: importing it raises ImportError
import torch
import na_kernels

ops = ("noisy_quant", "integrate_fire", "batchnorm_noisy_quant")
skipped = {"na_kernels.kernels._storage"} | {f"na_kernels.ops.{op}.triton" for op in ops}
for info in pkgutil.walk_packages(na_kernels.__path__, "na_kernels."):
    if info.name in skipped:
        continue
    try:
        importlib.import_module(info.name)
    except ImportError as error:  # an optional extra (nir, neurobench, ...) may be missing here
        assert "triton" not in str(error), (info.name, error)

x = torch.randn(2, 3, 5, 5)
na_kernels.noisy_quant(x, 3)
na_kernels.integrate_fire(torch.randn(4, 3, 5))
from na_kernels.nn import NoisyQuant
assert NoisyQuant(3)(x).shape == x.shape
na_kernels.set_backend("triton")
try:
    na_kernels.noisy_quant(x, 3)
except ImportError as error:
    assert "pip install 'triton" in str(error), error
    print("clear error")
"""


@pytest.mark.slow
def test_every_module_but_the_triton_backends_imports_without_triton(tmp_path):
    """A plain ``pip install .`` brings no triton: every other module imports and the ops run on the
    CPU; forcing the Triton backend then says what to install."""
    out, loaded = _loaded_after(_WITHOUT_TRITON, tmp_path)
    assert "clear error" in out
    assert "na_kernels.io.nir_export" in loaded and "na_kernels.app.demo" in loaded
