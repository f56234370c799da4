"""A small NIR interpreter for the tests: runs a graph to_nir wrote, node by node, in PyTorch."""

import nir
import numpy as np
import torch
from torch.nn import functional as F


def run_nir(graph, x, T, semantics="na_kernels"):
    """The NIR graph run for T steps on the same input x ``[B, ...]``: the mean of the Output over T.

    IF nodes as ``semantics`` says: ``"na_kernels"`` reads our metadata (soft reset, v from
    v_init * θ, firing on >=); ``"nir"`` is NIR's IF as SpikingJelly and Norse import it (hard
    reset to v_reset from v = 0; firing on >=, SpikingJelly's and na_kernels' tie rule)."""
    order, sources = [], {}
    for src, dst in graph.edges:
        sources.setdefault(dst, []).append(src)
    done = set()
    while len(order) < len(graph.nodes):
        for name in graph.nodes:
            if name not in done and all(s in done for s in sources.get(name, [])):
                order.append(name)
                done.add(name)
    f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    pair = lambda a: tuple(int(i) for i in np.asarray(a).reshape(-1))  # noqa: E731
    potentials, total = {}, 0
    for _ in range(T):
        values = {}
        for name in order:
            node = graph.nodes[name]
            if isinstance(node, nir.Input):
                values[name] = x
                continue
            h = sum(values[s] for s in sources[name])
            if isinstance(node, nir.Conv2d):
                out = F.conv2d(
                    h,
                    f32(node.weight),
                    f32(node.bias),
                    pair(node.stride),
                    pair(node.padding),
                    pair(node.dilation),
                    int(node.groups),
                )
            elif isinstance(node, (nir.Affine, nir.Linear)):
                out = F.linear(h, f32(node.weight), f32(node.bias) if isinstance(node, nir.Affine) else None)
            elif isinstance(node, nir.AvgPool2d):
                out = F.avg_pool2d(h, pair(node.kernel_size), pair(node.stride), pair(node.padding))
            elif isinstance(node, nir.SumPool2d):
                out = F.avg_pool2d(h, pair(node.kernel_size), pair(node.stride), pair(node.padding), divisor_override=1)
            elif isinstance(node, nir.Flatten):
                start = int(node.start_dim)
                out = torch.flatten(h, start + 1 if start >= 0 else start)
            elif isinstance(node, nir.Scale):
                out = h * f32(node.scale)
            elif isinstance(node, nir.IF):
                theta = f32(node.v_threshold)
                if semantics == "na_kernels":
                    v = potentials.get(name, float(node.metadata["v_init"]) * theta) + h
                    out = (v >= theta).to(torch.float32)
                    potentials[name] = v - out * theta
                else:
                    v = potentials.get(name, torch.zeros_like(theta)) + h
                    out = (v >= theta).to(torch.float32)
                    potentials[name] = v * (1 - out) + out * f32(node.v_reset)
            elif isinstance(node, nir.Output):
                out = h
            else:
                raise AssertionError(type(node).__name__)
            values[name] = out
        total = total + values["output"]
    return total / T
