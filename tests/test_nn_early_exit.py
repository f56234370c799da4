"""Per-sample early exit: exactness against the fixed-T run, batch compaction, statistics of
the steps actually run, the trade-off helpers, bad input."""

import math

import pytest
import torch
from cli_runs import train_digits
from torch import nn

from na_kernels.app.datasets import BatchLoader, digits_split
from na_kernels.app.models import DigitsCNN
from na_kernels.app.train import make_optimizer, make_scheduler, train_epoch
from na_kernels.nn import (
    EarlyExitResult,
    ExitRule,
    NoisyQuant,
    evaluate_early_exit,
    exit_tradeoff,
    format_tradeoff,
    run_early_exit,
    score_exits,
    to_snn,
)

T_MAX = 8
EPS = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def trained():
    """A small DigitsCNN (width 8, p = 3, uniform noise) trained 3 epochs on the bundled digits
    (a few seconds), converted; and the first 200 held-out images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = DigitsCNN(10, 1, width=8, act=lambda: NoisyQuant(3, lam=2.0, noise="uniform"))
        train, test = digits_split()
        loader = BatchLoader(train, 32, shuffle=True, augment=True, drop_last=True, seed=0)
        optimizer = make_optimizer(model, 0.05)
        scheduler = make_scheduler(optimizer, 3 * len(loader))
        for epoch in range(3):
            loader.set_epoch(epoch)
            train_epoch(model, loader, optimizer, scheduler, amp=False, show_progress=False)
        snn = to_snn(model.eval(), T_MAX)
        x, y = next(iter(BatchLoader(test.subset(torch.arange(200)), 200)))
        yield snn, x, y
    finally:
        torch.set_num_threads(threads)


def _fixed(snn, x, T=T_MAX):
    with torch.no_grad():
        return snn(x, T=T)


def _mixed_rule(fixed):
    """A confidence threshold with a mix of exits: the median top probability at step 3."""
    p1 = torch.softmax(fixed[2].float(), -1).amax(-1)
    return ExitRule(confidence=float(p1.median()))


def _mixed_margin_rule(fixed, temperature=2.0, min_steps=2):
    """A margin rule (with a temperature and a minimum step) with a mix of exits."""
    top = torch.softmax(fixed[2].float() / temperature, -1).topk(2, -1).values
    return ExitRule(margin=float((top[:, 0] - top[:, 1]).median()), temperature=temperature, min_steps=min_steps)


def _tolerance(fixed):
    # a conv / linear run on a batch of another size may sum its products in another order
    # (oneDNN picks its kernel by batch size; seen at batch 1): a few float32 ulps of the logits
    return 8 * EPS * float(fixed.abs().max())


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("kind", ["confidence", "margin"])
def test_output_at_exit_equals_the_fixed_T_run(trained, chunk, kind):
    snn, x, y = trained
    fixed = _fixed(snn, x)
    if kind == "confidence":
        rule = _mixed_rule(fixed)
    else:
        rule = _mixed_margin_rule(fixed)
    result = snn.run_early_exit(x, rule, T_max=T_MAX, chunk=chunk, labels=y)
    steps = result.exit_steps
    # a mix of early and late exits
    assert (steps < T_MAX).any() and (steps == T_MAX).any() and steps.unique().numel() >= 3
    assert steps.min() >= rule.min_steps
    # the same exits as the rule scored on the fixed-T run, and the fixed-T output at each exit
    assert torch.equal(steps, score_exits(fixed, rule))
    reference = fixed[steps - 1, torch.arange(x.shape[0])]
    torch.testing.assert_close(result.outputs, reference, rtol=0, atol=_tolerance(fixed))
    assert torch.equal(result.predictions, reference.argmax(-1))
    assert result.accuracy == pytest.approx(float((reference.argmax(-1) == y).double().mean()))
    # each sample ran to the end of the chunk it exited in
    assert torch.equal(result.steps_run, torch.clamp((steps + chunk - 1) // chunk * chunk, max=T_MAX))


def test_event_driven_network_exits_event_driven(trained, monkeypatch):
    """An event-driven network's early exit runs its spike-reading convolutions as event
    convolutions too, so each exit's output is that network's own fixed-T output."""
    from na_kernels import cpu
    from na_kernels.ops import event_conv

    if not cpu.available():
        pytest.skip("C++ extension not built")
    snn, x, y = trained
    snn.event_driven(True)
    try:
        fixed = _fixed(snn, x)
        calls = []
        real = event_conv.cpu.forward
        monkeypatch.setattr(event_conv.cpu, "forward", lambda *a: calls.append(1) or real(*a))
        rule = _mixed_rule(fixed)
        result = snn.run_early_exit(x, rule, T_max=T_MAX, chunk=2, labels=y)
        assert calls
        assert torch.equal(result.exit_steps, score_exits(fixed, rule))
        reference = fixed[result.exit_steps - 1, torch.arange(x.shape[0])]
        torch.testing.assert_close(result.outputs, reference, rtol=0, atol=_tolerance(fixed))
    finally:
        snn.event_driven(False)


def test_exits_do_not_depend_on_the_chunk(trained):
    snn, x, _ = trained
    rule = _mixed_rule(_fixed(snn, x))
    results = [snn.run_early_exit(x, rule, chunk=chunk) for chunk in (1, 2, 5, T_MAX, 100)]
    for other in results[1:]:
        assert torch.equal(other.exit_steps, results[0].exit_steps)
        torch.testing.assert_close(other.outputs, results[0].outputs, rtol=0, atol=_tolerance(results[0].outputs))
    assert results[-1].chunk == T_MAX  # clipped
    assert torch.equal(results[-1].steps_run, torch.full_like(results[-1].steps_run, T_MAX))


@pytest.mark.parametrize("chunk", [1, 3])
def test_finished_samples_leave_the_batch(trained, chunk):
    snn, x, _ = trained
    rule = _mixed_rule(_fixed(snn, x))
    rows = {}
    for meter in snn.synapses.values():  # the stem's rows (one per sample) and the first spike-driven layer's
        meter.register_forward_pre_hook(
            lambda module, args: rows.setdefault(module.spike_driven, []).append(args[0].shape[0])
        )
    try:
        result = snn.run_early_exit(x, rule, chunk=chunk)
    finally:
        for meter in snn.synapses.values():
            meter._forward_pre_hooks.clear()
    starts = range(0, T_MAX, chunk)
    alive = [int((result.steps_run > start).sum()) for start in starts]
    assert alive[0] == x.shape[0] and 0 < alive[-1] < alive[0]
    expected = [min(chunk, T_MAX - start) * n for start, n in zip(starts, alive)]  # [steps * B', ...] rows
    per_call = sum(meter.spike_driven for meter in snn.synapses.values())
    assert rows[True][::per_call] == expected
    assert rows[False] == [x.shape[0]]  # the stem ran once, on the whole batch
    assert all(layer.v is None for layer in snn.if_layers.values())  # no state left behind
    torch.testing.assert_close(_fixed(snn, x), _fixed(snn, x), rtol=0, atol=0)


def test_statistics_count_only_the_steps_run(trained):
    snn, x, _ = trained
    chunk = 2
    rule = _mixed_rule(_fixed(snn, x))
    result = snn.run_early_exit(x, rule, chunk=chunk)
    run = {
        name: (int(layer.spikes), int(layer.neuron_steps), int(layer.neurons)) for name, layer in snn.if_layers.items()
    }
    meters = {
        s["name"]: (s["sops"], s["macs"], s["macs_per_sample"], s["spike_driven"]) for s in snn.statistics()["synapses"]
    }
    assert snn.samples == x.shape[0] and snn.sample_steps == int(result.steps_run.sum())
    for name, (_, neuron_steps, neurons) in run.items():
        assert neuron_steps == neurons * int(result.steps_run.sum()), name

    # the same work as running each group of samples for its own number of steps, separately
    snn.reset_statistics()
    for steps in result.steps_run.unique().tolist():
        with torch.no_grad():
            snn(x[result.steps_run == steps], T=steps)
    for name, layer in snn.if_layers.items():
        assert int(layer.spikes) == run[name][0], name
    for row in snn.statistics()["synapses"]:
        name = row["name"]
        sops, macs, per_sample, spike_driven = meters[name]
        if spike_driven:
            assert sops == row["sops"] and sops > 0, name
        else:  # the stem runs once per sample, as in the fixed-T runs
            assert macs == row["macs"] == per_sample * x.shape[0], name

    stats = result.statistics
    assert stats["samples"] == x.shape[0] and stats["sample_steps"] == int(result.steps_run.sum())
    snn.reset_statistics()
    with torch.no_grad():
        snn(x, T=T_MAX)
    fixed = snn.statistics()
    assert stats["total"]["sops_per_sample"] < fixed["total"]["sops_per_sample"]
    assert stats["energy"]["snn_j_per_sample"] < fixed["energy"]["snn_j_per_sample"]


def test_statistics_off_gives_none(trained):
    snn, x, _ = trained
    snn.record_statistics(False)
    try:
        result = snn.run_early_exit(x[:16], 0.9)
    finally:
        snn.record_statistics(True)
    assert result.statistics is None and snn.samples == 0
    assert "energy" not in result.summary()


def test_batches_and_tradeoff(trained):
    snn, x, y = trained
    rule = _mixed_rule(_fixed(snn, x))
    whole = run_early_exit(snn, x, rule, labels=y)
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, x.shape[0], 64)]
    joined = evaluate_early_exit(snn, batches, rule)
    assert torch.equal(joined.exit_steps, whole.exit_steps) and joined.accuracy == whole.accuracy
    assert joined.statistics["samples"] == x.shape[0]
    assert sum(joined.exit_histogram) == x.shape[0] and len(joined.exit_histogram) == T_MAX
    assert joined.exit_histogram == [int((whole.exit_steps == t).sum()) for t in range(1, T_MAX + 1)]

    thresholds = [0.3, 0.6, 0.9, 0.99, 0.9999]
    rows = exit_tradeoff(snn, batches, thresholds)
    assert [row["confidence"] for row in rows] == thresholds
    means = [row["mean_exit_step"] for row in rows]
    assert means == sorted(means) and means[0] < means[-1]  # a higher threshold never exits sooner
    for row, c in zip(rows, thresholds):
        assert row["accuracy"] == evaluate_early_exit(snn, batches, c).accuracy
    fixed_acc = (_fixed(snn, x).argmax(-1) == y).double().mean(1).tolist()
    table = format_tradeoff(rows, fixed_acc)
    assert table.count("\n") == len(rows) + 1 and "p1 >= 0.9" in table and "fixed T for same acc" in table
    text = whole.summary()
    assert f"accuracy {100 * whole.accuracy:.2f} %" in text and "exit step" in text and "energy" in text


def test_score_exits_post_hoc():
    outputs = torch.tensor(
        [[[0.0, 0.0], [5.0, 0.0]], [[3.0, 0.0], [5.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]
    )  # [T=3, B=2, K=2]
    assert score_exits(outputs, 0.9).tolist() == [2, 1]
    assert score_exits(outputs, ExitRule(confidence=0.9, min_steps=2)).tolist() == [2, 2]
    assert score_exits(outputs, ExitRule(margin=0.98)).tolist() == [3, 1]  # T ends it


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(confidence=0.0), "confidence must be > 0"),
        (dict(confidence=1.5), "confidence must be <= 1"),
        (dict(confidence=math.nan), "confidence must be finite"),
        (dict(margin=-0.1), "margin must be > 0"),
        (dict(confidence=0.9, temperature=0.0), "temperature must be > 0"),
        (dict(confidence=0.9, min_steps=0), "min_steps must be an int >= 1"),
        (dict(), "needs confidence and/or margin"),
    ],
)
def test_bad_rule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExitRule(**kwargs)


def test_bad_run_arguments(trained):
    snn, x, y = trained
    with pytest.raises(ValueError, match="T_max must be an int >= 1"):
        snn.run_early_exit(x, 0.9, T_max=0)
    with pytest.raises(ValueError, match="chunk must be an int >= 1"):
        snn.run_early_exit(x, 0.9, chunk=0)
    with pytest.raises(ValueError, match=r"min_steps \(9\) must be <= T_max \(8\)"):
        snn.run_early_exit(x, ExitRule(confidence=0.9, min_steps=9))
    with pytest.raises(ValueError, match="confidence must be <= 1"):
        snn.run_early_exit(x, 2.0)
    with pytest.raises(TypeError, match="rule must be an ExitRule"):
        snn.run_early_exit(x, "0.9")
    with pytest.raises(ValueError, match="labels must have shape"):
        snn.run_early_exit(x, 0.9, labels=y[:-1])
    with pytest.raises(TypeError, match="snn must be a SpikingNetwork"):
        run_early_exit(nn.Linear(2, 2), x, 0.9)


def test_output_not_class_scores_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), NoisyQuant(3, lam=1.0), nn.Conv2d(4, 3, 1)).eval()
    snn = to_snn(model, 4)
    with pytest.raises(ValueError, match=r"snn: early exit needs a classifier whose output is \[B, classes\]"):
        snn.run_early_exit(torch.randn(2, 1, 8, 8), 0.9)
    assert all(layer.v is None for layer in snn.if_layers.values())


def test_result_concatenate_needs_parts():
    with pytest.raises(ValueError, match="at least one"):
        EarlyExitResult.concatenate([])


def test_convert_command_prints_the_tradeoff(tmp_path, capsys):
    import json

    from na_kernels.app.cli import main

    run = tmp_path / "run"
    assert train_digits(run) == 0
    capsys.readouterr()
    report = tmp_path / "convert.json"
    assert (
        main(
            [
                "convert",
                "--checkpoint",
                str(run / "last.pt"),
                "--T",
                "6",
                "--exit-confidence",
                "0.5",
                "0.9",
                "--exit-min-steps",
                "2",
                "--report",
                str(report),
                "--no-progress",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "Early exit" in text and "p1 >= 0.5, min 2 steps" in text and "p1 >= 0.9, min 2 steps" in text
    assert "fixed T for same acc" in text
    rows = json.loads(report.read_text())["early_exit"]
    assert [row["confidence"] for row in rows] == [0.5, 0.9] and all(row["min_steps"] == 2 for row in rows)
    assert all(2 <= row["mean_exit_step"] <= 6 and sum(row["exit_histogram"]) == row["samples"] for row in rows)


def test_convert_exit_options_are_checked(capsys):
    from na_kernels.app.cli import _exit_rules, build_parser

    parser = build_parser()
    base = ["convert", "--checkpoint", "c.pt", "--T", "8"]
    args = parser.parse_args(base + ["--exit-confidence", "0.8", "0.9", "--exit-margin", "0.5"])
    assert [(r.confidence, r.margin) for r in _exit_rules(args)] == [(0.8, 0.5), (0.9, 0.5)]
    assert _exit_rules(parser.parse_args(base)) == []
    for bad, message in (
        (["--exit-confidence", "1.5"], "confidence must be <= 1"),
        (["--exit-margin", "0"], "margin must be > 0"),
        (["--exit-min-steps", "0"], "exit_min_steps must be an int >= 1"),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(base + bad)
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--exit-min-steps \(9\) must be <= --T \(8\)"):
        _exit_rules(parser.parse_args(base + ["--exit-confidence", "0.9", "--exit-min-steps", "9"]))
    with pytest.raises(ValueError, match="--exit-min-steps needs --exit-confidence"):
        _exit_rules(parser.parse_args(base + ["--exit-min-steps", "2"]))


def test_split_stem_computes_the_same_graph():
    from nn_models import TinyResNet, prepared

    from na_kernels.snn.early_exit import split_stem

    torch.manual_seed(0)
    snn = to_snn(prepared(TinyResNet), 3)
    stem, body = split_stem(snn.network)
    assert stem is not None and split_stem(snn.network) == (stem, body)  # cached
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        whole = snn(x)
        snn._set(time_steps=3)
        try:
            parts = body(x, *stem(x))
        finally:
            snn._set(time_steps=1)
    torch.testing.assert_close(
        parts.reshape(3, 4, -1).cumsum(0) / torch.arange(1, 4).reshape(3, 1, 1), whole, rtol=0, atol=0
    )
    rule = ExitRule(confidence=0.5)
    result = snn.run_early_exit(x, rule)
    assert torch.equal(result.exit_steps, score_exits(whole, rule))


class _RepeatsItsInput(nn.Module):
    """Batch-size arithmetic on the input meets spikes: the converter repeats the input itself."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = NoisyQuant(3, lam=1.0)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).reshape(x.size(0), -1))


def test_early_exit_when_the_stem_cannot_be_cut():
    from na_kernels.snn.early_exit import split_stem

    torch.manual_seed(0)
    snn = to_snn(_RepeatsItsInput().eval(), 6)
    assert not snn.conversion_report["stem_runs_once"] and split_stem(snn.network) == (None, None)
    x = torch.randn(32, 1, 8, 8)
    fixed = _fixed(snn, x, 6)
    rule = ExitRule(confidence=float(torch.softmax(fixed[1], -1).amax(-1).median()))
    result = snn.run_early_exit(x, rule, chunk=2)
    assert (result.exit_steps < 6).any() and (result.exit_steps > 1).any()
    assert torch.equal(result.exit_steps, score_exits(fixed, rule))
    torch.testing.assert_close(
        result.outputs, fixed[result.exit_steps - 1, torch.arange(32)], rtol=0, atol=_tolerance(fixed)
    )


def test_score_exits_bad_outputs():
    with pytest.raises(ValueError, match=r"outputs must be a \[T, B, K\] tensor"):
        score_exits(torch.zeros(4, 3), 0.9)
    with pytest.raises(ValueError, match="K >= 2 classes"):
        score_exits(torch.zeros(4, 3, 1), 0.9)


def test_split_cache_does_not_keep_the_network_alive():
    import gc
    import weakref

    from na_kernels.snn.early_exit import _SPLITS, split_stem

    snn = to_snn(nn.Sequential(nn.Linear(4, 8), NoisyQuant(3, lam=1.0), nn.Linear(8, 3)).eval(), 4)
    stem, _ = split_stem(snn.network)
    assert stem is not None and snn.network in _SPLITS
    network = weakref.ref(snn.network)
    del snn, stem
    gc.collect()
    assert network() is None


@pytest.mark.parametrize("chunk", [1, 2])
def test_inputs_with_nan_and_inf_run_as_the_fixed_T_run(chunk):
    # the carried potentials hold NaN / inf where the input did: each chunk continues from them
    from nn_models import SmallCNN, poisoned, prepared

    torch.manual_seed(0)
    snn = to_snn(prepared(SmallCNN), T=6)
    x = poisoned(torch.randn(6, 3, 16, 16))
    fixed = _fixed(snn, x, T=6)
    result = run_early_exit(snn, x, ExitRule(confidence=0.3), chunk=chunk)
    at_exit = fixed[result.exit_steps - 1, torch.arange(x.shape[0])]
    torch.testing.assert_close(result.outputs, at_exit, rtol=0, atol=_tolerance(fixed.nan_to_num()), equal_nan=True)


@pytest.mark.parametrize("temperature", [1e-45, 1e-30, 3e38])
def test_extreme_temperatures_give_probabilities_not_nan(temperature):
    # logits / 1e-45 overflow to inf and softmax(inf, ...) is NaN: every sample ran to T_max silently
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.5, 0.5, 0.0], [-3.0, 4.0, 4.5]])
    rule = ExitRule(confidence=0.9, temperature=temperature)
    probabilities = rule.probabilities(logits)
    assert torch.isfinite(probabilities).all()
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3))
    if temperature < 1:  # the limit tau -> 0: all mass on the largest logit(s)
        assert torch.equal(probabilities, torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
        assert rule.holds(logits).tolist() == [True, False, True]
    else:
        assert rule.holds(logits).tolist() == [False, False, False]


def test_labels_out_of_range_are_refused():
    from nn_models import SmallCNN, prepared

    torch.manual_seed(0)
    snn = to_snn(prepared(SmallCNN), T=3)  # 5 classes
    x = torch.randn(4, 3, 16, 16)
    for labels in (torch.tensor([0, 1, 5, 2]), torch.tensor([0, -1, 2, 3])):
        with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 5\)"):
            snn.run_early_exit(x, 0.9, labels=labels)
        with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 5\)"):
            evaluate_early_exit(snn, [(x, labels)], 0.9)
