"""NIR export and import of a converted SpikingNetwork (``pip install na_kernels[nir]``).

``to_nir(snn, input_shape)`` describes the network as a ``nir.NIRGraph``
(https://neuroir.org): Input, Conv2d, Affine / Linear, AvgPool2d, Flatten, IF, Scale and Output
nodes, with edges. Dims exclude batch and time, as NIR's do.

- BatchNorm is already folded into the conv/linear weights by ``to_snn``.
- A residual sum is two edges into one node (NIR sums a node's inputs).
- IF: ``r = 1``, ``v_threshold`` = θ broadcast to the layer's full shape (per-channel values
  repeated over H×W), ``v_reset = 0``.
- NIR spikes are 0/1; ours carry an amplitude a (= λ = θ unless calibrated). a is folded into
  the consuming layer's weights, ``W[:, c] *= a_c`` (for a Linear after Flatten each channel's a
  repeats H·W times; average pooling and flatten are linear, so a passes through them). A spike
  train that reaches a sum or the output without passing a conv/linear (an identity shortcut)
  gets an explicit ``Scale`` node holding a.
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
SpikingJelly 2.0's importer (``nir_exchange.from_nir``, read in its source, not run here: it
needs nirtorch) wants ``r = 1/dt``, so pass it ``dt=1``; it also requires one uniform
``v_threshold`` per IF node and raises on per-channel (calibrated) thresholds, and builds a
hard-reset ``IFNode`` with ``v_reset`` = 0.

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
from ..convert.convert import add_synapse_meters, add_time_repetition, wrap_network
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
    a float64 array of the value's per-sample shape, the spike amplitude not yet applied)."""

    def __init__(self, name: str, scale: Optional[np.ndarray] = None):
        self.name, self.scale = name, scale


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
    x = torch.zeros((1,) + tuple(input_shape), dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else None)
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


def _per_channel(values: torch.Tensor, shape) -> np.ndarray:
    """A scalar or per-channel [C] tensor broadcast to the per-sample ``shape`` (C first), float64."""
    array = _f64(values).reshape(-1)
    if array.size == 1:
        return np.full(shape, array[0])
    return np.broadcast_to(array.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()


class _Exporter:
    def __init__(self, snn, input_shape):
        self.nir = _nir()
        self.snn, self.gm = snn, snn.network
        self.input_shape = tuple(int(d) for d in input_shape)
        self.shapes = _shapes(snn, self.input_shape)
        self.identity_types = (TimeRepeat, SynapseMeter, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                               nn.Dropout3d, nn.AlphaDropout)
        self.if_type = IFLayer
        self.nodes, self.edges, self.values = {}, [], {}
        self.scaled = {}  # NIR node name -> the Scale node that applies its amplitude

    # ------------------------------------------------------------------ helpers
    def fail(self, node, what):
        raise NIRExportError(f"to_nir: fx node {node.name!r} ({what}) has no NIR equivalent; {self._hint(node)}")

    @staticmethod
    def _hint(node):
        return ("NIR has Conv2d, Linear/Affine, AvgPool2d/SumPool2d, Flatten, Scale, IF and sums of edges; "
                "change the model or export it another way")

    def add(self, name, node):
        node.metadata["index"] = len(self.nodes)  # the fx order, for from_nir (nir.read sorts nodes by name)
        self.nodes[name] = node
        return name

    def connect(self, terms: List[_Term], dst: str):
        for term in terms:
            self.edges.append((term.name, dst))

    def materialize(self, terms: List[_Term], shape) -> List[_Term]:
        """Terms with a pending amplitude get a Scale node (reused per source)."""
        out = []
        for term in terms:
            if term.scale is None:
                out.append(term)
                continue
            key = (term.name, term.scale.shape)
            if key not in self.scaled:
                name = self.add(f"{term.name}_amplitude", self.nir.Scale(
                    scale=term.scale.copy(), metadata={"role": "amplitude", "of": term.name}))
                self.edges.append((term.name, name))
                self.scaled[key] = name
            out.append(_Term(self.scaled[key]))
        return out

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
            "producer": "na_kernels", "format": FORMAT, "format_version": FORMAT_VERSION,
            "na_kernels_version": __version__, "T": int(self.snn.T), "chunk": int(self.snn.chunk or 0), "dt": 1.0,
            "reset": "subtract", "v_init": float(V_INIT), "firing": ">=",
            "readout": "output[t] = mean of the Output values over steps 1..t; the Input is the same at every step",
            "note": ("IF nodes reset by subtracting v_threshold (soft reset), start at v_init * v_threshold and "
                     "fire on v >= v_threshold; NIR's IF (nir >= 1.0.6) resets to v_reset from v = 0 and fires "
                     "on v > v_threshold. Spike amplitudes are folded into the next weights or Scale nodes."),
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
            meta.update(reset="subtract", v_init=float(V_INIT), firing=">=", p=int(module.p),
                        threshold=module.threshold.detach().cpu().reshape(-1).numpy().copy(),
                        amplitude=module.amplitude.detach().cpu().reshape(-1).numpy().copy(),
                        threshold_dims=module.threshold.dim(), amplitude_dims=module.amplitude.dim(),
                        layer=module.name)
            self.add(name, nir.IF(r=np.ones(shape_out), v_threshold=theta, v_reset=np.zeros(shape_out),
                                  metadata=meta))
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
            weight = weight * scale.reshape((1, -1) + (1,) * (weight.ndim - 2))
            meta["input_scale"] = scale.copy()
            terms = [_Term(terms[0].name)]
        else:
            terms = self.materialize(terms, shape_in)
        bias = _f64(module.bias) if module.bias is not None else None
        meta["bias"] = int(bias is not None)
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                self.fail(node, f"Conv2d with padding_mode={module.padding_mode!r}")
            padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
            nir_node = nir.Conv2d(input_shape=tuple(shape_in[1:]), weight=weight, stride=tuple(module.stride),
                                  padding=padding, dilation=tuple(module.dilation), groups=module.groups,
                                  bias=bias if bias is not None else np.zeros(weight.shape[0]), metadata=meta)
        elif bias is not None:
            nir_node = nir.Affine(weight=weight, bias=bias, metadata=meta)
        else:
            nir_node = nir.Linear(weight=weight, metadata=meta)
        self.add(node.name, nir_node)
        self.connect(terms, node.name)
        return [_Term(node.name)]

    def pool(self, node, module, shape_in, shape_out, meta):
        if isinstance(module, nn.AdaptiveAvgPool2d):
            size = shape_in[1:]
            out = shape_out[1:]
            if any(s % o for s, o in zip(size, out)):
                self.fail(node, f"AdaptiveAvgPool2d from {size} to {out} (not a whole kernel)")
            kernel = tuple(s // o for s, o in zip(size, out))
            meta.update(kind="AdaptiveAvgPool2d", output_size=np.array(out))
            return self.avg_pool(node, kernel, kernel, (0, 0), shape_in, shape_out, meta)
        return self.avg_pool(node, module.kernel_size, module.stride, module.padding, shape_in, shape_out, meta,
                             ceil_mode=module.ceil_mode, count_include_pad=module.count_include_pad,
                             divisor_override=module.divisor_override)

    def avg_pool(self, node, kernel, stride, padding, shape_in, shape_out, meta, *, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))  # noqa: E731
        kernel, stride, padding = pair(kernel), pair(stride if stride is not None else kernel), pair(padding)
        if ceil_mode or divisor_override or (not count_include_pad and any(padding)):
            self.fail(node, "average pooling with ceil_mode, divisor_override or count_include_pad=False")
        meta.setdefault("kind", "AvgPool2d")
        terms = self.value(node, node.args[0])
        carried = None
        if len(terms) == 1 and terms[0].scale is not None:
            per = terms[0].scale.reshape(terms[0].scale.shape[0], -1)
            if np.all(per == per[:, :1]):  # per channel: commutes with the average
                carried = _per_channel(torch.from_numpy(per[:, 0].copy()), shape_out)
                terms = [_Term(terms[0].name)]
        terms = self.materialize(terms, shape_in)
        self.add(node.name, self.nir.AvgPool2d(kernel_size=np.array(kernel), stride=np.array(stride),
                                               padding=np.array(padding), metadata=meta))
        self.connect(terms, node.name)
        return [_Term(node.name, carried)]

    def flatten(self, node, shape_in, meta):
        terms = self.value(node, node.args[0])
        carried = None
        if len(terms) == 1 and terms[0].scale is not None:
            carried = terms[0].scale.reshape(-1)
            terms = [_Term(terms[0].name)]
        terms = self.materialize(terms, shape_in)
        self.add(node.name, self.nir.Flatten(input_type={"input": np.array(shape_in)}, start_dim=0, end_dim=-1,
                                             metadata=meta))
        self.connect(terms, node.name)
        return [_Term(node.name, carried)]

    # ------------------------------------------------------------------ functions
    def function(self, node):
        target = node.target
        tensors = [a for a in node.args if isinstance(a, fx.Node) and self.values.get(a) is not None]
        if node.op == "call_method" and target in ("size", "dim") or (
                node.op == "call_function" and target is getattr and node.args[1] in ("shape", "ndim")):
            return None  # shape arithmetic: only a flatten-view may use it (checked there)
        if node.op == "call_function" and target is operator.getitem and self.values.get(node.args[0]) is None:
            return None
        if node.op == "call_function" and target in (operator.add, operator.iadd, torch.add) and len(tensors) == 2 \
                and len(node.args) == 2 and not node.kwargs:
            return self.value(node, node.args[0]) + self.value(node, node.args[1])
        if self._is_flatten(node):
            return self.flatten(node, self.shapes[node.args[0]], {"torch_target": describe(node)})
        if node.op == "call_function" and target in (F.avg_pool2d, torch._C._nn.avg_pool2d):
            args = list(node.args[1:]) + [None] * 6
            kw = dict(node.kwargs)
            kernel = kw.get("kernel_size", args[0])
            stride = kw.get("stride", args[1]) or kernel
            padding = kw.get("padding", args[2] if args[2] is not None else 0)
            return self.avg_pool(node, kernel, stride, padding, self.shapes[node.args[0]], self.shapes[node],
                                 {"torch_target": describe(node)},
                                 ceil_mode=kw.get("ceil_mode", args[3] or False),
                                 count_include_pad=kw.get("count_include_pad", True if args[4] is None else args[4]),
                                 divisor_override=kw.get("divisor_override", args[5]))
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


def to_nir(snn, input_shape: Sequence[int]):
    """A converted ``SpikingNetwork`` as a ``nir.NIRGraph`` (see the module docstring for the mapping).

    Args:
        snn: a ``SpikingNetwork`` from ``to_snn`` (or ``load_snn`` / ``from_nir``).
        input_shape: the shape of one input sample without batch, e.g. ``(1, 8, 8)``.

    Returns:
        ``nir.NIRGraph`` (type-checked); ``nir.write(path, graph)`` writes it.

    Raises:
        NIRExportError (a ValueError) naming the fx node of an operation NIR cannot express.
    """
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"to_nir expects a SpikingNetwork (from to_snn), got {type(snn).__name__}")
    return _Exporter(snn, input_shape).run()


# ---------------------------------------------------------------------------------- import


def _order(graph) -> List[str]:
    """The node names in an order where every edge goes forward (sources first, by edge order)."""
    names = list(dict.fromkeys([a for e in graph.edges for a in e] + list(graph.nodes)))
    rank = {n: (int((graph.nodes[n].metadata or {}).get("index", len(names))), i) for i, n in enumerate(names)}
    incoming = {n: 0 for n in names}
    for _, dst in graph.edges:
        incoming[dst] += 1
    ready = [n for n in names if incoming[n] == 0]
    order = []
    while ready:
        ready.sort(key=rank.get)
        name = ready.pop(0)
        order.append(name)
        for src, dst in graph.edges:
            if src == name:
                incoming[dst] -= 1
                if incoming[dst] == 0:
                    ready.append(dst)
    if len(order) != len(names):
        raise NIRExportError("from_nir: the NIR graph has a cycle (recurrent edges); a SpikingNetwork is feed-forward")
    return order


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def from_nir(graph, T: Optional[int] = None, chunk: Optional[int] = None):
    """Rebuild the ``SpikingNetwork`` that ``to_nir`` exported (a ``nir.NIRGraph`` or a file path).

    The amplitudes folded into weights are divided back out (exactly: float64 products of float32
    numbers), Scale nodes of amplitudes become the IF layers' amplitudes again, thresholds,
    p, T and chunk come from the metadata: the result gives the original's spikes and outputs
    bit for bit. ``T`` / ``chunk`` override the defaults stored in the graph.

    Raises NIRExportError for a graph na_kernels did not write (its IF semantics would be a
    guess: see the module docstring) or a node type it does not use.
    """
    nir = _nir()
    if not isinstance(graph, nir.NIRGraph):
        graph = nir.read(graph)
    meta = graph.metadata or {}
    if _text(meta.get("format", "")) != FORMAT:
        raise NIRExportError(
            "from_nir rebuilds NIR graphs written by na_kernels.nn.to_nir only (graph metadata format "
            f"{FORMAT!r}); this graph has none, and its IF nodes' reset, start potential and firing rule "
            "would be guesses"
        )
    if int(meta.get("format_version", -1)) != FORMAT_VERSION:
        raise NIRExportError(f"from_nir reads format_version {FORMAT_VERSION}, the graph has "
                             f"{meta.get('format_version')!r}")
    root = nn.Module()
    fx_graph = fx.Graph()
    values: Dict[str, Optional[fx.Node]] = {}
    if_nodes = {}
    sources = {}
    for src, dst in graph.edges:
        sources.setdefault(dst, []).append(src)

    def summed(name):
        inputs = [values[s] for s in sources.get(name, [])]
        if not inputs:
            raise NIRExportError(f"from_nir: node {name!r} has no input edge")
        total = inputs[0]
        for other in inputs[1:]:
            total = fx_graph.call_function(operator.add, (total, other))
        return total

    def module_node(name, node, module):
        target = _text(node.metadata.get("torch_target", name))
        try:
            root.get_submodule(target)
            target = name
        except AttributeError:
            pass
        parent, _, child = target.rpartition(".")
        owner = root
        for part in parent.split(".") if parent else []:
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        owner.add_module(child, module)
        return fx_graph.call_module(target, (summed(name),)), target

    def weight(node, array):
        w = torch.from_numpy(np.asarray(array, dtype=np.float64).copy())
        scale = node.metadata.get("input_scale")
        if scale is not None:
            w = w / torch.from_numpy(np.asarray(scale, dtype=np.float64)).reshape((1, -1) + (1,) * (w.dim() - 2))
        return w.to(torch.float32)

    for name in _order(graph):
        node = graph.nodes[name]
        kind = type(node).__name__
        if isinstance(node, nir.Input):
            values[name] = fx_graph.placeholder("x")
        elif isinstance(node, nir.Output):
            fx_graph.output(summed(name))
        elif isinstance(node, nir.Conv2d):
            w = weight(node, node.weight)
            has_bias = int(node.metadata.get("bias", 1))
            padding = node.padding if isinstance(node.padding, str) else tuple(int(p) for p in node.padding)
            conv = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]),
                             stride=tuple(int(s) for s in node.stride), padding=padding,
                             dilation=tuple(int(d) for d in node.dilation), groups=int(node.groups),
                             bias=bool(has_bias))
            with torch.no_grad():
                conv.weight.copy_(w)
                if has_bias:
                    conv.bias.copy_(torch.from_numpy(np.asarray(node.bias, dtype=np.float64)).to(torch.float32))
            values[name], _ = module_node(name, node, conv)
        elif isinstance(node, (nir.Affine, nir.Linear)):
            w = weight(node, node.weight)
            linear = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
            with torch.no_grad():
                linear.weight.copy_(w)
                if isinstance(node, nir.Affine):
                    linear.bias.copy_(torch.from_numpy(np.asarray(node.bias, dtype=np.float64)).to(torch.float32))
            values[name], _ = module_node(name, node, linear)
        elif isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
            if isinstance(node, nir.SumPool2d):
                raise NIRExportError(f"from_nir: node {name!r} is a SumPool2d, which to_nir does not write")
            if _text(node.metadata.get("kind", "")) == "AdaptiveAvgPool2d":
                pool = nn.AdaptiveAvgPool2d(tuple(int(v) for v in node.metadata["output_size"]))
            else:
                pool = nn.AvgPool2d(tuple(int(v) for v in node.kernel_size), tuple(int(v) for v in node.stride),
                                    tuple(int(v) for v in node.padding))
            values[name], _ = module_node(name, node, pool)
        elif isinstance(node, nir.Flatten):
            values[name] = fx_graph.call_function(torch.flatten, (summed(name), int(node.start_dim) + 1))
        elif isinstance(node, nir.Scale) and _text(node.metadata.get("role", "")) == "amplitude":
            values[name] = summed(name)  # our IF layers emit their amplitude themselves
        elif isinstance(node, nir.IF):
            m = node.metadata
            if "amplitude" not in m or "p" not in m:
                raise NIRExportError(f"from_nir: IF node {name!r} lacks na_kernels' metadata (amplitude, p)")
            semantics = (_text(m.get("reset", "")), float(m.get("v_init", -1)), _text(m.get("firing", "")))
            if semantics != ("subtract", float(V_INIT), ">="):
                raise NIRExportError(
                    f"from_nir: IF node {name!r} has reset/v_init/firing {semantics}; IFLayer is "
                    f"('subtract', {V_INIT}, '>=') and cannot rebuild another neuron")
            def per_layer(key):  # 1-d in the file (HDF5 cannot compress 0-d arrays); 0-d for a scalar
                tensor = torch.as_tensor(np.asarray(m[key]).copy(), dtype=torch.float32).reshape(-1)
                return tensor.reshape(()) if int(m[key + "_dims"]) == 0 else tensor
            layer = IFLayer(_text(m.get("layer", name)), per_layer("threshold"), int(m["p"]))
            layer.amplitude = per_layer("amplitude")
            values[name], target = module_node(name, node, layer)
            layer.name = _text(m.get("layer", target))
            if_nodes[values[name]] = target
        else:
            raise NIRExportError(f"from_nir: node {name!r} is a {kind}, which to_nir does not write")
    gm = fx.GraphModule(root, fx_graph, "FromNIR")
    stem_runs_once = add_time_repetition(gm, if_nodes)
    add_synapse_meters(gm, if_nodes)
    T = int(meta.get("T", 1)) if T is None else T
    chunk = (int(meta.get("chunk", 0)) or None) if chunk is None else chunk
    return wrap_network(gm, T, chunk, if_layers=list(if_nodes.values()), folded=[], stem_runs_once=stem_runs_once)
