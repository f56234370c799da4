"""noisy_quant: forward, and forward + backward, against the eager QCFS-style activation and
torch.compile of it, on a ResNet-sized activation and on a large flat tensor, fp32 and bf16.

Byte model (the fewest a fused kernel moves; the noise is regenerated from the seed, never
stored): forward reads x and writes y (2 x numel x itemsize); forward + backward adds a
backward that reads x and dy and writes dx (5 x numel x itemsize in all). lam is a scalar.
"""

import baselines
import pytest
import torch
from benchlib import DEVICE, DTYPES, SIZES, run_case

P = 3  # 2-bit activations, the Noise Adaptor CIFAR setting
IMPLS = ("na_kernels", "eager", "compile")


def _inputs(shape, dtype, requires_grad):
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    x = (torch.randn(shape, generator=gen, device=DEVICE) * 0.6 + 0.4).to(dtype)  # both clamps hit
    x.requires_grad_(requires_grad)
    lam = torch.tensor(1.0, device=DEVICE, requires_grad=requires_grad)
    return x, lam


def _activation(impl):
    if impl == "na_kernels":
        import na_kernels

        return lambda x, lam: na_kernels.noisy_quant(x, P, lam, noise="uniform")
    eager = lambda x, lam: baselines.qcfs_noisy(x, lam, P)  # noqa: E731
    return baselines.compiled(eager) if impl == "compile" else eager


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("size", list(SIZES["nq_sizes"]))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_noisy_quant(benchmark, copy_bandwidth, fresh_compiler, mode, size, dtype, impl):
    shape = SIZES["nq_sizes"][size]
    torch_dtype = DTYPES[dtype]
    act = _activation(impl)
    backward = mode == "fwd+bwd"
    x, lam = _inputs(shape, torch_dtype, backward)
    numel, itemsize = x.numel(), x.element_size()

    if backward:
        dy = torch.randn_like(x)

        def fn():
            act(x, lam).backward(dy)

        bytes_moved = 5 * numel * itemsize
    else:

        def fn():
            with torch.no_grad():
                return act(x, lam)

        bytes_moved = 2 * numel * itemsize

    run_case(
        benchmark,
        fn,
        group=f"noisy_quant {mode} {size} {dtype}",
        impl=impl,
        copy_bandwidth=copy_bandwidth,
        bytes_moved=bytes_moved,
        grad_to_none=(x, lam) if backward else (),
        warmup=2 if impl == "compile" else 1,
        info={
            "op": "noisy_quant",
            "mode": mode,
            "size": size,
            "shape": list(shape),
            "dtype": dtype,
            "numel": numel,
            "p": P,
            "noise": "uniform",
            "backend": _backend_name(impl),
        },
    )


def _backend_name(impl):
    if impl != "na_kernels":
        return "torch.compile (inductor)" if impl == "compile" else "eager PyTorch"
    from na_kernels import _backend

    return _backend.resolve(torch.device(DEVICE))
