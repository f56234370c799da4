"""Where the ops' tensors live in memory: the stride algebra, the channel rule, the IF layout.

Every kernel sees flat arrays in memory order. A per-channel parameter (noisy_quant's lam along
dim 1 of x, integrate_fire's threshold along dim 1 of a time step) is read through one rule, the
same in both ops and on every backend: flat element (neuron) ``m`` is in channel
``(m // channel_stride) % channels``. For a dense tensor whose dim 1 is the channel dim,
``channel_stride`` is that dim's stride (the elements of one channel are the runs of
``channel_stride`` elements); with one channel it is the element count.

integrate_fire keeps x_seq's per-step memory order in every output (``Layout``). The backend
adapters and the fake rules allocate through the same functions here, so the strides a fake rule
promises are the strides the kernels deliver.
"""

import torch

# --------------------------------------------------------------------------- stride algebra


def numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def contiguous_strides(shape):
    """The strides of a contiguous tensor of ``shape`` (torch's: a size-0 dim counts as 1)."""
    strides, running = [], 1
    for size in reversed(tuple(shape)):
        strides.append(running)
        running *= max(size, 1)
    return tuple(reversed(strides))


def is_contiguous(shape, strides) -> bool:
    """Tensor.is_contiguous() of a tensor of (shape, strides): row-major, ignoring size-1 dims."""
    if 0 in shape:
        return True
    expected = 1
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def is_dense(shape, strides) -> bool:
    """True when the elements of a tensor of (shape, strides) fill a block of memory without gaps
    or overlap, in some order of the dims."""
    running = 1
    for stride, size in sorted((st, sz) for sz, st in zip(shape, strides) if sz != 1):
        if stride != running:
            return False
        running *= size
    return True


def storage_order(t: torch.Tensor):
    """``(order, view)``: t's dims from the outermost in memory to the innermost (ties, as between
    size-1 dims, by index) and t permuted into that order, a contiguous view where t is dense."""
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
    return order, t.permute(order)


def from_storage_order(t: torch.Tensor, order) -> torch.Tensor:
    """t, whose dims are in ``storage_order``'s ``order``, back in the original order of dims."""
    return t.permute([order.index(d) for d in range(len(order))])


def restride(t: torch.Tensor, strides) -> torch.Tensor:
    """t with exactly these strides (a copy only where they differ)."""
    if tuple(t.stride()) == tuple(strides):
        return t
    out = torch.empty_strided(t.shape, tuple(strides), dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


# ---------------------------------------------------------------------------- the channels


def channel_stride(shape, strides, channels: int) -> int:
    """The channel_stride (see the module docstring) of a dense tensor with its channels along dim 1."""
    if channels == 1 or len(shape) < 2:
        return max(numel(shape), 1)
    return max(strides[1], 1)


def channel_vector(parameter: torch.Tensor) -> torch.Tensor:
    """A per-channel parameter (lam, threshold) as the kernels read it: float32 [channels], contiguous."""
    if parameter.dtype == torch.float32 and parameter.dim() == 1 and parameter.is_contiguous():
        return parameter.detach()  # what the line below gives for it, in one call instead of four
    return parameter.detach().reshape(-1).to(torch.float32).contiguous()


def flat_channels(x: torch.Tensor, parameter: torch.Tensor):
    """(x contiguous, parameter float32 [channels], channel_stride, channels): noisy_quant's operands."""
    x = x.contiguous()
    parameter = channel_vector(parameter)
    channels = parameter.numel()
    return x, parameter, channel_stride(x.shape, x.stride(), channels), channels


# ------------------------------------------------------------------ integrate_fire's layout


class Layout:
    """Memory layout shared by x_seq (as the kernels read it) and every output of integrate_fire.

    Each time step is read in place when it is dense in memory in *some* dim order (contiguous,
    channels-last, ...), whatever the stride between steps (0 for an input repeated over T with
    ``expand``, 2N for ``x[::2]``); the outputs (spikes, h, counts, v_final and, in backward,
    grad_x, grad_v_init) then get the same per-step strides, so a channels-last network stays
    channels-last with no copy. Any other x_seq is copied to contiguous first (``in_place``
    False). The kernels see flat [T, N] arrays, steps N apart.
    """

    def __init__(self, step_shape, step_strides, channels: int, in_place: bool = True):
        self.step_shape = tuple(step_shape)
        self.step_strides = tuple(step_strides)
        self.neurons = numel(self.step_shape)
        self.channel_stride = channel_stride(self.step_shape, self.step_strides, channels)
        self.in_place = in_place

    @staticmethod
    def of_input(x_seq: torch.Tensor, channels: int) -> "Layout":
        step_shape = tuple(x_seq.shape[1:])
        step_strides = tuple(x_seq.stride()[1:])
        if is_contiguous(step_shape, step_strides):  # x_seq[0].is_contiguous(), without making the view
            return Layout(step_shape, contiguous_strides(step_shape), channels)
        if is_dense(step_shape, step_strides):
            return Layout(step_shape, step_strides, channels)
        return Layout(step_shape, contiguous_strides(step_shape), channels, in_place=False)

    def read(self, x_seq: torch.Tensor) -> torch.Tensor:
        """x_seq as the kernels read it: itself, or a contiguous copy when its steps are not dense."""
        return x_seq if self.in_place else x_seq.contiguous()

    def seq_strides(self):
        return (max(self.neurons, 1),) + self.step_strides

    def empty_seq(self, steps, dtype, device, empty=torch.empty_strided):
        return empty((steps,) + self.step_shape, self.seq_strides(), dtype=dtype, device=device)

    def empty_step(self, dtype, device, empty=torch.empty_strided):
        return empty(self.step_shape, self.step_strides, dtype=dtype, device=device)

    def as_seq(self, t: torch.Tensor) -> torch.Tensor:
        return restride(t, self.seq_strides())

    def as_step(self, t: torch.Tensor) -> torch.Tensor:
        return restride(t, self.step_strides)


def _nothing(dtype, device):
    return torch.empty(0, dtype=dtype, device=device)


def forward_outputs(layout: Layout, x_seq, save_h: bool, empty=torch.empty_strided, counts=True, v_final=True):
    """integrate_fire's (spikes, counts, v_final, h) in the layout; h empty unless save_h, counts
    and v_final empty where not wanted.
    empty: the outputs' allocation, torch.empty_strided or a backend's own with its signature
    (the C++ kernels' output cache)."""
    steps, device = x_seq.shape[0], x_seq.device
    return (
        layout.empty_seq(steps, x_seq.dtype, device, empty),
        layout.empty_step(torch.int32, device, empty) if counts else _nothing(torch.int32, device),
        layout.empty_step(torch.float32, device, empty) if v_final else _nothing(torch.float32, device),
        layout.empty_seq(steps, torch.float32, device, empty) if save_h else _nothing(torch.float32, device),
    )


def forward_operands(x_seq, threshold, v_init):
    """(x_seq as the kernels read it, theta float32 [C], v0 float32 in the layout or None, layout)."""
    theta = channel_vector(threshold)
    layout = Layout.of_input(x_seq, theta.numel())
    v0 = None if v_init is None else layout.as_step(v_init.to(torch.float32))
    return layout.read(x_seq), theta, v0, layout


def backward_layout(h, x_seq, threshold):
    """The backward's layout: the saved h's, or, without h, x_seq's (h is then recomputed)."""
    return Layout.of_input(h if h is not None else x_seq, threshold.numel())


def backward_outputs(layout: Layout, steps, x_dtype, device, need_grad_x, need_grad_v_init, empty=torch.empty_strided):
    """(grad_x, grad_v_init) in the layout; an empty tensor for each one not needed.
    empty: the outputs' allocation, as in ``forward_outputs``."""
    return (
        layout.empty_seq(steps, x_dtype, device, empty) if need_grad_x else _nothing(x_dtype, device),
        layout.empty_step(torch.float32, device, empty) if need_grad_v_init else _nothing(torch.float32, device),
    )


def backward_operands(grad_spikes, grad_v, h, x_seq, v_init, threshold, x_dtype):
    """Everything in one layout (``backward_layout``). Returns
    (grad_spikes, grad_v, h, x_seq, v0, theta, layout), v0 only when h is recomputed."""
    theta = channel_vector(threshold)
    layout = backward_layout(h, x_seq, theta)
    v0 = None
    if h is not None:
        h = layout.as_seq(h)
    else:
        x_seq = layout.read(x_seq)
        if v_init is not None:
            v0 = layout.as_step(v_init.to(torch.float32))
    if grad_spikes is not None:
        grad_spikes = layout.as_seq(grad_spikes.to(x_dtype))
    if grad_v is not None:
        grad_v = layout.as_step(grad_v.to(torch.float32))
    return grad_spikes, grad_v, h, x_seq, v0, theta, layout
