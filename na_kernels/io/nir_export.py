"""NIR export and import of a converted SpikingNetwork (``pip install na_kernels[nir]``).

``to_nir(snn, input_shape, pooling="avg")`` describes the network as a ``nir.NIRGraph``
(https://neuroir.org): Input, Conv2d, Affine / Linear, AvgPool2d or SumPool2d, Flatten, IF and
Output nodes (a Scale node only for a position-dependent factor), with edges. Dims exclude batch
and time, as NIR's do; Flatten's start_dim is counted from the end (``-len(shape)``), which means
the same to NIR and to importers that pass it to ``torch.nn.Flatten`` unchanged.

- BatchNorm is already folded into the conv/linear weights by ``to_snn``.
- A residual sum is two edges into one node (NIR sums a node's inputs).
- IF: ``r = 1``, ``v_threshold`` = θ broadcast to the layer's full shape (per-channel values
  repeated over H×W), ``v_reset = 0``.
- NIR spikes are 0/1; ours carry an amplitude a (= λ = θ unless calibrated). a is folded into
  the consuming layer's weights, ``W[:, c] *= a_c`` (for a Linear after Flatten each channel's a
  repeats H·W times; for a grouped conv per group; average pooling and flatten are linear, so a
  passes through them). A spike train that reaches a sum or the output without passing a
  conv/linear (an identity shortcut) gets a 1x1 Conv2d with a on its diagonal.
- Average pooling: ``pooling="avg"`` an AvgPool2d node, ``"sum"`` a SumPool2d, ``"conv"`` a
  Conv2d with identity weights; the divisor (1/k², or a border-dependent one for
  ``count_include_pad=False`` with padding) travels like the amplitude.
- Grouped convs are written as the equal ungrouped conv (nir's type inference and some
  importers take groups = 1 only); the metadata keeps ``groups`` for from_nir.
- Arrays are float64: the product of two float32 numbers is exact in float64, so
  ``from_nir`` divides the amplitude back out and recovers the float32 weights bit for bit.

What NIR has no field for is written into metadata (``IF.metadata`` and ``NIRGraph.metadata``):
``reset = "subtract"`` (soft reset, ``v = h - s·θ``), ``v_init`` = 0.5 (v starts at θ/2),
``firing = ">="`` (ties fire; NIR's IF fires on ``v > v_threshold``), the per-channel
``threshold`` and ``amplitude``, ``p``, and on the graph ``T``, ``chunk`` and ``readout`` (the output
at step t is the mean of the last layer's outputs over steps 1..t; the input is the same at every
step). NIR documents that no backend should rely on metadata, and since nir 1.0.6 an IF node is a
**hard** reset to ``v_reset`` starting from v = 0; so another tool's importer builds a network
that resets to 0 instead of subtracting θ, starts at 0 instead of θ/2, fires on ``>`` and runs
for the T it chooses (SpikingJelly 2.0 imports a hard-reset IFNode with one uniform threshold,
snnTorch 1.0 a leaky neuron, sinabs a subtractive multi-spike neuron, Norse a hard reset to 0):
the same file is a different network there (a hard reset drops the excess ``h - θ`` that a
soft reset keeps, so spike counts differ whenever a neuron fires above θ). ``from_nir`` reads our
metadata and rebuilds the network exactly: identical spikes and outputs. The IF nodes have
``r = 1`` for a time step dt = 1 (``v += input`` per step; graph metadata ``dt = 1``):
SpikingJelly 2.0's importer (``nir_exchange.import_from_nir``) wants ``r = 1/dt``, so pass it
``dt=1``; it requires one uniform ``v_threshold`` per IF node. The README has the measured
outputs of each peer importer on a converted CNN (``python/nir_peers.py``).

Operations NIR has no node for raise ``NIRExportError`` naming the fx node: max pooling,
concatenation, multiplication, BatchNorm left unfolded, a function or module the exporter does
not know.
"""

from __future__ import annotations

import operator
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F

from .. import __version__
from ..nn.fx_utils import describe_call
from ..nn.if_layer import V_INIT, IFLayer
from ..snn.base import TimeRepeat
from ..snn.network import SpikingNetwork
from ..snn.stats import SynapseMeter

FORMAT = "na_kernels.nir"
FORMAT_VERSION = 1


class NIRExportError(ValueError):
    """An operation with no NIR node, or a NIR graph from_nir cannot rebuild."""


def _nir():
    try:
        import nir
    except ImportError as error:
        raise ImportError("NIR export needs the nir package: pip install nir (or na_kernels[nir])") from error
    return nir


# ---------------------------------------------------------------------------------- export


class _Term:
    """One summand of an fx value: the output of NIR node ``name``, times ``scale`` (None: 1; else
    a float64 array of the value's per-sample shape not yet applied: the spike amplitude, times a
    pooling divisor's reciprocal where ``role`` is ``"scale"``)."""

    def __init__(self, name: str, scale: Optional[np.ndarray] = None, role: str = "amplitude"):
        self.name, self.scale, self.role = name, scale, role


def _shapes(snn, input_shape) -> Dict[fx.Node, Tuple[int, ...]]:
    """Per-sample output shape of every fx node (one ANN-mode run on zeros, no statistics)."""
    gm = snn.network
    shapes = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if isinstance(result, torch.Tensor):
                shapes[node] = tuple(result.shape[1:])
            return result

    param = next(gm.parameters(), None)
    x = torch.zeros(
        (1,) + tuple(input_shape),
        dtype=param.dtype if param is not None else torch.float32,
        device=param.device if param is not None else None,
    )
    flags = {m: m.record for m in gm.modules() if hasattr(m, "record")}
    snn._set(mode="ann", time_steps=1)
    for module in flags:
        module.record = False
    try:
        with torch.no_grad():
            Recorder(gm).run(x)
    finally:
        snn._set(mode="snn")
        for module, flag in flags.items():
            module.record = flag
    return shapes


def _f64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().to(torch.float64).numpy()


def _input_factor(scale: np.ndarray, weight_shape, groups: int = 1) -> np.ndarray:
    """The per-input-channel factor ``scale`` [C_in] laid out against a weight [C_out, C_in/groups, ...]:
    output channel o of group g = o // (C_out/groups) reads input channels g*C_in/groups + j."""
    out_channels, per_group = weight_shape[0], weight_shape[1]
    index = (np.arange(out_channels) // (out_channels // groups))[:, None] * per_group + np.arange(per_group)
    return np.asarray(scale)[index].reshape(tuple(weight_shape[:2]) + (1,) * (len(weight_shape) - 2))


def _dense(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv weight [C_out, C_in/groups, ...] as the equal ungrouped one [C_out, C_in, ...]
    (zeros between the groups)."""
    out_channels, per_group = weight.shape[:2]
    dense = np.zeros((out_channels, per_group * groups) + weight.shape[2:], dtype=weight.dtype)
    for o in range(out_channels):
        g = o // (out_channels // groups)
        dense[o, g * per_group : (g + 1) * per_group] = weight[o]
    return dense


def _grouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of ``_dense``: each output channel's own group of input channels."""
    out_channels, per_group = weight.shape[0], weight.shape[1] // groups
    return torch.stack(
        [weight[o, (o // (out_channels // groups)) * per_group :][:per_group] for o in range(out_channels)]
    )


def _per_channel(values: torch.Tensor, shape) -> np.ndarray:
    """A scalar or per-channel [C] tensor broadcast to the per-sample ``shape`` (C first), float64."""
    array = _f64(values).reshape(-1)
    if array.size == 1:
        return np.full(shape, array[0])
    return np.broadcast_to(array.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()


class _Exporter:
    def __init__(self, snn, input_shape, pooling="avg"):
        self.nir = _nir()
        self.snn, self.gm = snn, snn.network
        self.input_shape = tuple(int(d) for d in input_shape)
        if pooling not in POOLING:
            raise ValueError(f"to_nir: pooling must be one of {POOLING}, got {pooling!r}")
        self.pooling = pooling
        self.shapes = _shapes(snn, self.input_shape)
        self.identity_types = (
            TimeRepeat,
            SynapseMeter,
            nn.Identity,
            nn.Dropout,
            nn.Dropout1d,
            nn.Dropout2d,
            nn.Dropout3d,
            nn.AlphaDropout,
        )
        self.if_type = IFLayer
        self.nodes, self.edges, self.values = {}, [], {}
        self.scaled = {}  # (NIR node name, role, factor) -> the Scale node that applies the factor

    # ------------------------------------------------------------------ helpers
    def fail(self, node, what):
        raise NIRExportError(f"to_nir: fx node {node.name!r} ({what}) has no NIR equivalent; {self._hint(node)}")

    @staticmethod
    def _hint(node):
        return (
            "NIR has Conv2d, Linear/Affine, AvgPool2d/SumPool2d, Flatten, Scale, IF and sums of edges; "
            "change the model or export it another way"
        )

    def add(self, name, node):
        node.metadata["index"] = len(self.nodes)  # the fx order, for from_nir (nir.read sorts nodes by name)
        self.nodes[name] = node
        return name

    def connect(self, terms: List[_Term], dst: str):
        for term in terms:
            self.edges.append((term.name, dst))

    def materialize(self, terms: List[_Term], shape) -> List[_Term]:
        """Terms with a pending factor get a node applying it (reused per source and factor): a
        1x1 Conv2d with diagonal weights for a per-channel factor on [C, H, W], a diagonal Affine
        on a vector (the peers' importers read these, none reads Scale), else a Scale node."""
        out = []
        for term in terms:
            if term.scale is None:
                out.append(term)
                continue
            key = (term.name, term.role, term.scale.shape, term.scale.tobytes())
            if key not in self.scaled:
                suffix = "amplitude" if term.role == "amplitude" else f"scale{len(self.scaled)}"
                name = self.add(f"{term.name}_{suffix}", self.scaling(term, shape))
                self.edges.append((term.name, name))
                self.scaled[key] = name
            out.append(_Term(self.scaled[key]))
        return out

    def scaling(self, term, shape):
        nir, meta = self.nir, {"role": term.role, "of": term.name}
        factor = term.scale
        if len(shape) == 1:
            return nir.Affine(weight=np.diag(factor), bias=np.zeros(factor.shape[0]), metadata=meta)
        per = factor.reshape(factor.shape[0], -1)
        if len(shape) == 3 and np.all(per == per[:, :1]):
            weight = np.diag(per[:, 0]).reshape(factor.shape[0], factor.shape[0], 1, 1)
            return nir.Conv2d(
                input_shape=tuple(shape[1:]),
                weight=weight,
                stride=(1, 1),
                padding=(0, 0),
                dilation=(1, 1),
                groups=1,
                bias=np.zeros(factor.shape[0]),
                metadata=meta,
            )
        return nir.Scale(scale=factor.copy(), metadata=meta)

    def value(self, node, arg):
        if not isinstance(arg, fx.Node) or arg not in self.values or self.values[arg] is None:
            self.fail(node, f"an input that is not a tensor of the network: {arg!r}")
        return self.values[arg]

    # ------------------------------------------------------------------ run
    def run(self):
        nir = self.nir
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.values:
                    self.fail(node, "a second input")
                self.add("input", nir.Input(input_type=np.array(self.input_shape)))
                self.values[node] = [_Term("input")]
            elif node.op == "call_module":
                self.values[node] = self.module(node, self.gm.get_submodule(node.target))
            elif node.op in ("call_function", "call_method"):
                self.values[node] = self.function(node)
            elif node.op == "output":
                terms = self.value(node, node.args[0])
                shape = self.shapes[node.args[0]]
                self.add("output", nir.Output(output_type=np.array(shape)))
                self.connect(self.materialize(terms, shape), "output")
            else:
                self.fail(node, f"{node.op} {node.target}")
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=self.metadata(), type_check=True)

    def metadata(self):
        return {
            "producer": "na_kernels",
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "na_kernels_version": __version__,
            "pooling": self.pooling,
            "T": int(self.snn.T),
            "chunk": int(self.snn.chunk or 0),
            "dt": 1.0,
            "reset": "subtract",
            "v_init": float(V_INIT),
            "firing": ">=",
            "readout": "output[t] = mean of the Output values over steps 1..t; the Input is the same at every step",
            "note": (
                "IF nodes reset by subtracting v_threshold (soft reset), start at v_init * v_threshold and "
                "fire on v >= v_threshold; NIR's IF (nir >= 1.0.6) resets to v_reset from v = 0 and fires "
                "on v > v_threshold. Spike amplitudes are folded into the next weights or Scale nodes."
            ),
        }

    # ------------------------------------------------------------------ modules
    def module(self, node, module):
        nir = self.nir
        if isinstance(module, self.identity_types):
            return self.value(node, node.args[0])
        shape_in = self.shapes.get(node.args[0]) if node.args else None
        shape_out = self.shapes.get(node)
        name = node.name
        meta = {"torch_target": str(node.target)}
        if isinstance(module, self.if_type):
            terms = self.materialize(self.value(node, node.args[0]), shape_in)
            theta = _per_channel(module.threshold, shape_out)
            meta.update(
                reset=module.reset,
                v_init=float(module.v_init),
                firing=">=",
                p=int(module.p),
                threshold=module.threshold.detach().cpu().reshape(-1).numpy().copy(),
                amplitude=module.amplitude.detach().cpu().reshape(-1).numpy().copy(),
                threshold_dims=module.threshold.dim(),
                amplitude_dims=module.amplitude.dim(),
                layer=module.name,
            )
            self.add(name, nir.IF(r=np.ones(shape_out), v_threshold=theta, v_reset=np.zeros(shape_out), metadata=meta))
            self.connect(terms, name)
            return [_Term(name, _per_channel(module.amplitude, shape_out))]
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return self.synaptic(node, module, shape_in, meta)
        if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            return self.pool(node, module, shape_in, shape_out, meta)
        if isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                self.fail(node, f"Flatten(start_dim={module.start_dim}, end_dim={module.end_dim})")
            return self.flatten(node, shape_in, meta)
        self.fail(node, f"module {node.target}: {type(module).__name__}")

    def synaptic(self, node, module, shape_in, meta):
        nir = self.nir
        terms = self.value(node, node.args[0])
        weight = _f64(module.weight)
        scale = None
        if len(terms) == 1 and terms[0].scale is not None:
            factor = terms[0].scale
            per_input = factor.reshape(factor.shape[0], -1)
            if isinstance(module, nn.Linear) or np.all(per_input == per_input[:, :1]):
                scale = per_input[:, 0] if isinstance(module, nn.Conv2d) else factor.reshape(-1)
        if scale is not None:  # fold the amplitude: W[:, j] *= a_j, exact in float64
            weight = weight * _input_factor(scale, weight.shape, getattr(module, "groups", 1))
            meta["input_scale"] = scale.copy()
            meta["input_scale_role"] = terms[0].role
            terms = [_Term(terms[0].name)]
        else:
            terms = self.materialize(terms, shape_in)
        bias = _f64(module.bias) if module.bias is not None else None
        meta["bias"] = int(bias is not None)
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                self.fail(node, f"Conv2d with padding_mode={module.padding_mode!r}")
            padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
            if module.groups > 1:  # nir's type inference and some importers take groups = 1 only
                weight = _dense(weight, module.groups)
                meta["groups"] = int(module.groups)
            nir_node = nir.Conv2d(
                input_shape=tuple(shape_in[1:]),
                weight=weight,
                stride=tuple(module.stride),
                padding=padding,
                dilation=tuple(module.dilation),
                groups=1,
                bias=bias if bias is not None else np.zeros(weight.shape[0]),
                metadata=meta,
            )
        elif bias is not None:
            nir_node = nir.Affine(weight=weight, bias=bias, metadata=meta)
        else:
            nir_node = nir.Linear(weight=weight, metadata=meta)
        self.add(node.name, nir_node)
        self.connect(terms, node.name)
        return [_Term(node.name)]

    def pool(self, node, module, shape_in, shape_out, meta):
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return self.adaptive_pool(node, shape_in, shape_out, meta)
        return self.avg_pool(
            node,
            module.kernel_size,
            module.stride,
            module.padding,
            shape_in,
            shape_out,
            meta,
            ceil_mode=module.ceil_mode,
            count_include_pad=module.count_include_pad,
            divisor_override=module.divisor_override,
        )

    def adaptive_pool(self, node, shape_in, shape_out, meta):
        size, out = shape_in[1:], shape_out[1:]
        if any(s % o for s, o in zip(size, out)):
            self.fail(
                node,
                f"adaptive average pooling from {size} to {out} (not a whole kernel: choose an input "
                "size whose last feature map is a multiple of the output size)",
            )
        kernel = tuple(s // o for s, o in zip(size, out))
        meta.update(kind="AdaptiveAvgPool2d", output_size=np.array(out))
        return self.avg_pool(node, kernel, kernel, (0, 0), shape_in, shape_out, meta)

    def avg_pool(
        self,
        node,
        kernel,
        stride,
        padding,
        shape_in,
        shape_out,
        meta,
        *,
        ceil_mode=False,
        count_include_pad=True,
        divisor_override=None,
    ):
        """Average pooling as ``self.pooling`` writes it: an AvgPool2d (which NIR defines with the
        padding counted), a SumPool2d or a Conv2d with identity weights; the rest of the divisor
        (and any spike amplitude) is carried to the next layer, folded into its weights where it
        is the same at every position, else written as a Scale node."""
        pair = lambda v: tuple(int(i) for i in v) if isinstance(v, (tuple, list)) else (int(v), int(v))  # noqa: E731
        kernel, stride, padding = pair(kernel), pair(stride if stride is not None else kernel), pair(padding)
        floor_shape = tuple((shape_in[i + 1] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in range(2))
        if ceil_mode and floor_shape != tuple(shape_out[1:]):
            self.fail(
                node,
                f"average pooling with ceil_mode=True whose last window is partial (output "
                f"{tuple(shape_out[1:])}, {floor_shape} without ceil_mode)",
            )
        channels = shape_in[0]
        if divisor_override:
            divisor = np.full(shape_out, float(divisor_override))
        elif count_include_pad or not any(padding):
            divisor = np.full(shape_out, float(kernel[0] * kernel[1]))
        else:  # the number of input positions (not padding) in each window
            ones = torch.ones((1, 1) + tuple(shape_in[1:]), dtype=torch.float64)
            valid = F.avg_pool2d(ones, kernel, stride, padding, count_include_pad=True) * (kernel[0] * kernel[1])
            divisor = np.broadcast_to(np.round(valid[0].numpy()), shape_out).copy()
        area = float(kernel[0] * kernel[1])
        factor = (area if self.pooling == "avg" else 1.0) / divisor  # what the written node leaves to do
        meta.setdefault("kind", "AvgPool2d")
        meta.update(count_include_pad=int(bool(count_include_pad)), divisor_override=int(divisor_override or 0))
        terms = self.value(node, node.args[0])
        carried, role = None, "amplitude"
        if len(terms) == 1 and terms[0].scale is not None:
            per = terms[0].scale.reshape(channels, -1)
            if np.all(per == per[:, :1]):  # per channel: commutes with the pooling
                carried = _per_channel(torch.from_numpy(per[:, 0].copy()), shape_out)
                role = terms[0].role
                terms = [_Term(terms[0].name)]
        terms = self.materialize(terms, shape_in)
        nir = self.nir
        if self.pooling == "avg":
            pool = nir.AvgPool2d(
                kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array(padding), metadata=meta
            )
        elif self.pooling == "sum":
            pool = nir.SumPool2d(
                kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array(padding), metadata=meta
            )
        else:
            weight = np.zeros((channels, channels) + kernel)
            weight[np.arange(channels), np.arange(channels)] = 1.0
            pool = nir.Conv2d(
                input_shape=tuple(shape_in[1:]),
                weight=weight,
                stride=stride,
                padding=padding,
                dilation=(1, 1),
                groups=1,
                bias=np.zeros(channels),
                metadata=meta,
            )
        self.add(node.name, pool)
        self.connect(terms, node.name)
        if np.all(factor == 1.0):
            return [_Term(node.name, carried, role)] if carried is not None else [_Term(node.name)]
        return [_Term(node.name, factor if carried is None else carried * factor, "scale")]

    def flatten(self, node, shape_in, meta):
        terms = self.value(node, node.args[0])
        carried = None
        if len(terms) == 1 and terms[0].scale is not None:
            carried = _Term(node.name, terms[0].scale.reshape(-1), terms[0].role)
            terms = [_Term(terms[0].name)]
        terms = self.materialize(terms, shape_in)
        # start_dim counted from the end: NIR excludes the batch (start_dim 0 here) while some
        # importers hand start_dim to torch.nn.Flatten as it is; -len(shape) means the same to both
        self.add(
            node.name,
            self.nir.Flatten(
                input_type={"input": np.array(shape_in)}, start_dim=-len(shape_in), end_dim=-1, metadata=meta
            ),
        )
        self.connect(terms, node.name)
        return [carried or _Term(node.name)]

    # ------------------------------------------------------------------ functions
    def function(self, node):
        target = node.target
        tensors = [a for a in node.args if isinstance(a, fx.Node) and self.values.get(a) is not None]
        if (
            node.op == "call_method"
            and target in ("size", "dim")
            or (node.op == "call_function" and target is getattr and node.args[1] in ("shape", "ndim"))
        ):
            return None  # shape arithmetic: only a flatten-view may use it (checked there)
        if node.op == "call_function" and target is operator.getitem and self.values.get(node.args[0]) is None:
            return None
        if (
            node.op == "call_function"
            and target in (operator.add, operator.iadd, torch.add)
            and len(tensors) == 2
            and len(node.args) == 2
            and not node.kwargs
        ):
            return self.value(node, node.args[0]) + self.value(node, node.args[1])
        if self._is_flatten(node):
            return self.flatten(node, self.shapes[node.args[0]], {"torch_target": describe(node)})
        if node.op == "call_function" and target in (F.avg_pool2d, torch._C._nn.avg_pool2d):
            args = list(node.args[1:]) + [None] * 6
            kw = dict(node.kwargs)
            kernel = kw.get("kernel_size", args[0])
            stride = kw.get("stride", args[1]) or kernel
            padding = kw.get("padding", args[2] if args[2] is not None else 0)
            return self.avg_pool(
                node,
                kernel,
                stride,
                padding,
                self.shapes[node.args[0]],
                self.shapes[node],
                {"torch_target": describe(node)},
                ceil_mode=kw.get("ceil_mode", args[3] or False),
                count_include_pad=kw.get("count_include_pad", True if args[4] is None else args[4]),
                divisor_override=kw.get("divisor_override", args[5]),
            )
        if node.op == "call_function" and target in (F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d):
            return self.adaptive_pool(
                node, self.shapes[node.args[0]], self.shapes[node], {"torch_target": describe(node)}
            )
        self.fail(node, describe(node))

    def _is_flatten(self, node):
        """torch.flatten(x, 1) / x.flatten(1) / x.view(x.size(0), -1) / x.reshape(B, -1): [B, prod(rest)]."""
        if not node.args or self.values.get(node.args[0]) is None or node not in self.shapes:
            return False
        flat = self.shapes[node] == (int(np.prod(self.shapes[node.args[0]])),)
        if node.op == "call_function" and node.target is torch.flatten:
            start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
            return start == 1 and flat
        if node.op == "call_method" and node.target in ("flatten", "view", "reshape"):
            return flat and len(self.shapes[node.args[0]]) >= 1
        return False


def describe(node) -> str:
    """What an fx node calls, as a user wrote it (``torch.cat()``, ``Tensor.mul()``)."""
    return describe_call(node) if node.op in ("call_function", "call_method") else str(node.target)


POOLING = ("avg", "sum", "conv")


def to_nir(snn, input_shape: Sequence[int], *, pooling: str = "avg"):
    """A converted ``SpikingNetwork`` as a ``nir.NIRGraph`` (see the module docstring for the mapping).

    Args:
        snn: a ``SpikingNetwork`` from ``to_snn`` (or ``load_snn`` / ``from_nir``).
        input_shape: the shape of one input sample without batch, e.g. ``(1, 8, 8)``.
        pooling: how average pooling (``nn.AvgPool2d``, ``F.avg_pool2d``, adaptive average
            pooling to a whole kernel, ``maxpool_to_avgpool``'s ``count_include_pad=False``) is
            written: ``"avg"`` NIR AvgPool2d (read by ``from_nir``, SpikingJelly and snnTorch),
            ``"sum"`` SumPool2d (sinabs, Norse), ``"conv"`` a Conv2d with identity weights
            (every importer). The divisor is folded into the next conv/linear where it is the same
            at every position; a border-dependent divisor (``count_include_pad=False`` with
            padding) becomes a Scale node.

    Returns:
        ``nir.NIRGraph`` (type-checked); ``nir.write(path, graph)`` writes it.

    Raises:
        NIRExportError (a ValueError) naming the fx node of an operation NIR cannot express.
    """
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"to_nir expects a SpikingNetwork (from to_snn), got {type(snn).__name__}")
    return _Exporter(snn, input_shape, pooling).run()
