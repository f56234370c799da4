"""torchvision / timm architectures end to end: replace -> train steps -> to_snn -> early exit ->
save / load -> to_nir, each NIR form run by a small NIR interpreter against the SNN."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from vision_models import VGG11BN, MobileNetV2, ResNet10T, ResNet18

from na_kernels.io.nir_export import to_nir
from na_kernels.io.nir_import import from_nir
from na_kernels.nn import load_snn, replace_activations, to_snn

nir = pytest.importorskip("nir")
from nir_interpreter import run_nir  # noqa: E402  (needs nir)

# (architecture, input size): torchvision's VGG pools to 7x7, so its input is 224 (32 x 7)
MODELS = [(ResNet18, 32), (VGG11BN, 224), (MobileNetV2, 32), (ResNet10T, 32)]


def _pipeline(model_class, size, tmp_path, T=4):
    torch.manual_seed(0)
    model, _ = replace_activations(model_class(), p=4, lam="auto", maxpool_to_avgpool=True)
    x = torch.randn(4, 3, size, size)
    labels = torch.randint(0, 5, (4,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for _ in range(2):
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    snn = to_snn(model.eval(), T=T)
    with torch.no_grad():
        out = snn(x[:2])
    assert out.shape == (T, 2, 5)
    result = snn.run_early_exit(x[:2], 0.5)
    assert result.exit_steps.min() >= 1 and result.exit_steps.max() <= T
    path = tmp_path / "net.snn"
    snn.save(path)
    loaded = load_snn(path)
    with torch.no_grad():
        assert torch.equal(loaded(x[:2]), out)
    return loaded, x[:2], out


@pytest.mark.parametrize("model_class,size", MODELS, ids=[m.__name__ for m, _ in MODELS])
def test_replace_train_convert_exit_save_load_and_export(model_class, size, tmp_path):
    snn, x, out = _pipeline(model_class, size, tmp_path)
    for pooling in ("avg", "sum", "conv"):
        graph = to_nir(snn, (3, size, size), pooling=pooling)
        path = tmp_path / f"net_{pooling}.nir"
        nir.write(path, graph)
        graph = nir.read(path)
        assert graph.check_types()
        kinds = {type(node).__name__ for node in graph.nodes.values()}
        assert ("AvgPool2d" in kinds) == (pooling == "avg") and ("SumPool2d" in kinds) == (pooling == "sum")
        with torch.no_grad():
            mean = run_nir(graph, x, snn.T)
        # the NIR arithmetic differs from the SNN's by float rounding (weights times amplitudes in
        # float64, then float32), which can move a spike; the outputs stay within a few percent
        torch.testing.assert_close(mean, out[-1], rtol=0.05, atol=0.05 * out[-1].abs().max().item())
        # every form, border-dependent divisors (ResNet18, ResNet10T) and groups (MobileNetV2) included
        with torch.no_grad():
            assert torch.equal(from_nir(path)(x), out)


def test_border_dependent_divisor_becomes_a_scale_node(tmp_path):
    """maxpool_to_avgpool's AvgPool2d(3, 2, 1, count_include_pad=False) divides border windows by 6
    and corners by 4: a Scale node with those factors, since no single pooling node says it."""
    snn, _, _ = _pipeline(ResNet18, 32, tmp_path)
    graph = to_nir(snn, (3, 32, 32), pooling="sum")
    scales = [n for n in graph.nodes.values() if isinstance(n, nir.Scale) and n.metadata["role"] == "scale"]
    assert len(scales) == 1
    factor = scales[0].scale / scales[0].scale.max()  # amplitudes are per channel: divide them out
    assert np.allclose(factor[0, 0, 0] * 4, factor[0, 1, 1] * 9) and np.allclose(
        factor[0, 0, 1] * 6, factor[0, 1, 1] * 9
    )
    assert scales[0].scale.shape == (4, 8, 8)


def test_saved_network_keeps_each_modules_mode(tmp_path):
    """to_snn's wrapper is in train mode around an eval network: after save / load the Dropout
    layers inside stay in eval (a recursive train() at load turned them on)."""
    snn, x, out = _pipeline(VGG11BN, 224, tmp_path, T=2)
    dropouts = [m for m in snn.network.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 2 and not any(m.training for m in dropouts)
    with torch.no_grad():
        assert torch.equal(snn(x), out)
