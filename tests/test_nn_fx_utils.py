"""fx helpers: tracing with NoisyQuant as a leaf, call matching, call-site numbering, free names."""

import torch
from nn_models import BasicBlock
from torch import nn
from torch.nn import functional as F

from na_kernels.nn import NoisyQuant
from na_kernels.nn.fx_utils import (
    describe_call,
    free_submodule_name,
    is_relu_call,
    is_unconvertible_call,
    module_calls,
    number_call_sites,
    site_name,
    trace,
)


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.act = NoisyQuant(3)

    def forward(self, x):
        return torch.sigmoid(self.act(F.relu(self.fc(x)).relu()))


def test_trace_keeps_noisy_quant_as_a_leaf_and_matches_calls():
    gm = trace(Functional())
    assert [n.target for n in module_calls(gm, NoisyQuant)] == ["act"]
    relus = [n for n in gm.graph.nodes if is_relu_call(n)]
    assert [describe_call(n) for n in relus] == ["F.relu()", "Tensor.relu()"]
    assert [site_name(n) for n in relus] == ["relu", "relu_1"]
    assert [describe_call(n) for n in gm.graph.nodes if is_unconvertible_call(n)] == ["torch.sigmoid()"]


def test_call_sites_are_numbered_per_module():
    gm = trace(BasicBlock(4, 4))
    sites = [site for _, site in number_call_sites(module_calls(gm, nn.ReLU))]
    assert sites == ["relu", "relu_call2"]


def test_free_submodule_name():
    gm = trace(nn.Sequential(nn.Linear(2, 2)))
    assert free_submodule_name(gm, "fc") == "fc"
    gm.add_submodule("fc", nn.Identity())
    gm.add_submodule("fc_1", nn.Identity())
    assert free_submodule_name(gm, "fc") == "fc_2"
