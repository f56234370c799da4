"""BatchNorm folding: each BatchNorm merged into the conv/linear layer before it.

In eval mode a BatchNorm is the per-channel affine map ``y = (x - μ) * γ/σ + β`` with
``σ = sqrt(var + eps)`` and the running statistics; after a conv/linear layer
``x = W a + b`` it folds into the layer's weights::

    W' = W * γ/σ   (per output channel),   b' = (b - μ) * γ/σ + β

What is guaranteed (float32, u = 2^-24, n the fan-in: in_channels/groups x kernel size, or
in_features). For the same input a, the folded pre-activation ``z' = W' a + b'`` and the
unfolded ``z = BN(W a + b)`` agree elementwise to within

    |z' - z| <= (2n + 16) * u * (|W'| |a| + |b'| + |β| + |(b - μ) γ/σ|)

(``|W'| |a|`` the same conv/linear applied to |a| with |W'|): two rounded dot products plus a
few roundings of the scale and shift. They are not equal in general, so a quantizer after the
layer, ``q = clamp(floor(z p/λ + 1/2), 0, p)``, gives the same level on both sides except
where ``z p/λ + 1/2`` lies within ``(p/λ)`` times that bound of an integer (a level boundary);
there the level may differ by one (0.520030 -> 0.520029 across a boundary was seen on a
trained resnet18). A flipped level changes every later layer's input, so ``snn.ann(x)`` and
``model.eval()(x)`` agree to float rounding only when no pre-activation lies that close to a
boundary; otherwise they can differ by more. ``fold_bn=False`` in ``to_snn`` keeps the
BatchNorms (as per-channel affine maps) and the unfolded arithmetic.
"""

import copy
from typing import Dict, List, Optional

from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..nn.fx_utils import SYNAPTIC_TYPES, free_submodule_name, trace


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A copy of ``model`` (eval mode, traced by torch.fx) with each BatchNorm folded into the
    conv/linear before it. Each folded layer's output equals the unfolded one to within the
    bound in this module's docstring (not exactly: see there for what that means for levels)."""
    gm = trace(copy.deepcopy(model).eval())
    fold_batchnorm_graph(gm)
    return gm.eval()


def fold_batchnorm_graph(gm: fx.GraphModule) -> List[str]:
    """Fold, in place, each BatchNorm whose input is a conv/linear used only by it.

    ``W' = W * γ/σ`` (per output channel), ``b' = (b - μ) * γ/σ + β``, ``σ = sqrt(var + eps)``,
    with the running statistics. A layer called at several sites gets a folded copy per
    BatchNorm it feeds. Returns the names of the folded BatchNorm modules; the others stay.
    """
    folded = []
    calls = _call_counts(gm.graph)
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _BatchNorm):
            continue
        bn = gm.get_submodule(node.target)
        previous = _foldable_input(gm, node, bn)
        if previous is None:
            continue
        layer = gm.get_submodule(previous.target)
        fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
        fused = fuse(layer.eval(), bn.eval())
        if calls[previous.target] == 1:
            gm.add_submodule(previous.target, fused)
        else:  # the layer is called elsewhere too: this call site gets its own folded copy
            target = free_submodule_name(gm, f"{previous.target}_bnfold")
            gm.add_submodule(target, fused)
            previous.target = target
        node.replace_all_uses_with(previous)
        gm.graph.erase_node(node)
        folded.append(str(node.target))
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return folded


def _foldable_input(gm: fx.GraphModule, node: fx.Node, bn: _BatchNorm) -> Optional[fx.Node]:
    """The conv/linear call feeding BatchNorm ``node`` alone, or None when it cannot be folded."""
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError(
            f"{node.target}: BatchNorm with track_running_stats=False normalises with the statistics of "
            "each batch even in eval mode; it cannot be folded nor run on a [T*B] batch"
        )
    previous = node.args[0] if node.args else None
    if not (isinstance(previous, fx.Node) and previous.op == "call_module" and len(previous.users) == 1):
        return None
    layer = gm.get_submodule(previous.target)
    if type(layer) not in SYNAPTIC_TYPES or len(node.args) != 1 or node.kwargs:
        return None
    if isinstance(layer, nn.Linear) and layer.out_features != bn.num_features:
        return None
    return previous


def _call_counts(graph: fx.Graph) -> Dict[str, int]:
    counts = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts
