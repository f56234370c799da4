"""The clipped network: the SNN's T -> infinity limit (na_kernels.convert.limit)."""

import pytest
import torch
from cli_runs import train_digits
from torch import nn

from na_kernels.app.datasets import digits_split
from na_kernels.nn import ClippedActivation, NoisyQuant, calibrate_thresholds, clipped_network, to_snn

pytestmark = pytest.mark.usefixtures("one_thread")


def _flat(data):
    x = data.images.float().reshape(len(data), -1) / data.max_value
    return (x - 0.3) / 0.4, data.labels


@pytest.fixture(scope="module")
def trained():
    """A small MLP (BN, two NoisyQuant layers, p = 3) trained on the bundled digits, with and without noise."""
    train, test = digits_split()
    xtr, ytr = _flat(train)
    xte, yte = _flat(test)
    models = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the one_thread fixture
    for noise in ("uniform", None):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(64, 64),
            nn.BatchNorm1d(64),
            NoisyQuant(3, lam=2.0, noise=noise),
            nn.Linear(64, 64),
            NoisyQuant(3, lam=2.0, noise=noise),
            nn.Linear(64, 10),
        )
        optimizer = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(30):
            order = torch.randperm(len(xtr))
            for i in range(0, len(xtr), 128):
                idx = order[i : i + 128]
                loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        models[noise] = model.eval()
    torch.set_num_threads(threads)
    return models, xte, yte


@pytest.mark.parametrize("noise", ["uniform", None])
def test_snn_converges_to_the_clipped_network(trained, noise):
    models, x, y = trained
    model = models[noise]
    with torch.no_grad():
        limit = clipped_network(model)(x)
        out = to_snn(model, 64)(x)  # out[T-1]: the T-step SNN
        assert (limit.argmax(1) == y).float().mean() > 0.9  # a trained network, not chance
        scale = limit.abs().mean()
        error = {T: float((out[T - 1] - limit).abs().mean() / scale) for T in (2, 8, 64)}
    # the rate error of an IF layer is O(1/T): about 8x less from T = 8 to 64
    assert error[2] > error[8] > error[64], error
    assert error[64] < error[8] / 4, error
    assert error[64] < 0.01, error


def test_clipped_network_is_clamp_at_every_site_with_bn_as_in_the_ann(trained):
    models, x, _ = trained
    model = models["uniform"]
    lams = [m.lam.detach() for m in model if isinstance(m, NoisyQuant)]
    with torch.no_grad():
        h = torch.clamp(model[1](model[0](x)), min=0)
        h = torch.minimum(h, lams[0])
        h = torch.minimum(torch.clamp(model[3](h), min=0), lams[1])
        expected = model[5](h)
        limit = clipped_network(model)
        torch.testing.assert_close(limit(x), expected, rtol=0, atol=1e-5)
        assert list(limit.activations) == ["2", "4"]
        # from the converted SNN (BN folded): the same function to float rounding
        torch.testing.assert_close(to_snn(model, 4).clipped()(x), expected, rtol=0, atol=1e-4)
    assert model.training is False and isinstance(model[2], NoisyQuant)  # the model is not modified


def test_clipped_activation_per_channel_and_calibrated():
    theta = torch.tensor([1.0, 2.0, 0.5])
    x = torch.linspace(-1, 3, 3 * 8).reshape(2, 3, 4)
    act = ClippedActivation("a", theta, theta)
    expected = torch.minimum(x.clamp_min(0), theta.reshape(1, 3, 1))
    torch.testing.assert_close(act(x), expected, rtol=0, atol=0)
    amplitude = torch.tensor([2.0, 2.0, 2.0])  # calibrated θ != a: the rate a*clamp(x/θ, 0, 1)
    act = ClippedActivation("a", theta, amplitude)
    torch.testing.assert_close(act(x), (x / theta.reshape(1, 3, 1)).clamp(0, 1) * 2.0)
    assert act(x.half()).dtype == torch.float16


def test_clipped_network_keeps_calibrated_thresholds(trained):
    models, x, _ = trained
    snn = to_snn(models[None], 64)
    calibrate_thresholds(snn, [x[:128]])
    with torch.no_grad():
        limit = snn.clipped()
        out = snn(x)
        scale = limit(x).abs().mean()
        assert float((out[-1] - limit(x)).abs().mean() / scale) < 0.02
    for name, act in limit.activations.items():
        torch.testing.assert_close(act.threshold, snn.if_layers[name].threshold, rtol=0, atol=0)


def test_clipped_network_bad_input():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        clipped_network("model")
    with pytest.raises(ValueError, match="no NoisyQuant"):
        clipped_network(nn.Sequential(nn.Linear(2, 2)))


def test_cli_evaluate_and_convert_print_the_limit(tmp_path, capsys):
    import json

    from na_kernels.app.cli import main
    from na_kernels.app.datasets import BatchLoader
    from na_kernels.app.train import evaluate, load_checkpoint, network_from_checkpoint

    run = tmp_path / "run"
    assert train_digits(run) == 0
    ckpt = str(run / "last.pt")
    model = network_from_checkpoint(load_checkpoint(ckpt))
    _, test = digits_split()
    expected = evaluate(clipped_network(model), BatchLoader(test, 256), amp=False, show_progress=False)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", ckpt, "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"its clipped network (the SNN's T -> infinity limit) {100 * expected:.2f}%" in text
    report = tmp_path / "convert.json"
    assert main(["convert", "--checkpoint", ckpt, "--T", "4", "--report", str(report), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"clipped network (the SNN's T -> infinity limit) {100 * expected:.2f}%" in text
    assert json.loads(report.read_text())["limit_acc"] == expected
