"""Each default and table stated once: the reference, the op and the modules read the same one."""

import inspect
import pathlib

import pytest
import torch

import na_kernels
from na_kernels import _spec
from na_kernels.nn import if_layer, if_node
from na_kernels.ops.integrate_fire import reference as reference_integrate_fire
from na_kernels.ops.noisy_quant import reference as reference_noisy_quant

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The reference takes the seed the op drew: it is a pure function of its arguments, never drawing one.
DIFFERENT_BY_DESIGN = {"seed"}


def _defaults(function):
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


@pytest.mark.parametrize(
    "public, reference",
    [
        (na_kernels.noisy_quant, reference_noisy_quant.noisy_quant),
        (na_kernels.noisy_quant, reference_noisy_quant.noisy_quant_backward),
        (na_kernels.integrate_fire, reference_integrate_fire.integrate_fire),
        (na_kernels.integrate_fire, reference_integrate_fire.integrate_fire_backward),
    ],
    ids=["noisy_quant", "noisy_quant_backward", "integrate_fire", "integrate_fire_backward"],
)
def test_reference_defaults_are_the_ops(public, reference):
    public_defaults, reference_defaults = _defaults(public), _defaults(reference)
    shared = (set(public_defaults) & set(reference_defaults)) - DIFFERENT_BY_DESIGN
    assert len(shared) >= 3  # the comparison compares something
    assert {k: reference_defaults[k] for k in shared} == {k: public_defaults[k] for k in shared}


@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
def test_reference_and_op_agree_on_a_default_call(noise):
    x = torch.linspace(-1.0, 4.0, 97).reshape(1, 97)
    with na_kernels.use_backend("reference"):
        expected = na_kernels.noisy_quant(x, 3, 3.0, noise=noise, seed=11)
    assert torch.equal(reference_noisy_quant.noisy_quant(x, 3, 3.0, noise=noise, seed=11), expected)


def test_ifnode_alpha_defaults_and_check_come_from_the_vocabulary():
    for surrogate in _spec.Surrogate:
        assert if_node.IFNode(surrogate_function=surrogate.label).alpha == _spec.SPIKINGJELLY_ALPHA[surrogate]
    with pytest.raises(ValueError, match="alpha"):  # the shared check: finite and inside atan's float32 range
        if_node.IFNode(surrogate_function="atan", alpha=3e38)
    assert not hasattr(if_node, "DEFAULT_ALPHA")


def test_v_init_is_the_ops_default():
    assert if_layer.V_INIT == inspect.signature(na_kernels.integrate_fire).parameters["v_init"].default
    assert if_layer.V_INIT is _spec.DEFAULT_V_INIT


def test_no_dtype_code_table_outside_the_vocabulary():
    from na_kernels import cpu

    assert not hasattr(cpu, "DTYPE_CODES")


def test_version_is_written_once():
    pyproject = (ROOT / "pyproject.toml").read_text()
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project and "\nversion" not in project
    assert 'attr = "na_kernels.__version__"' in pyproject
    assert isinstance(na_kernels.__version__, str) and na_kernels.__version__
