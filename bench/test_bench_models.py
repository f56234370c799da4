"""Whole networks: one training step of a CIFAR-size ResNet-18 whose activations are
NoisyQuant (p = 3, uniform noise) against the same network with the eager QCFS + noise
activation (and, on CUDA, torch.compile of that network); and SNN inference throughput of
the converted ResNet-18 at T = 8, against the same converted network with the IF layers run
by the PyTorch reference (an eager time loop per layer).

The numbers are images per second (extra_info["images_per_s"]); no byte model applies.
The training step is forward, cross-entropy, backward and an SGD (momentum 0.9) step on
random 32x32 images; SNN inference runs under torch.no_grad with spike statistics off.
"""
import pytest
import torch
from torch import nn

import baselines
from benchlib import DEVICE, IS_CUDA, SIZES, run_case

P = 3
TRAIN_IMPLS = ("na_kernels", "eager", "compile")


def _models_api():
    try:
        from na_kernels.app.models import resnet18
        from na_kernels.nn import NoisyQuant, to_snn
    except ImportError as error:
        pytest.skip(f"na_kernels.app.models / na_kernels.nn have not landed yet ({error})")
    return resnet18, NoisyQuant, to_snn


def _images(batch):
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn((batch, 3, 32, 32), generator=gen, device=DEVICE)
    y = torch.randint(0, 10, (batch,), generator=gen, device=DEVICE)
    return x, y


@pytest.mark.parametrize("impl", TRAIN_IMPLS)
def test_resnet18_train_step(benchmark, copy_bandwidth, fresh_compiler, impl):
    resnet18, NoisyQuant, _ = _models_api()
    if impl == "compile" and not IS_CUDA:
        pytest.skip("torch.compile of a whole ResNet-18 training step takes minutes to compile on a "
                    "2-core CPU; measured on CUDA only")
    torch.manual_seed(0)
    if impl == "na_kernels":
        model = resnet18(10, act=lambda: NoisyQuant(p=P, lam=8.0))
    else:
        model = resnet18(10, act=lambda: baselines.EagerNoisyQuant(p=P, lam=8.0))
    model = model.to(DEVICE).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = baselines.compiled(model) if impl == "compile" else model
    batch = SIZES["model_batch"]
    x, y = _images(batch)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    run_case(
        benchmark, step, group="resnet18 train step", impl=impl, copy_bandwidth=copy_bandwidth,
        items=batch, item_name="images", min_rounds=3, warmup=1,
        info={"op": "resnet18_train_step", "mode": "train", "batch": batch, "p": P, "dtype": "fp32",
              "activation": "NoisyQuant (na_kernels)" if impl == "na_kernels" else "eager QCFS + rand_like noise"},
    )


@pytest.mark.parametrize("impl", ("na_kernels", "eager"))
def test_resnet18_snn_inference(benchmark, copy_bandwidth, impl):
    resnet18, NoisyQuant, to_snn = _models_api()
    torch.manual_seed(0)
    T = SIZES["snn_T"]
    model = resnet18(10, act=lambda: NoisyQuant(p=P, lam=8.0)).eval()
    snn = to_snn(model, T=T).to(DEVICE).eval()
    snn.record_statistics(False)
    batch = SIZES["snn_batch"]
    x, _ = _images(batch)
    import na_kernels

    backend = "auto" if impl == "na_kernels" else "reference"

    def infer():
        with torch.no_grad(), na_kernels.use_backend(backend):
            return snn(x)

    run_case(
        benchmark, infer, group=f"resnet18 SNN inference T={T}", impl=impl, copy_bandwidth=copy_bandwidth,
        items=batch, item_name="images", min_rounds=3, warmup=1,
        info={"op": "resnet18_snn_inference", "mode": "inference", "T": T, "batch": batch, "dtype": "fp32",
              "if_layers": len(snn.if_layers),
              "backend": "na_kernels fused IF kernels" if impl == "na_kernels" else
              "same network, IF layers by the PyTorch reference loop"},
    )
