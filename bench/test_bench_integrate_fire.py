"""integrate_fire: forward, and forward + backward (BPTT), for T = 4, 8, 16, 32 at N neurons per
step (2^20 on CUDA; on the CPU 2^19, and T·N capped at 2^22 for T = 16, 32), fp32 and bf16, against an eager
PyTorch IF time
loop, torch.compile of that loop, and SpikingJelly's multi-step IFNode (soft reset).

Byte model (the fewest a fused kernel moves, e = itemsize of x):
- forward (inference, no grad): read T·N·e of x, write T·N·e of spikes and N·4 of int32
  counts. (The kernel also writes the N·4 bytes of v_final; that is not counted.)
- forward + backward: the training forward also writes h, the float32 membrane potential
  before firing, T·N·4 (the design saves it for the surrogate); backward reads dy (T·N·e)
  and h (T·N·4) and writes dx (T·N·e). In all: T·N·(5e + 8) + N·4.
Alternatives return the spikes only: counting them would cost them one more pass.
"""

import baselines
import pytest
import torch
from benchlib import DEVICE, DTYPES, SIZES, if_neurons, run_case

IMPLS = ("na_kernels", "eager", "compile", "spikingjelly")
THRESHOLD = 1.0


def _integrate_fire():
    try:
        from na_kernels import integrate_fire
    except ImportError as error:
        pytest.skip(f"na_kernels.integrate_fire has not landed yet ({error})")
    return integrate_fire


def _model(impl):
    if impl == "na_kernels":
        op = _integrate_fire()
        return lambda x: op(x, THRESHOLD)[0]  # spikes (counts are computed too)
    if impl == "spikingjelly":
        node = baselines.spikingjelly_if(THRESHOLD)
        if node is None:
            pytest.skip(baselines.spikingjelly_missing_reason())
        node = node.to(DEVICE)

        def run(x):
            node.reset()
            return node(x)

        return run
    loop = lambda x: baselines.if_loop(x, THRESHOLD)  # noqa: E731
    return baselines.compiled(loop) if impl == "compile" else loop


def _backend_name(impl):
    if impl == "na_kernels":
        from na_kernels import _backend, cpu

        name = _backend.resolve(torch.device(DEVICE))
        if name == "cpu" and not hasattr(cpu.extension(), "integrate_fire_forward"):
            name = "reference (stale C++ extension: rebuild it)"
        return name
    if impl == "spikingjelly":
        import os

        return (
            "spikingjelly torch loop (CPU)"
            if DEVICE == "cpu"
            else f"spikingjelly SJ_IF_CUDA_IMPLEMENTATION={os.environ.get('SJ_IF_CUDA_IMPLEMENTATION', 'auto')}"
        )
    return "torch.compile (inductor)" if impl == "compile" else "eager PyTorch loop"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("T", SIZES["if_steps"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_integrate_fire(benchmark, copy_bandwidth, fresh_compiler, mode, T, dtype, impl):
    neurons = if_neurons(T)
    torch_dtype = DTYPES[dtype]
    model = _model(impl)
    backward = mode == "fwd+bwd"
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    # input currents in [0, 0.8): firing rates spread over (0, 0.8), as in a converted network
    x = (torch.rand((T, neurons), generator=gen, device=DEVICE) * 0.8).to(torch_dtype)
    e = x.element_size()

    if backward:
        x.requires_grad_(True)
        dy = torch.randn_like(x)

        def fn():
            model(x).backward(dy)

        bytes_moved = T * neurons * (5 * e + 8) + 4 * neurons
    else:

        def fn():
            with torch.no_grad():
                return model(x)

        bytes_moved = T * neurons * 2 * e + 4 * neurons

    group = f"integrate_fire {mode} T={T} N=2^{neurons.bit_length() - 1} {dtype}"
    run_case(
        benchmark,
        fn,
        group=group,
        impl=impl,
        copy_bandwidth=copy_bandwidth,
        bytes_moved=bytes_moved,
        grad_to_none=(x,) if backward else (),
        warmup=2 if impl == "compile" else 1,
        info={
            "op": "integrate_fire",
            "mode": mode,
            "T": T,
            "neurons": neurons,
            "dtype": dtype,
            "numel": T * neurons,
            "backend": _backend_name(impl),
        },
    )
