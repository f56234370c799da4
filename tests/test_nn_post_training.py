"""post_training_convert: λ from an exact streaming percentile of the original activations."""

import copy

import pytest
import torch
from nn_models import TinyResNet, randomize_batchnorm
from torch import nn

from na_kernels.convert.post_training import StreamingPercentile
from na_kernels.nn import post_training_convert


@pytest.mark.parametrize("percentile", [99.9, 99.0, 50.0, 100.0])
def test_streaming_percentile_is_torch_quantile_exactly(percentile):
    torch.manual_seed(0)
    x = torch.randn(3, 5003)
    stream = StreamingPercentile(percentile, 5003)
    for part in x.split(700, dim=1):
        stream.update(part)
    expected = torch.quantile(x, percentile / 100, dim=1)
    torch.testing.assert_close(stream.value(), expected, rtol=0, atol=0)
    assert stream.top.shape[1] <= max(2, int((1 - percentile / 100) * 5003) + 3)


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU()
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.act2 = nn.ReLU6()
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.act2(self.c2(self.act1(self.c1(x)))), 1))


@pytest.mark.parametrize("per_channel", [True, False])
def test_lam_is_the_percentile_of_the_original_activations(per_channel):
    torch.manual_seed(0)
    model = Plain().eval()
    batches = [torch.randn(5, 3, 8, 8) * 3 for _ in range(3)]
    recorded = {"act1": [], "act2": []}
    handles = [
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: recorded[name].append(o))
        for name in recorded
    ]
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for handle in handles:
        handle.remove()
    reference = copy.deepcopy(model.state_dict())
    snn, report = post_training_convert(model, batches, T=8, per_channel=per_channel, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())  # model not modified
    for name, outputs in recorded.items():
        a = torch.cat(outputs)
        rows = a.transpose(0, 1).reshape(a.shape[1], -1) if per_channel else a.reshape(1, -1)
        expected = torch.quantile(rows, 0.999, dim=1)
        expected = expected if per_channel else expected.reshape(())
        # λ = softplus(raw_lam) + min_lam stores the percentile to within 2 ulp
        torch.testing.assert_close(report["lam"][name], expected, rtol=2.5e-7, atol=0)
        torch.testing.assert_close(snn.if_layers[name].threshold, report["lam"][name], rtol=0, atol=0)
    assert float(report["lam"]["act2"].max()) <= 6.0
    assert report["samples"] == 15 and report["calibration"] is None


def test_resnet_gets_one_lam_per_call_site_and_calibration_runs():
    torch.manual_seed(0)
    model = TinyResNet()
    randomize_batchnorm(model)
    model.eval()
    batches = [(torch.randn(4, 3, 8, 8), torch.zeros(4))]
    snn, report = post_training_convert(model, batches, T=4, calibrate=True, calibration_iterations=1, progress=False)
    assert len(report["lam"]) == 7 == len(snn.if_layers)
    assert "layer1.0.relu_call2" in report["lam"]
    assert len(report["calibration"]["errors"]) == 2
    assert snn(batches[0][0]).shape == (4, 4, 5)


def test_bad_arguments_are_named():
    model = Plain().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="percentile"):
        post_training_convert(model, [x], T=4, percentile=0)
    with pytest.raises(TypeError, match="wrap it in a list"):
        post_training_convert(model, x, T=4)
    with pytest.raises(ValueError, match="at least one calibration batch"):
        post_training_convert(model, [], T=4)
    with pytest.raises(ValueError, match="no ReLU"):
        post_training_convert(nn.Sequential(nn.Linear(2, 2)), [torch.randn(2, 2)], T=4)


@pytest.mark.slow
def test_a_list_of_percentiles_returns_the_one_closest_to_the_ann():
    torch.manual_seed(0)
    model = Plain().eval()
    batches = [torch.randn(6, 3, 8, 8) * 3 for _ in range(2)]
    candidates = (90.0, 99.0, 100.0)
    snn, report = post_training_convert(model, batches, T=2, percentile=list(candidates), progress=False)
    errors = report["percentile_errors"]
    assert sorted(errors) == sorted(candidates)
    with torch.no_grad():
        for q in candidates:  # each error is the SNN's at T = 2 against the ANN on the calibration inputs
            one, _ = post_training_convert(model, batches, T=2, percentile=q, progress=False)
            want = sum(float(((one(x)[-1].double() - model(x).double()) ** 2).sum()) for x in batches)
            assert errors[q] == pytest.approx(want / sum(model(x).numel() for x in batches), rel=1e-12)
    best = min(candidates, key=lambda q: (errors[q], -q))
    assert report["percentile"] == best
    one, _ = post_training_convert(model, batches, T=2, percentile=best, progress=False)
    with torch.no_grad():
        assert torch.equal(snn(batches[0]), one(batches[0]))
    with pytest.raises(ValueError, match="empty list"):
        post_training_convert(model, batches, T=2, percentile=[], progress=False)
    with pytest.raises(ValueError, match="percentile"):
        post_training_convert(model, batches, T=2, percentile=[99.0, 101.0], progress=False)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_calibration_data_is_refused_naming_the_batch(value):
    # one NaN pixel used to set every later layer's λ to 1 silently; inf gave an error about λ
    model = Plain().eval()
    good = torch.randn(8, 3, 8, 8)
    bad = good.clone()
    bad[3, 1, 4, 4] = value
    for data in ([good, bad], [good, (bad, torch.zeros(8))]):
        with pytest.raises(ValueError, match="calibration_data: batch 1 contains NaN or inf"):
            post_training_convert(model, data, T=4, progress=False)
    with pytest.raises(ValueError, match="calibration_data: batch 1 contains NaN or inf"):
        post_training_convert(model, [good, bad], T=4, percentile=[99.0, 99.9], progress=False)


def test_an_empty_calibration_batch_is_refused_naming_it():
    model = Plain().eval()
    for empty in (torch.randn(0, 3, 8, 8), torch.randn(0)):
        with pytest.raises(ValueError, match="calibration_data: batch 0 is empty"):
            post_training_convert(model, [empty, torch.randn(4, 3, 8, 8)], T=4, progress=False)


def test_calibration_data_whose_activations_overflow_is_refused_naming_the_site():
    # finite data so large that an activation overflows float32 (or λ leaves its range)
    model = Plain().eval()
    huge = torch.randn(8, 3, 8, 8).clamp(-1, 1) * 3e38  # finite, but a conv of it overflows
    with pytest.raises(ValueError, match=r"calibration_data: batch 0 .*(act1|act2)|(act1|act2).*calibration_data"):
        post_training_convert(model, [huge], T=4, progress=False)
    large = torch.randn(8, 3, 8, 8).abs() * 1e33  # finite activations, λ beyond 2^102
    with pytest.raises(ValueError, match=r"act1.*2\^102"):
        post_training_convert(model, [large], T=4, progress=False)


def test_a_nan_lam_after_training_is_reported_naming_the_layer():
    from na_kernels.nn import NoisyQuant, to_snn

    model = nn.Sequential(
        nn.Linear(4, 4), NoisyQuant(3, lam=1.0), nn.Linear(4, 4), NoisyQuant(3, lam=1.0), nn.Linear(4, 2)
    )
    with torch.no_grad():
        model[3].raw_lam.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"IF layer 3: lam must be finite and > 0"):
        to_snn(model.eval(), T=4)
