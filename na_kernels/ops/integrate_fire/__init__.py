"""integrate_fire: the public function and its registration (``na_kernels::integrate_fire`` and
``na_kernels::integrate_fire_backward``, see ``_registration``).

What the forward keeps for backward (the record's ``save``, chosen by ``integrate_fire``):
nothing unless grad mode is on and x_seq or a v_init tensor requires grad (inference writes
spikes, counts and v_final only, and on the C++ backend in plain eager mode only those the
caller asks for: ``return_counts``, ``return_v``). Otherwise (``_choose_save``) either
  * h = v + x[t] of every step, float32 [T, ...] (``Save.H``; fp32 x_seq on CUDA), the one
    T x N tensor the forward writes beyond its outputs; backward reads it back; or
  * x_seq itself and the v_init tensor (``Save.X``; CPU tensors, 16-bit x_seq, x_seq repeated
    over T with stride 0): never more bytes than h, nothing extra is written, and backward
    first recomputes h, bit for bit, in the same launch;
plus the float32 threshold. The spikes are recomputed from h (``h >= theta``) in backward.

Every backend module (``na_kernels.ops.integrate_fire.{triton,cpu,reference}``) has

    forward(x_seq, threshold, v_init, args) -> (spikes, counts, v_final, h)
    backward(grad_spikes, grad_v, h, x_seq, v_init, threshold, args, x_dtype, need_grad_x,
             need_grad_v_init) -> (grad_x, grad_v_init)

with ``threshold`` float [1] or [C], ``v_init`` a float32 tensor of the step shape or None
(``args.v_frac * theta``), ``args`` an ``_spec.IntegrateFireArgs``; backward gets h (saved) or
x_seq and v_init (h recomputed), None grads are zero, and an output not needed comes back empty.
Every output is in x_seq's per-step layout (``_layout.Layout``).
"""

import torch

from ... import _backend, _layout
from ..._spec import DEFAULT_V_INIT, IntegrateFireArgs, Save
from ..._validation import (
    check_alpha,
    check_amplitude,
    check_bool,
    check_initial_potential,
    check_reset,
    check_sequence,
    check_spikes_fit,
    check_surrogate,
    positive_parameter_tensor,
)
from .. import _eager
from .._registration import Op


def _fake(x_seq, threshold, v_init, args):
    layout = _layout.Layout.of_input(x_seq, threshold.numel())
    return _layout.forward_outputs(layout, x_seq, args.save == Save.H)


def _fake_backward(grad_spikes, grad_v, h, x_seq, v_init, threshold, args, x_dtype, need_grad_x, need_grad_v_init):
    source = x_seq if h is None else h
    layout = _layout.backward_layout(h, x_seq, threshold)
    return _layout.backward_outputs(layout, source.shape[0], x_dtype, source.device, need_grad_x, need_grad_v_init)


def _save(ctx, tensors, args, output):
    x_seq, threshold, v_init = tensors
    spikes, counts, v_final, h = output
    ctx.mark_non_differentiable(counts, h)
    ctx.set_materialize_grads(False)
    if args.save == Save.X:  # keep x_seq (and v_init): backward recomputes h
        ctx.save_for_backward(None, x_seq, v_init, threshold)
    else:
        ctx.save_for_backward(h, None, None, threshold)
    ctx.x_dtype = x_seq.dtype


def _backward(ctx, run, grad_spikes, grad_counts, grad_v, grad_h):
    h, x_seq, v_init, threshold = ctx.saved_tensors
    need_grad_x = ctx.needs_input_grad[0]
    need_grad_v_init = ctx.needs_input_grad[2]
    if not (need_grad_x or need_grad_v_init) or (grad_spikes is None and grad_v is None):
        return None, None, None
    if ctx.args.save == Save.NOTHING:
        raise RuntimeError(
            "integrate_fire: backward needs what the forward saves only when called with grad mode on "
            "and an input that requires grad (save != 0)"
        )
    grad_x, grad_v_init = run(
        grad_spikes, grad_v, h, x_seq, v_init, threshold, ctx.x_dtype, need_grad_x, need_grad_v_init
    )
    return (grad_x if need_grad_x else None), None, (grad_v_init if need_grad_v_init else None)


OP = Op(
    "integrate_fire",
    IntegrateFireArgs,
    inputs="Tensor x_seq, Tensor threshold, Tensor? v_init",
    outputs="(Tensor, Tensor, Tensor, Tensor)",
    backward_inputs=("Tensor? grad_spikes, Tensor? grad_v, Tensor? h, Tensor? x_seq, Tensor? v_init, Tensor threshold"),
    backward_extras="ScalarType x_dtype, bool need_grad_x, bool need_grad_v_init",
    backward_outputs="(Tensor, Tensor)",
    fake=_fake,
    fake_backward=_fake_backward,
    save=_save,
    backward=_backward,
)


def _direct_cpu(x_seq, threshold, v_tensor):
    """Whether a call without autograd may run the C++ forward directly, with its options
    (``overwrite``, outputs left unwritten): a plain eager call on the C++ backend."""
    return _eager.forward_ok(x_seq, threshold, v_tensor) and _backend.resolve(x_seq.device) == "cpu"


def _overwritable(x_seq):
    """Whether the spikes may take x_seq's memory: x_seq dense over its T steps (the kernel writes
    each spike where its input was just read)."""
    return _layout.is_dense(tuple(x_seq.shape[1:]), tuple(x_seq.stride()[1:])) and (
        x_seq.shape[0] == 1 or x_seq.stride(0) == _layout.numel(x_seq.shape[1:])
    )


def _choose_save(x_seq):
    """What the forward keeps for backward when a gradient is needed.

    x_seq (Save.X) never costs more memory than h (float32 [T, ...]): as many bytes for fp32,
    half for 16-bit, N elements for a step repeated over T (stride 0), nothing new at all when
    x_seq is kept alive anyway. Backward then recomputes h: on the CPU in a cache-sized
    per-thread scratch, which measured as fast as reading a saved h or faster (it saves the
    write and the read back of h). On CUDA the recompute goes through a [T, ...] float32 scratch
    in global memory, 8 extra bytes per element of traffic in backward against 4 saved in
    forward, so fp32 inputs there keep h (Save.H).
    """
    if x_seq.device.type != "cuda" or x_seq.element_size() < 4:
        return Save.X
    if x_seq.shape[0] > 1 and x_seq.stride(0) == 0:
        return Save.X
    return Save.H


def integrate_fire(
    x_seq,
    threshold=1.0,
    *,
    v_init=DEFAULT_V_INIT,
    reset="subtract",
    amplitude="threshold",
    surrogate="sigmoid",
    alpha=4.0,
    detach_reset=False,
    return_v=False,
    overwrite=False,
    return_counts=True,
):
    """Multi-step integrate-and-fire over all T steps in one fused pass, with spike counts.

    Per neuron, membrane potential in float32 (SpikingJelly's multi-step ``IFNode``)::

        v = v_init * threshold
        for t in range(T):
            h = v + x_seq[t]
            s = h >= threshold                    # ties fire
            v = h - s * threshold                 # reset="subtract";  "zero": v = h * (1 - s)
            spikes[t] = s * amplitude;  counts += s

    Args:
        x_seq: [T, ...] float32/float16/bfloat16 input currents, time first (T >= 1, rank >= 2).
        threshold: θ > 0: a float, a scalar tensor, or a per-channel tensor [x_seq.shape[2]]
            (channels along dim 2 of x_seq, dim 1 of a step). Receives no gradient.
        v_init: a number, read as a fraction of θ (0.5 gives θ/2, the QCFS choice), or a
            float tensor of potentials with the per-step shape x_seq.shape[1:] (e.g. the v_final
            of a previous chunk); a tensor that requires grad receives one.
        reset: "subtract" (soft reset) or "zero" (hard reset to 0).
        amplitude: "threshold" (spikes are θ) or a positive number (1.0: binary spikes).
        surrogate: backward's d s / d h, evaluated at u = h - θ (SpikingJelly's forms):
            "sigmoid"   α σ(αu)(1 - σ(αu))             (SpikingJelly Sigmoid, α = 4 default)
            "atan"      α / 2 / (1 + (π/2 α u)²)        (SpikingJelly ATan; its default α is 2)
            "triangle"  α max(0, 1 - α|u|)             (QCFS's ZIF with γ = 1/α)
            "rectangle" α [|u| < 1/(2α)]               (SpikingJelly Rect)
        alpha: the surrogate's sharpness α > 0.
        detach_reset: treat s as a constant in the reset (SpikingJelly's detach_reset).
        return_v: also return v_final, to continue the sequence in another call.
        overwrite: let the spikes take x_seq's memory (x_seq's values are then lost) where the
            call allows it: the C++ kernels in plain eager mode, no gradient needed, x_seq dense
            over all T steps (step stride = elements per step). The spikes are the same either
            way; for a caller whose x_seq dies here (a converted network's convolution output),
            it saves a fresh output's allocation and first-touch page faults.
        return_counts: also return the spike counts (False: the caller does not read them).
    Returns:
        (spikes, counts), (spikes, counts, v_final), spikes or (spikes, v_final) (as return_counts
        and return_v ask): spikes [T, ...] in x_seq's dtype, counts int32 and v_final float32 of
        shape x_seq.shape[1:]. Where the C++ kernels run in plain eager mode without autograd,
        an output not returned is not written at all.

    Backward is BPTT over all T steps in one reverse pass; gradients flow to x_seq, to a
    v_init tensor, from spikes and from v_final. For it the forward keeps, only when grad mode
    is on and x_seq or v_init requires grad, either h = v + x[t] (float32, [T, ...]; fp32 input on
    CUDA) or x_seq itself (CPU, 16-bit x_seq, or one step repeated over T with ``expand``), from
    which backward recomputes h exactly. Outputs keep x_seq's per-step memory layout (e.g. channels-last).
    See docs/design.md for the design.
    """
    return _integrate_fire(
        x_seq,
        threshold,
        v_init,
        True,
        reset,
        amplitude,
        surrogate,
        alpha,
        detach_reset,
        return_v,
        overwrite,
        return_counts,
    )


def integrate_fire_carried(x_seq, threshold, state, **options):
    """``integrate_fire(x_seq, threshold, v_init=state, **options)`` continuing from ``state``, a
    ``v_final`` this op returned (the potential a chunked run or a stateful module carries).

    Its float32 values are taken as they are, NaN and +-inf included: an input with NaN or inf
    leaves them in v (NaN never fires, +inf always does), and the continuation must equal one
    call over the whole sequence. Shape, dtype and device are checked as for ``v_init``; a
    user's ``v_init`` goes through ``integrate_fire``, which refuses non-finite potentials.
    """
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"state must be the v_final tensor of an earlier call, got {type(state).__name__}")
    return _integrate_fire(x_seq, threshold, state, False, **options)


def _integrate_fire(
    x_seq,
    threshold,
    v_init,
    finite_v_init,
    reset="subtract",
    amplitude="threshold",
    surrogate="sigmoid",
    alpha=4.0,
    detach_reset=False,
    return_v=False,
    overwrite=False,
    return_counts=True,
):
    check_sequence("x_seq", x_seq)
    threshold = positive_parameter_tensor("threshold", threshold, x_seq, 2, "x_seq.shape[2]")
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.detach()
    else:
        threshold = torch.full((1,), threshold, dtype=torch.float32, device=x_seq.device)
    v_init = check_initial_potential(v_init, x_seq, finite=finite_v_init)
    reset = check_reset(reset)
    amplitude = check_amplitude(amplitude)
    check_spikes_fit(amplitude, threshold, x_seq.dtype)
    surrogate = check_surrogate(surrogate)
    alpha = check_alpha(alpha)
    detach_reset = check_bool("detach_reset", detach_reset)
    return_v = check_bool("return_v", return_v)
    overwrite = check_bool("overwrite", overwrite)
    return_counts = check_bool("return_counts", return_counts)

    if isinstance(v_init, torch.Tensor):
        v_tensor, v_frac = v_init.to(torch.float32), 0.0
    else:
        v_tensor, v_frac = None, v_init
    save = Save.NOTHING
    if torch.is_grad_enabled() and (x_seq.requires_grad or (v_tensor is not None and v_tensor.requires_grad)):
        save = _choose_save(x_seq)
    args = IntegrateFireArgs(
        v_frac=v_frac,
        reset=reset,
        amplitude=amplitude,
        surrogate=surrogate,
        alpha=alpha,
        detach_reset=detach_reset,
        save=save,
    )
    if save == Save.NOTHING and _direct_cpu(x_seq, threshold, v_tensor):
        spikes, counts, v_final, _ = OP.eager(
            x_seq,
            threshold,
            v_tensor,
            args,
            overwrite=overwrite and _overwritable(x_seq),
            counts=return_counts,
            v_final=return_v,
        )
    else:
        spikes, counts, v_final, _ = OP(x_seq, threshold, v_tensor, args)
    outputs = (spikes,) + ((counts,) if return_counts else ()) + ((v_final,) if return_v else ())
    return outputs if len(outputs) > 1 else spikes
