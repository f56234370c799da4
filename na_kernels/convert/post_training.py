"""post_training_convert: a trained plain-ReLU network to an SNN without retraining.

The network's ReLU / ReLU6 / Hardtanh(0, a) activations are replaced by NoisyQuant (noise off,
p = T levels, one per call site); one pass over calibration batches then runs the *original*
ANN (each new NoisyQuant returns ``clamp(x, 0, a)``, a = ∞ for ReLU) and sets each λ to a high
percentile of that activation (per channel where ``per_channel``); ``to_snn`` converts
(θ = λ, v_init = θ/2), and ``calibrate_thresholds`` optionally matches the spike counts
channel-wise. This is SpikingJelly's rate-coding recipe ("99.9%", channel-wise, half
threshold) on this package's converter.

The percentile is exact: each layer (channel) keeps a streaming top-k of the activations seen,
with ``k = ceil((1 - q)(N - 1)) + 2`` for the N values the whole calibration set gives it, which
holds both order statistics torch.quantile's linear interpolation reads. Memory: about
(100 - percentile) % of the layer's activations over the calibration set (0.1 % at 99.9).
"""

import copy
import math
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import check_batches, check_bool, check_int, check_parameter_values, check_real, check_time_steps
from .calibrate import calibrate_thresholds, calibration_inputs
from .convert import to_snn
from .replace import replace_activations


class StreamingPercentile:
    """The exact ``percentile`` of every row of a stream of ``[rows, n]`` blocks, for a stream
    of ``total`` values per row known in advance: keeps the largest ``k`` of each row,
    ``k = ceil((1 - q)(total - 1)) + 2``, and interpolates as ``torch.quantile`` does."""

    def __init__(self, percentile: float, total: int):
        self.q = percentile / 100.0
        self.total = int(total)
        self.k = min(self.total, math.ceil((1.0 - self.q) * (self.total - 1)) + 2)
        self.top = None
        self.seen = 0

    def update(self, rows: torch.Tensor) -> None:
        """Add a ``[rows, n]`` block (float32)."""
        self.seen += rows.shape[1]
        if self.seen > self.total:
            raise ValueError(f"the stream gave more than the {self.total} values per row announced")
        merged = rows if self.top is None else torch.cat([self.top, rows], dim=1)
        self.top = merged.topk(min(self.k, merged.shape[1]), dim=1).values  # descending

    def value(self) -> torch.Tensor:
        """``[rows]``: the q-quantile of each row over all values (linear interpolation)."""
        if self.seen != self.total:
            raise ValueError(f"the stream gave {self.seen} values per row, {self.total} were announced")
        # the position in the ascending order of all values, in float32 as torch.quantile computes it
        position = torch.tensor(self.q, dtype=torch.float32) * (self.total - 1)
        low = int(position.floor())
        high = int(position.ceil())
        below = self.top[:, self.total - 1 - low]  # the ascending index i is top[total - 1 - i]
        above = self.top[:, self.total - 1 - high]
        return torch.lerp(below, above, (position - low).to(below.dtype))


@torch.no_grad()
def post_training_convert(
    model: nn.Module,
    calibration_data,
    T: int,
    *,
    percentile: float = 99.9,
    per_channel: bool = True,
    calibrate: bool = False,
    calibration_iterations: int = 6,
    chunk: Optional[int] = None,
    allow_maxpool: bool = False,
    progress: bool = True,
):
    """Convert a trained plain-ReLU network (not modified) to a SpikingNetwork without retraining.

    For every activation call site l (ReLU, ReLU6, Hardtanh(0, a), their functional forms; a
    module called at several sites gets one λ per site), with ``a_l(x)`` the original activation
    on the calibration inputs::

        λ_l = percentile_q(a_l)          (per channel c: over the batch and positions of c)

    then ``to_snn`` with θ = λ and v_init = θ/2 (p = T levels in the quantized ANN view,
    ``snn.ann``). Channels whose percentile is 0 take the largest λ of their layer (they do not
    fire either way); a layer that never fires takes λ = 1.

    Args:
        model: the trained ANN (ReLU activations; BatchNorm is folded). A deep copy is converted.
        calibration_data: an iterable of input batches (tensors or (inputs, labels) pairs),
            a few hundred samples or more; kept in memory (threshold calibration reuses them).
        T: time steps the SNN runs by default (int >= 1); also the quantized view's p.
        percentile: q in (0, 100]: 99.9 (default) clips the rare outliers, 100 is the maximum.
            A list of them (e.g. ``SEARCH_PERCENTILES``): each is converted, and the one whose
            SNN output after T steps is closest to the ANN's on the calibration inputs (mean
            squared error; no labels needed; ties go to the larger q) is returned. Low T favours
            lower percentiles (more neurons reach θ/2 in one step); long T favours higher ones.
        per_channel: one λ (threshold) per channel instead of one per layer.
        calibrate: then run ``calibrate_thresholds`` (channel-wise spike-count matching at T).
        calibration_iterations: its iterations (int >= 0).
        chunk, allow_maxpool: as ``to_snn``.
        progress: show a progress bar over the calibration batches.

    Returns:
        ``(snn, report)``: the ``SpikingNetwork`` (``snn(x)`` -> ``[T, B, ...]``) and a dict with
        ``lam`` (site name -> λ tensor, [] or [C]), ``percentile``, ``per_channel``, ``samples``,
        ``replacement`` (the ``ReplacementReport``) and ``calibration`` (calibrate_thresholds'
        result, or None); with a list of percentiles also ``percentile_errors`` (q -> the mean
        squared error to the ANN on the calibration inputs).
    """
    T = check_time_steps("T", T)
    if isinstance(percentile, (list, tuple)):
        return _best_percentile(
            model,
            calibration_data,
            T,
            percentile,
            per_channel=per_channel,
            calibrate=calibrate,
            calibration_iterations=calibration_iterations,
            chunk=chunk,
            allow_maxpool=allow_maxpool,
            progress=progress,
        )
    percentile = check_real(
        "percentile",
        percentile,
        strictly_positive=True,
        maximum=100.0,
        accepted="a percentile in (0, 100] or a list of them",
    )
    per_channel = check_bool("per_channel", per_channel)
    calibrate = check_bool("calibrate", calibrate)
    calibration_iterations = check_int("calibration_iterations", calibration_iterations, minimum=0)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(calibration_data, torch.Tensor):
        raise TypeError(
            "calibration_data must be an iterable of batches (e.g. a DataLoader or [x]), got one tensor: "
            "wrap it in a list"
        )
    batches = check_batches("calibration_data", [calibration_inputs(batch) for batch in calibration_data])
    if not batches:
        raise ValueError("post_training_convert needs at least one calibration batch")
    samples = sum(inputs[0].shape[0] for inputs in batches)

    ann, replacement = replace_activations(
        copy.deepcopy(model).eval(), p=T, noise=None, lam=1.0, per_channel=per_channel, per_call_site=True
    )
    if not replacement.replaced:
        raise ValueError("post_training_convert found no ReLU / ReLU6 / Hardtanh(0, a) activation to convert")
    sites = {name: ann.get_submodule(name) for name, _ in replacement.replaced}
    streams, handles = {}, []
    current = [0]  # the index of the batch being observed

    def observer(name, clip):
        def hook(module, inputs, output):
            activation = inputs[0].clamp(0.0, clip)  # the original network's activation
            if per_channel:
                rows = activation.transpose(0, 1).reshape(activation.shape[1], -1)
            else:
                rows = activation.reshape(1, -1)
            if name not in streams:
                per_sample = rows.shape[1] // max(activation.shape[0], 1)
                streams[name] = StreamingPercentile(percentile, per_sample * samples)
            streams[name].update(rows.to(torch.float32))
            if not bool(torch.isfinite(streams[name].top[:, 0]).all()):  # each row's largest (topk puts NaN first)
                raise ValueError(
                    f"calibration_data: batch {current[0]} overflows float32 at activation {name} (inf or NaN "
                    "from finite data): scale the data to the range the model was trained on"
                )
            return activation

        return hook

    for name, module in sites.items():
        handles.append(module.register_forward_hook(observer(name, replacement.clip_levels.get(name, math.inf))))
    try:
        for current[0], inputs in enumerate(
            tqdm(batches, desc="calibration activations", disable=not progress, leave=False)
        ):
            ann(*inputs)
    finally:
        for handle in handles:
            handle.remove()

    lams = {}
    for name, module in sites.items():
        if name not in streams:
            raise ValueError(f"{name}: this activation was not called by the calibration batches; nothing sets its λ")
        lam = streams[name].value()
        floor = 2 * module.min_lam
        fallback = lam.max() if bool((lam > floor).any()) else torch.ones(())
        lam = torch.where(lam > floor, lam, fallback.to(lam))
        check_parameter_values("lam", lam, f"activation {name} (its percentile over calibration_data)")
        module.lam = lam if per_channel else lam.reshape(())
        lams[name] = module.lam.detach().clone()

    snn = to_snn(ann, T, chunk, allow_maxpool=allow_maxpool)
    calibration = None
    if calibrate:
        calibration = calibrate_thresholds(snn, batches, calibration_iterations, T=T)
    report = dict(
        lam=lams,
        percentile=percentile,
        per_channel=per_channel,
        samples=samples,
        replacement=replacement,
        calibration=calibration,
    )
    return snn, report


SEARCH_PERCENTILES = (99.0, 99.5, 99.9, 99.99)
"""Candidates for ``post_training_convert(..., percentile=SEARCH_PERCENTILES)``."""


@torch.no_grad()
def _best_percentile(model, calibration_data, T, candidates, *, progress, **options):
    """``post_training_convert`` at each candidate percentile; the SNN closest to the ANN after
    T steps on the calibration inputs (mean squared error of the outputs), ties to the larger q."""
    candidates = [
        check_real("percentile", q, strictly_positive=True, maximum=100.0, accepted="a percentile in (0, 100]")
        for q in candidates
    ]
    if not candidates:
        raise ValueError(
            "percentile: an empty list; give one percentile or several candidates, e.g. SEARCH_PERCENTILES"
        )
    if isinstance(calibration_data, torch.Tensor):
        raise TypeError(
            "calibration_data must be an iterable of batches (e.g. a DataLoader or [x]), got one tensor: "
            "wrap it in a list"
        )
    batches = check_batches("calibration_data", [calibration_inputs(batch) for batch in calibration_data])
    ann = copy.deepcopy(model).eval()
    targets = [ann(*inputs).to(torch.float64) for inputs in batches]
    best, errors = None, {}
    for q in tqdm(candidates, desc="percentile search", disable=not progress, leave=False):
        snn, report = post_training_convert(model, batches, T, percentile=q, progress=False, **options)
        error = sum(
            float(((snn(*inputs)[-1].to(torch.float64) - target) ** 2).sum())
            for inputs, target in zip(batches, targets)
        ) / sum(t.numel() for t in targets)
        errors[q] = error
        if best is None or (error, -q) <= (best[0], -best[1]):
            best = (error, q, snn, report)
    _, _, snn, report = best
    report["percentile_errors"] = errors
    return snn, report
