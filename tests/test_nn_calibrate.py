"""calibrate_thresholds: counts matched to the quantized ANN, never worse, arguments, state dict."""

import pytest
import torch
from nn_models import SmallCNN, TinyResNet, prepared, relative_error
from torch import nn

from na_kernels.nn import NoisyQuant, calibrate_thresholds, to_snn


@pytest.mark.slow
def test_calibration_matches_counts_and_reduces_the_output_error():
    torch.manual_seed(0)
    model = prepared(TinyResNet)
    x = torch.randn(8, 3, 12, 12)
    snn = to_snn(model, T=16)
    with torch.no_grad():
        ann = snn.ann(x)
        before = relative_error(snn(x)[-1], ann)
    report = calibrate_thresholds(snn, [x, (x, torch.zeros(8))], iterations=6)
    assert report["T"] == 16 and len(report["errors"]) == 7
    assert min(report["errors"]) == report["errors"][report["best_iteration"]]
    assert report["errors"][report["best_iteration"]] < 0.5 * report["errors"][0]
    for layer in snn.if_layers.values():
        assert layer.threshold.dim() == 1 and torch.all(layer.threshold > 0)
        assert layer.amplitude.dim() == 0  # the spike amplitude stays λ
    with torch.no_grad():
        after = relative_error(snn(x)[-1], ann)
    assert after < before
    assert snn.statistics()["samples"] == 8  # calibration runs were not counted


def test_calibration_never_worsens_the_count_error():
    model = prepared(SmallCNN)
    snn = to_snn(model, T=4)
    report = calibrate_thresholds(snn, [torch.randn(8, 3, 16, 16)], iterations=2)
    assert report["errors"][report["best_iteration"]] <= report["errors"][0]


def test_calibration_bad_arguments():
    snn = to_snn(nn.Sequential(nn.Linear(2, 2), NoisyQuant(3)), T=2)
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_thresholds(snn, [])
    with pytest.raises(ValueError, match="iterations"):
        calibrate_thresholds(snn, [torch.randn(2, 2)], iterations=-1)
    with pytest.raises(ValueError, match="step_size"):
        calibrate_thresholds(snn, [torch.randn(2, 2)], step_size=0)
    with pytest.raises(TypeError, match="batches"):
        calibrate_thresholds(snn, ["images"])


def test_calibrated_thresholds_round_trip_through_the_state_dict():
    model = prepared(SmallCNN)
    x = torch.randn(4, 3, 16, 16)
    snn = to_snn(model, T=8)
    calibrate_thresholds(snn, [x], iterations=2)
    fresh = to_snn(model, T=8)
    fresh.load_state_dict(snn.state_dict())
    for name, layer in fresh.if_layers.items():
        torch.testing.assert_close(layer.threshold, snn.if_layers[name].threshold)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), snn(x))


def test_bad_batch_leaves_thresholds_as_they_were():
    model = nn.Sequential(nn.Linear(4, 8), NoisyQuant(3, lam=1.0, per_channel=True, channels=8), nn.Linear(8, 2)).eval()
    snn = to_snn(model, T=4)
    x = torch.randn(16, 4)
    before = snn(x)
    thresholds = {name: layer.threshold.clone() for name, layer in snn.if_layers.items()}
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="batches: batch 1 contains NaN or inf"):
        calibrate_thresholds(snn, [x, bad])
    with pytest.raises(ValueError, match="batches: batch 0 is empty"):
        calibrate_thresholds(snn, [x[:0], x])
    for name, layer in snn.if_layers.items():
        assert torch.equal(layer.threshold, thresholds[name])
    assert torch.equal(snn(x), before)


def test_calibrating_something_that_is_not_an_snn_says_what_to_do():
    for wrong in (torch.randn(3), nn.Linear(2, 2)):
        with pytest.raises(TypeError, match="snn must be a SpikingNetwork .* to_snn"):
            calibrate_thresholds(wrong, [torch.randn(2, 2)])
