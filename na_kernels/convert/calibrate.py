"""Channel-wise threshold calibration of a SpikingNetwork on a few batches.

For every IF layer and channel c, the target is the spike count the quantized ANN's activation
level asks for over T steps, ``target_c = sum q_c * T / p`` (q the ANN's level in 0..p, summed
over the calibration samples and the channel's positions), and the measure is the sum of the
kernel's int32 spike counts ``n_c`` of an SNN run on the same inputs. Each iteration updates all
layers at once::

    θ_c <- θ_c * clamp(((n_c + 1) / (target_c + 1)) ** step_size, 1/max_ratio, max_ratio)

(a count is about ``x*T/θ``, so step_size = 1 is a Newton step on ``n_c = target_c``; the
default 0.5 damps the oscillation that layer interactions cause), while the spike
amplitude stays λ: matched counts then give the ANN's activation ``q*λ/p``. The thresholds of the
iteration with the smallest total relative count error ``sum_c |n_c - target_c| / sum_c target_c``
(over all layers) are kept, so calibration never makes that error worse on these batches.
"""

import torch

from .._validation import check_batches, check_greater, check_int, check_real, check_time_steps
from ..snn.network import SpikingNetwork


def calibration_inputs(batch):
    """The input tuple of one calibration batch: a tensor, or the first item of an (inputs, labels) pair."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return (batch[0],)  # (inputs, labels) as a DataLoader yields them
    raise TypeError(f"calibration batches must be tensors or (inputs, labels) pairs, got {type(batch).__name__}")


@torch.no_grad()
def calibrate_thresholds(
    snn, batches, iterations: int = 6, *, T=None, step_size: float = 0.5, max_ratio: float = 2.0
) -> dict:
    """Adjust per-channel IF thresholds so the SNN's spike counts match the quantized ANN.

    Args:
        snn: a ``SpikingNetwork`` from ``to_snn``; its thresholds become per-channel ([C]).
        batches: a few input batches (tensors or (inputs, labels) pairs), kept in memory.
        iterations: threshold updates, int >= 0 (each costs one SNN run over the batches).
        T: the number of steps to calibrate for (default ``snn.T``); calibrate for the T you run.
        step_size: the exponent of the update, in (0, 1]: 1 is the full Newton step, which
            overshoots (layers interact and counts saturate); 0.5 converges on the tested nets.
        max_ratio: the largest factor one update may change a threshold by, > 1.

    Returns:
        ``{"T", "errors": [total relative count error per iteration, before each update],
        "best_iteration", "layers": {name: {"before", "after"}}}`` (per-layer relative errors).
        The SNN's statistics are reset afterwards.
    """
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(
            f"snn must be a SpikingNetwork (what to_snn returns), got {type(snn).__name__}: "
            "convert the trained model with na_kernels.nn.to_snn(model, T) and calibrate that"
        )
    T = snn.T if T is None else check_time_steps("T", T)
    iterations = check_int("iterations", iterations, minimum=0)
    step_size = check_real("step_size", step_size, strictly_positive=True, maximum=1.0, accepted="a real in (0, 1]")
    max_ratio = check_greater("max_ratio", max_ratio, 1.0, accepted="a real > 1")
    batches = [calibration_inputs(batch) for batch in batches]
    if not batches:
        raise ValueError("calibrate_thresholds needs at least one batch")
    check_batches("batches", batches)  # before anything changes: bad input loses nothing
    layers = snn.if_layers
    recording = {name: (layer.record, layer.record_channels) for name, layer in layers.items()}
    original = {name: layer.threshold.clone() for name, layer in layers.items()}

    targets = _ann_targets(snn, batches, T)

    history, snapshots, per_layer_history = [], [], []
    try:
        for iteration in range(iterations + 1):
            counts, per_layer, total = _count_errors(snn, batches, T, targets)
            history.append(total)
            per_layer_history.append(per_layer)
            snapshots.append({name: layers[name].threshold.clone() for name in targets})
            if iteration == iterations:
                break
            for name, target in targets.items():
                layer = layers[name]
                ratio = ((counts[name] + 1.0) / (target + 1.0)).pow(step_size).clamp(1.0 / max_ratio, max_ratio)
                threshold = layer.threshold.to(torch.float64).expand(ratio.shape) * ratio.to(layer.threshold.device)
                layer.threshold = threshold.to(torch.float32).contiguous()
        best = min(range(len(history)), key=history.__getitem__)
        for name, threshold in snapshots[best].items():
            layers[name].threshold = threshold
    except BaseException:
        for name, threshold in original.items():  # an error part-way leaves the thresholds as they were
            layers[name].threshold = threshold
        raise
    finally:
        snn.reset_statistics()
        for name, (flag, channels) in recording.items():
            layers[name].record, layers[name].record_channels = flag, channels
    return dict(
        T=T,
        errors=history,
        best_iteration=best,
        layers={name: dict(before=per_layer_history[0][name], after=per_layer_history[best][name]) for name in targets},
    )


def _ann_targets(snn, batches, T):
    """Per IF layer, ``target_c = sum q_c * T / p`` of the quantized ANN over ``batches`` ([C], float64)."""
    layers = snn.if_layers
    for layer in layers.values():
        layer.ann_channel_levels = None
        layer.record_ann_levels = True
    try:
        for inputs in batches:
            snn.ann(*inputs)
    finally:
        for layer in layers.values():
            layer.record_ann_levels = False
    targets = {}
    for name, layer in layers.items():
        if layer.ann_channel_levels is not None:
            targets[name] = layer.ann_channel_levels * (T / layer.p)
            layer.ann_channel_levels = None
    return targets


def _count_errors(snn, batches, T, targets):
    """One T-step SNN run over ``batches``: ``(counts n_c per layer, relative count error per
    layer, total relative count error sum |n_c - target_c| / sum target_c)``."""
    layers = snn.if_layers
    snn.reset_statistics()
    snn.record_statistics(True)
    for layer in layers.values():
        layer.record_channels = True
    for inputs in batches:
        snn(*inputs, T=T)
    counts = {name: layers[name].channel_spikes.to(torch.float64) for name in targets}
    per_layer = {
        name: float((counts[name] - targets[name]).abs().sum() / targets[name].sum().clamp_min(1.0)) for name in targets
    }
    mismatch = sum((counts[n] - targets[n]).abs().sum() for n in targets)
    total = float(mismatch / sum(targets[n].sum() for n in targets).clamp_min(1.0))
    return counts, per_layer, total
