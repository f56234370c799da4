"""integrate_fire on the C++ extension: the raw-pointer calls behind ``forward`` and ``backward``
(the interface of ``na_kernels.ops.integrate_fire``). The operands and outputs are laid out by
``na_kernels._layout`` exactly as for the Triton kernels; backward recomputes h from x (when the
forward kept x) in a per-thread scratch of T x the neurons one pass holds (never more than the
layer's neurons)."""

from ... import _layout, cpu
from ..._spec import DType, Save
from ...cpu.output_cache import empty_strided


def _pointer(t):
    return 0 if t is None else t.data_ptr()


def _amplitude(args):
    return dict(amp_is_theta=args.amplitude is None, amp=0.0 if args.amplitude is None else args.amplitude)


def _into(x_seq):
    """``empty_strided`` that hands back x_seq itself for a tensor of its shape, strides and dtype."""

    def empty(shape, strides, *, dtype, device=None):
        if tuple(shape) == tuple(x_seq.shape) and tuple(strides) == x_seq.stride() and dtype == x_seq.dtype:
            return x_seq
        return empty_strided(shape, strides, dtype=dtype, device=device)

    return empty


def forward(x_seq, threshold, v_init, args, overwrite=False, counts=True, v_final=True):
    """overwrite: the spikes take x_seq's memory where their strides are x_seq's (the kernel reads
    each step's x before it writes that step's spikes at the same addresses). counts / v_final
    False: that output is not written (it comes back empty)."""
    source = x_seq
    x_seq, theta, v0, layout = _layout.forward_operands(x_seq, threshold, v_init)
    save_h = args.save == Save.H
    reuse = overwrite and x_seq is source and not save_h  # h, float32 like x, must not take it too
    empty = _into(x_seq) if reuse else empty_strided
    want_counts, want_v = counts, v_final
    spikes, counts, v_final, h = _layout.forward_outputs(layout, x_seq, save_h, empty, want_counts, want_v)
    steps = x_seq.shape[0]
    cpu.extension().integrate_fire_forward(
        x=x_seq.data_ptr(),
        x_step=x_seq.stride(0),
        spikes=spikes.data_ptr(),
        counts=counts.data_ptr() if want_counts else 0,
        v_final=v_final.data_ptr() if want_v else 0,
        h=h.data_ptr() if save_h else 0,
        dtype=cpu.code(DType.of(x_seq.dtype)),
        steps=steps,
        neurons=layout.neurons,
        channel_stride=layout.channel_stride,
        channels=theta.numel(),
        theta=theta.data_ptr(),
        v0=_pointer(v0),
        v_frac=args.v_frac,
        reset=cpu.code(args.reset),
        **_amplitude(args),
        threads=cpu.num_threads(steps * layout.neurons),
    )
    return spikes, counts, v_final, h


def backward(grad_spikes, grad_v, h, x_seq, v_init, threshold, args, x_dtype, need_grad_x, need_grad_v_init):
    grad_spikes, grad_v, h, x_seq, v0, theta, layout = _layout.backward_operands(
        grad_spikes, grad_v, h, x_seq, v_init, threshold, x_dtype
    )
    source = x_seq if h is None else h
    steps = source.shape[0]
    grad_x, grad_v_init = _layout.backward_outputs(
        layout, steps, x_dtype, source.device, need_grad_x, need_grad_v_init, empty_strided
    )
    if layout.neurons == 0 or not (need_grad_x or need_grad_v_init):
        return grad_x, grad_v_init
    cpu.extension().integrate_fire_backward(
        grad_spikes=_pointer(grad_spikes),
        grad_v=_pointer(grad_v),
        h=_pointer(h),
        x=0 if h is not None else x_seq.data_ptr(),
        x_step=0 if h is not None else x_seq.stride(0),
        v0=_pointer(v0),
        v_frac=args.v_frac,
        grad_x=grad_x.data_ptr() if need_grad_x else 0,
        grad_v_init=grad_v_init.data_ptr() if need_grad_v_init else 0,
        dtype=cpu.code(DType.of(x_dtype)),
        steps=steps,
        neurons=layout.neurons,
        channel_stride=layout.channel_stride,
        channels=theta.numel(),
        theta=theta.data_ptr(),
        reset=cpu.code(args.reset),
        **_amplitude(args),
        surrogate=cpu.code(args.surrogate),
        alpha=args.alpha,
        detach_reset=args.detach_reset,
        threads=cpu.num_threads(steps * layout.neurons),
    )
    return grad_x, grad_v_init
