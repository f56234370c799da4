"""The whole-network cases of the benchmark (``test_bench_models.py``, ``profile_snn.py``):
the networks, their variants, the SpikingJelly version of a converted SNN, and the peak
memory of one call.

Training step (one SGD step: forward, cross-entropy, backward, momentum-0.9 update, random
32x32 images) of a CIFAR network whose activations are

- ``relu``: ``nn.ReLU`` (the float network, the cost to match);
- ``qcfs``: the plain-torch QCFS + uniform-noise formula (``baselines.EagerNoisyQuant``);
- ``noisy_quant``: ``na_kernels.nn.NoisyQuant`` (p = 3, uniform noise, trainable scalar λ);
- ``noisy_quant_fused``: the same network through ``replace_activations(fuse_batchnorm=True)``:
  each BatchNorm (+ residual add) and its NoisyQuant in one ``batchnorm_noisy_quant`` op;

each eager and under ``torch.compile`` (the model's forward compiled, ``dynamic=False``;
AOTAutograd compiles its backward), in fp32 or under bf16 autocast.

SNN pass: the converted network (``to_snn(model, T)``) on ``[B, 3, 32, 32]`` under no_grad:

- ``na_kernels`` (statistics off), ``na_kernels_stats`` (on, the default), ``na_kernels_compiled``
  (``torch.compile`` of the ``SpikingNetwork``, statistics off), ``channels_last`` (weights and
  input in channels-last memory order, statistics off), ``channels_last_compiled`` (both),
  ``fast`` (the fast mode: ``snn.to(torch.bfloat16).to(memory_format=torch.channels_last)``
  and a bf16 channels-last input, statistics off, whatever the case's dtype: it is timed in
  the fp32 cases, against the float32 alternatives); ``event`` (channels-last, statistics off,
  ``snn.event_driven(True)``: the spike-reading convolutions as ``event_conv2d``; float32);
- ``reference``: the same network with the IF layers run by the PyTorch reference loop;
- ``spikingjelly`` / ``spikingjelly_compiled``: every IF layer replaced by SpikingJelly's
  multi-step ``IFNode`` (soft reset, θ = λ, v_init = θ/2, its spikes times λ), eager and
  compiled. SpikingJelly's own converter scales twice around each neuron (``VoltageScaler``);
  one multiply is the fewest a SpikingJelly network needs for the same outputs.
- ``spikingjelly_channels_last`` / ``spikingjelly_channels_last_compiled`` (``SNN_EXTRA_IMPLS``,
  for ``profile_snn.py --compare`` only): SpikingJelly with channels-last weights and input, what
  a SpikingJelly user could do too; ``event_fresh`` / ``channels_last_fresh`` / ``na_kernels_fresh``: ``event`` /
  ``channels_last`` / ``na_kernels`` with ``snn.reuse_buffers(0)`` (every output fresh memory, as before the
  network kept its buffers between calls); ``event_alloutputs``: ``event`` with the IF layers
  writing the spike counts and final potentials that the pass does not read
  (``if_layer.SKIP_UNREAD_OUTPUTS`` off, as before they left them unwritten); ``exit1`` /
  ``exit2`` / ``exit4`` and their ``_fresh`` forms: per-sample early exit
  (``snn.run_early_exit(x, rule, T_max=T, chunk=c)``, channels-last, statistics off) at chunk c,
  with the confidence threshold ``exit_rule`` picks on the batch, in the network's kept buffers or
  with ``reuse_buffers(0)``; ``exit1_event`` / ``exit2_event`` / ``exit4_event``: the same on the
  event-driven network; ``event_countfirst``: ``event`` with every thresholded event convolution
  counting x's nonzeros in a pass of their own first (as before it counted while convolving).

bf16 SNN: network and input cast to bfloat16 (``snn.to(torch.bfloat16)``); the IF kernels keep
the membrane in float32, SpikingJelly's ``IFNode`` keeps it in the input's dtype.

Peak memory of one call (``peak_memory``): on CUDA, ``torch.cuda.max_memory_allocated()`` over
the call minus what was allocated before it (tensors only, not the caching allocator's reserve).
On the CPU there is no allocator counter that sees every output (the C++ kernels' outputs come
from na_kernels' own cached blocks, not from torch's allocator, so torch's profiler misses them;
``tracemalloc`` sees Python objects, not tensor storage), so it is the process's resident memory:
idle memory is handed back first (``gc.collect``, ``na_kernels.cpu.empty_cache``, glibc's
``malloc_trim(0)``), the kernel's peak-RSS mark is reset (``/proc/self/clear_refs`` = 5), the call
runs, and the peak is ``VmHWM`` after minus ``VmRSS`` before: the memory the call needs above what
it holds between calls (activations, gradients' temporaries, workspace). None where
``/proc`` does not allow it.
"""

import contextlib
import copy
import ctypes
import functools
import gc
import importlib
import os
import statistics

import baselines
import torch
from benchlib import DEVICE, IS_CUDA, synchronize
from torch import nn

P = 3  # quantization levels of every activation
LAM = 8.0  # the initial λ (every layer's θ after conversion)

TRAIN_ACTIVATIONS = ("relu", "qcfs", "noisy_quant", "noisy_quant_fused")
ACTIVATION_TITLES = {
    "relu": "ReLU",
    "qcfs": "QCFS+noise formula (plain torch)",
    "noisy_quant": "NoisyQuant",
    "noisy_quant_fused": "NoisyQuant fused with BatchNorm",
}
SNN_IMPLS = (
    "na_kernels",
    "na_kernels_stats",
    "na_kernels_compiled",
    "channels_last",
    "channels_last_compiled",
    "fast",
    "event",
    "reference",
    "spikingjelly",
    "spikingjelly_compiled",
)
SNN_TITLES = {
    "na_kernels": "na_kernels, statistics off",
    "na_kernels_stats": "na_kernels, statistics on",
    "na_kernels_compiled": "na_kernels compiled, statistics off",
    "channels_last": "na_kernels channels-last, statistics off",
    "channels_last_compiled": "na_kernels channels-last compiled, statistics off",
    "fast": "na_kernels fast mode (bf16 channels-last), statistics off",
    "event": "na_kernels event-driven convolutions (channels-last), statistics off",
    "reference": "IF layers by the PyTorch reference loop",
    "spikingjelly": "SpikingJelly IFNode (multi-step)",
    "spikingjelly_compiled": "SpikingJelly IFNode compiled",
}
SNN_OURS = tuple(impl for impl in SNN_IMPLS if impl != "reference" and not impl.startswith("spikingjelly"))
# rows of the fp32 cases only: "fast" is bf16 whatever the case, "event" float32-only (dense in bf16)
SNN_FP32_ONLY = ("fast", "event")
# SpikingJelly in channels-last (weights and input), and ``event`` with the convolutions of
# Cout <= 16 dense (as before the event kernel tiled them): for profile_snn.py --compare, not the table
SNN_EXTRA_IMPLS = (
    "spikingjelly_channels_last",
    "spikingjelly_channels_last_compiled",
    "event_untiled",
    "event_fresh",
    "channels_last_fresh",
    "na_kernels_fresh",
    "event_alloutputs",
    "event_countfirst",
    "exit1",
    "exit1_fresh",
    "exit2",
    "exit2_fresh",
    "exit4",
    "exit4_fresh",
    "exit1_event",
    "exit2_event",
    "exit4_event",
)
SNN_TITLES.update(
    spikingjelly_channels_last="SpikingJelly IFNode channels-last",
    spikingjelly_channels_last_compiled="SpikingJelly IFNode channels-last compiled",
    event_untiled="na_kernels event-driven, Cout <= 16 dense",
    event_fresh="na_kernels event-driven, no buffers kept between calls",
    channels_last_fresh="na_kernels channels-last, no buffers kept between calls",
    na_kernels_fresh="na_kernels, statistics off, no buffers kept between calls",
    event_alloutputs="na_kernels event-driven, IF counts and potentials written though unread",
    event_countfirst="na_kernels event-driven, x's nonzeros counted in a pass of their own",
    **{
        f"exit{c}{fresh}": f"na_kernels early exit, chunk {c}, channels-last{note}"
        for c in (1, 2, 4)
        for fresh, note in (("", ""), ("_fresh", ", no buffers kept between calls"))
    },
    **{f"exit{c}_event": f"na_kernels early exit, chunk {c}, event-driven convolutions" for c in (1, 2, 4)},
)  # runs in bf16 whatever the case's dtype: a row of the fp32 cases only


def architectures():
    """name -> builder(num_classes, act=...) of the CIFAR networks the cases may use."""
    from na_kernels.app.models import resnet18, resnet20

    return {"resnet20": resnet20, "resnet18": resnet18}


def activation_factory(activation):
    """The ``act`` factory of a training case's activation (see the module doc)."""
    if activation == "relu":
        return nn.ReLU
    if activation == "qcfs":
        return lambda: baselines.EagerNoisyQuant(p=P, lam=LAM)
    if activation in ("noisy_quant", "noisy_quant_fused"):
        from na_kernels.nn import NoisyQuant

        return lambda: NoisyQuant(p=P, lam=LAM)
    raise ValueError(f"activation must be one of {TRAIN_ACTIVATIONS}, got {activation!r}")


def images(batch, dtype=torch.float32, seed=0):
    """Random CIFAR-shaped images ``[batch, 3, 32, 32]`` and labels ``[batch]`` on the bench device."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn((batch, 3, 32, 32), generator=gen, device=DEVICE).to(dtype)
    y = torch.randint(0, 10, (batch,), generator=gen, device=DEVICE)
    return x, y


def train_step(arch, activation, batch, *, dtype="fp32", compiled=False):
    """A closure running one training step of ``arch`` with ``activation`` (bf16: autocast)."""
    torch.manual_seed(0)
    model = architectures()[arch](10, act=activation_factory(activation)).to(DEVICE).train()
    if activation == "noisy_quant_fused":
        from na_kernels.convert.replace import replace_activations

        model, _ = replace_activations(model, P, lam=LAM, fuse_batchnorm=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = baselines.compiled(model) if compiled else model
    x, y = images(batch)
    autocast = (lambda: torch.autocast(DEVICE, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    return step


# ----------------------------------------------------------------------------- the SNN
def converted(arch, T):
    """The converted SNN of ``arch`` with NoisyQuant(p=3, λ=8) activations (random weights, or the
    ANN state dict at ``$NA_BENCH_SNN_STATE``; the time of the dense passes does not depend on
    them, the event-driven one's does), on the bench device, eval mode, statistics on."""
    from na_kernels.nn import NoisyQuant, to_snn

    torch.manual_seed(0)
    model = architectures()[arch](10, act=lambda: NoisyQuant(p=P, lam=LAM)).eval()
    state = os.environ.get("NA_BENCH_SNN_STATE")
    if state:  # trained weights (bench/event_trained.py): the event-driven time depends on them
        model.load_state_dict(torch.load(state, map_location="cpu"))
    return to_snn(model, T=T).to(DEVICE).eval()


def spikingjelly_missing():
    """Why the SpikingJelly cases cannot run (None when it is importable)."""
    return baselines.spikingjelly_missing_reason()


def spikingjelly_snn(snn):
    """A copy of ``snn`` with every IF layer run by SpikingJelly's multi-step IFNode (same outputs
    up to float rounding: soft reset, θ = λ, v_init = θ/2, spikes times the amplitude)."""
    from na_kernels.nn import IFLayer

    v_init = importlib.import_module(IFLayer.__module__).V_INIT  # IFLayer's v_init, wherever it lives

    class SpikingJellyIF(IFLayer):
        """One IF layer on SpikingJelly's IFNode, in the SpikingNetwork's time-major batches."""

        def __init__(self, layer):
            if layer.per_channel or layer.calibrated:
                raise ValueError(f"{layer.name}: the SpikingJelly baseline takes one scalar θ = λ per layer")
            super().__init__(layer.name, layer.threshold, layer.p)
            self.input_is_constant = layer.input_is_constant
            self.record = False
            theta = float(layer.threshold)
            self.v_start = v_init * theta
            self.scale = float(layer.amplitude)
            self.node = baselines.spikingjelly_if(theta)

        def forward(self, x):
            T = self.time_steps
            if self.input_is_constant:
                x_seq = x.unsqueeze(0).expand((T,) + tuple(x.shape))
            else:
                x_seq = x.reshape((T, x.shape[0] // T) + tuple(x.shape[1:]))
            self.node.v = self.v_start  # a float: SpikingJelly fills the state with it at the first step
            spikes = self.node(x_seq) * self.scale
            return spikes.reshape((-1,) + tuple(spikes.shape[2:]))

    sj = copy.deepcopy(snn)
    for path, module in list(sj.network.named_modules()):
        if isinstance(module, IFLayer):
            sj.network.set_submodule(path, SpikingJellyIF(module).to(next(iter(module.buffers())).device))
    sj.record_statistics(False)
    return sj


@contextlib.contextmanager
def unread_if_outputs_written(condition):
    """While active (where ``condition``): the IF layers write counts and potentials nobody reads."""
    from na_kernels.nn import if_layer

    saved = if_layer.SKIP_UNREAD_OUTPUTS
    if_layer.SKIP_UNREAD_OUTPUTS = saved and not condition
    try:
        yield
    finally:
        if_layer.SKIP_UNREAD_OUTPUTS = saved


@contextlib.contextmanager
def untiled_if(condition):
    """While active (where ``condition``): event_conv's Cout <= 16 convolutions run dense."""
    from na_kernels.ops import event_conv

    saved = event_conv.TILED_MAX_DENSITY
    event_conv.TILED_MAX_DENSITY = 0.0 if condition else saved
    try:
        yield
    finally:
        event_conv.TILED_MAX_DENSITY = saved


@contextlib.contextmanager
def counting_first_if(condition):
    """While active (where ``condition``): every thresholded event convolution counts x's nonzeros
    in a pass of their own before convolving."""
    from na_kernels.ops.event_conv import cpu

    saved = cpu.forward
    if condition:
        cpu.forward = functools.partial(saved, count_first=True)
    try:
        yield
    finally:
        cpu.forward = saved


def exit_rule(snn, x, T):
    """The early-exit cases' rule: ``ExitRule(confidence=c)`` with c the median over the batch of the
    top softmax probability after T // 2 steps of the fixed-T run (about half the samples stop by
    then, on random weights most of the rest soon after)."""
    from na_kernels.nn import ExitRule

    with torch.no_grad():
        fixed = snn(x, T=T)
    snn.release_buffers()
    top = torch.softmax(fixed[max(T // 2, 1) - 1].float(), -1).amax(-1)
    return ExitRule(confidence=float(top.median()))


def snn_pass(arch, impl, T, batch, dtype="fp32"):
    """(closure running one SNN pass of ``impl`` on a batch, the SpikingNetwork it runs, backend note)."""
    import na_kernels

    snn = converted(arch, T)
    snn.record_statistics(impl == "na_kernels_stats")
    if impl.startswith("spikingjelly"):
        snn = spikingjelly_snn(snn)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}["bf16" if impl == "fast" else dtype]
    snn = snn.to(torch_dtype)
    x, _ = images(batch, torch_dtype)
    early_exit = impl.startswith("exit")
    event = impl.startswith("event") or (early_exit and impl.endswith("_event"))
    if "channels_last" in impl or early_exit or event or impl == "fast":
        snn = snn.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if event:
        snn.event_driven(True)
    if impl.endswith("_fresh"):
        snn.reuse_buffers(0)
    run = baselines.compiled(snn) if impl.endswith("_compiled") else snn
    if early_exit:
        chunk = int(impl[len("exit") :].split("_")[0])
        run = functools.partial(snn.run_early_exit, rule=exit_rule(snn, x, T), T_max=T, chunk=chunk)
    backend = "reference" if impl == "reference" else "auto"

    def infer():
        with (
            torch.no_grad(),
            na_kernels.use_backend(backend),
            untiled_if(impl == "event_untiled"),
            counting_first_if(impl == "event_countfirst"),
            unread_if_outputs_written(impl.endswith("_alloutputs")),
        ):
            return run(x)

    return infer, snn, x


# ----------------------------------------------------------------------------- memory
def cpu_profile(run, repeats, groups):
    """Self CPU time of ``repeats`` calls of ``run`` under torch.profiler: ``(events, total µs,
    Counter of µs per group)``; ``groups`` is ``((name, substrings of op names), ...)``, the
    first match wins, the rest is "other"."""
    import collections

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            run()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = collections.Counter()
    for e in events:
        group = next((name for name, keys in groups if any(key in e.key for key in keys)), "other")
        shares[group] += e.self_cpu_time_total
    return events, total, shares


def _proc_status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


def _release_idle_memory():
    gc.collect()
    try:
        from na_kernels import cpu

        cpu.empty_cache()
    except (ImportError, AttributeError):
        pass
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn, repeats=3):
    """{"peak_memory_bytes", "peak_memory_method"}: the median over ``repeats`` calls of the memory
    one call of ``fn`` needs above what is held before it (see the module doc); {} where it cannot
    be measured. Call after the warm-up (optimizer state and compiled code exist by then)."""
    peaks = []
    if IS_CUDA:
        for _ in range(repeats):
            synchronize()
            gc.collect()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            synchronize()
            peaks.append(torch.cuda.max_memory_allocated() - before)
        method = "torch.cuda.max_memory_allocated() during the call - memory_allocated() before"
    else:
        try:
            for _ in range(repeats):
                _release_idle_memory()
                before = _proc_status("VmRSS")
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
                fn()
                peaks.append(_proc_status("VmHWM") - before)
        except OSError:
            return {}
        method = "peak RSS (VmHWM after clear_refs=5) during the call - RSS before, idle memory released first"
    return {"peak_memory_bytes": int(statistics.median(peaks)), "peak_memory_method": method}
