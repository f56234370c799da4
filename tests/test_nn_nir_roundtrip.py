"""from_nir reads back every form to_nir writes (pooling="avg" / "sum" / "conv", border-dependent
divisors, grouped convs written ungrouped, amplitude and divisor nodes), exactly, and refuses
each of those forms when its metadata or arrays are inconsistent."""

import numpy as np
import pytest
import torch
from torch import nn

from na_kernels.io.nir_export import to_nir
from na_kernels.io.nir_import import NIRImportError, from_nir
from na_kernels.nn import replace_activations, to_snn

nir = pytest.importorskip("nir")


class Forms(nn.Module):
    """conv -> ReLU -> grouped conv -> ReLU -> AvgPool(3, 2, 1, count_include_pad=False) -> conv
    -> ReLU, + an identity shortcut of the pooled spikes -> ReLU -> adaptive pool -> flatten -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.act3 = nn.ReLU()
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.act4 = nn.ReLU()
        self.adaptive = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.act3(self.pool(self.act2(self.grouped(self.act1(self.conv1(x))))))
        x = self.act4(self.conv3(x) + x)
        return self.fc(torch.flatten(self.adaptive(x), 1))


def _snn():
    torch.manual_seed(0)
    model, _ = replace_activations(Forms(), p=4, lam="auto")
    model.train()(torch.randn(8, 2, 8, 8))
    return to_snn(model.eval(), T=3)


@pytest.fixture(scope="module")
def snn():
    return _snn()


def _graph(snn, pooling="avg"):
    return to_nir(snn, (2, 8, 8), pooling=pooling)


def _role_nodes(graph, role):
    return [n for n, node in graph.nodes.items() if (node.metadata or {}).get("role") == role]


@pytest.mark.parametrize("pooling", ["avg", "sum", "conv"])
def test_every_pooling_form_round_trips_exactly_through_a_file(snn, pooling, tmp_path):
    graph = _graph(snn, pooling)
    assert graph.nodes["grouped"].groups == 1 and graph.nodes["grouped"].metadata["groups"] == 2
    assert _role_nodes(graph, "amplitude")  # the identity shortcut's amplitude
    assert graph.nodes["flatten"].start_dim < 0
    path = tmp_path / "net.nir"
    nir.write(path, graph)
    rebuilt = from_nir(path)
    assert rebuilt.network.get_submodule("grouped").groups == 2
    pool = rebuilt.network.get_submodule("pool")
    assert isinstance(pool, nn.AvgPool2d) and pool.count_include_pad is False
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), snn(x))


def test_the_border_dependent_divisor_is_a_scale_node_of_role_scale(snn):
    graph = _graph(snn, "sum")
    scales = [graph.nodes[n] for n in _role_nodes(graph, "scale")]
    assert any(isinstance(node, nir.Scale) for node in scales)


def _set(node, key, value):
    node.metadata[key] = value


def _first(graph, role):
    return graph.nodes[_role_nodes(graph, role)[0]]


def _diagonal_conv(graph, role):
    return next(
        node
        for n, node in graph.nodes.items()
        if (node.metadata or {}).get("role") == role and isinstance(node, nir.Conv2d)
    )


def _off_block(graph):
    graph.nodes["grouped"].weight[0, 3, 1, 1] = 0.25  # output channel 0 (group 0) reads channel 3 (group 1)


def _off_diagonal(graph):
    _diagonal_conv(graph, "amplitude").weight[0, 1, 0, 0] = 0.5


def _not_identity(graph):
    graph.nodes["pool"].weight[1, 0, 0, 0] = 1.0


CHANGES = [
    ("avg", lambda g: _set(g.nodes["grouped"], "groups", 2.0), "metadata groups must be an int"),
    ("avg", lambda g: _set(g.nodes["grouped"], "groups", 0), "metadata groups must be an int >= 1"),
    ("avg", lambda g: _set(g.nodes["grouped"], "groups", 3), "metadata groups 3 .* dividing both channel counts"),
    ("avg", lambda g: _set(g.nodes["grouped"], "groups", "2"), "metadata groups must be an int"),
    ("avg", _off_block, "output channel 0 reads input channel 3 of another group .*not block-diagonal"),
    ("avg", lambda g: _set(_first(g, "amplitude"), "role", "gain"), "metadata role is 'gain'; to_nir writes"),
    ("avg", lambda g: _set(_first(g, "amplitude"), "role", b"\xff"), "metadata role is not UTF-8"),
    ("avg", _off_diagonal, "must have a diagonal weight"),
    ("avg", lambda g: _diagonal_conv(g, "amplitude").bias.__setitem__(0, 0.5), "zero bias"),
    ("avg", lambda g: _diagonal_conv(g, "amplitude").weight.__setitem__((0, 0, 0, 0), -1.0), "diagonal > 0"),
    ("avg", lambda g: _set(_first(g, "amplitude"), "of", "conv1"), "must have one input, the node its metadata 'of'"),
    ("avg", lambda g: _set(g.nodes["pool"], "role", "amplitude"), "AvgPool2d with metadata role"),
    ("avg", lambda g: _set(_first(g, "amplitude"), "role", "scale"), "factor of role 'scale' must come from a pooling"),
    ("avg", lambda g: _set(g.nodes["conv3"], "input_scale_role", "gain"), "input_scale_role is 'gain'"),
    (
        "avg",
        lambda g: _set(g.nodes["conv3"], "input_scale_role", "scale"),
        "factor of role 'scale' must come from a pooling",
    ),
    ("sum", lambda g: _set(g.nodes["conv3"], "input_scale", np.ones(3)), "input_scale has 3 values for 4 inputs"),
    ("sum", lambda g: g.nodes["conv3"].metadata.pop("input_scale"), "input_scale_role without input_scale"),
    ("avg", lambda g: g.metadata.__setitem__("pooling", "max"), "graph metadata pooling is 'max'"),
    ("sum", lambda g: g.metadata.__setitem__("pooling", "avg"), "is a SumPool2d in a graph written with pooling='avg'"),
    ("conv", lambda g: g.metadata.__setitem__("pooling", "avg"), "Conv2d with pooling metadata 'kind' in a graph"),
    ("avg", lambda g: _set(g.nodes["pool"], "count_include_pad", 2), "count_include_pad must be an int >= 0 and <= 1"),
    ("avg", lambda g: _set(g.nodes["pool"], "divisor_override", -1), "divisor_override must be an int >= 0"),
    ("avg", lambda g: _set(g.nodes["pool"], "kind", "MaxPool2d"), "metadata kind is 'MaxPool2d'"),
    ("avg", lambda g: _set(g.nodes["adaptive"], "output_size", np.array([1, 1])), "adaptive pooling of .* to"),
    ("avg", lambda g: _set(g.nodes["adaptive"], "output_size", np.array([2])), "output_size must be 2 ints"),
    ("conv", _not_identity, "must be sum pooling: weight"),
    ("conv", lambda g: setattr(g.nodes["pool"], "weight", np.ones((1, 1, 3, 3))), "must be sum pooling: weight"),
    ("conv", lambda g: g.nodes["pool"].bias.__setitem__(0, 1.0), "must be sum pooling: weight"),
]


@pytest.mark.parametrize("pooling,change,match", CHANGES, ids=[m[:40] for _, _, m in CHANGES])
def test_inconsistent_forms_are_refused_naming_what_is_wrong(snn, pooling, change, match):
    graph = _graph(snn, pooling)
    change(graph)
    with pytest.raises(NIRImportError, match=match):
        from_nir(graph)


def test_a_scale_node_without_a_role_is_refused(snn):
    graph = _graph(snn, "sum")
    name = next(n for n in _role_nodes(graph, "scale") if isinstance(graph.nodes[n], nir.Scale))
    graph.nodes[name].metadata.pop("role")
    with pytest.raises(NIRImportError, match="Scale without metadata role"):
        from_nir(graph)


def test_a_role_scale_with_a_non_positive_factor_is_refused(snn):
    graph = _graph(snn, "sum")
    name = next(n for n in _role_nodes(graph, "scale") if isinstance(graph.nodes[n], nir.Scale))
    graph.nodes[name].scale[0, 0, 0] = 0.0
    with pytest.raises(NIRImportError, match="scale must be > 0"):
        from_nir(graph)


@pytest.mark.parametrize("pooling", ["avg", "sum", "conv"])
def test_fuzz_the_forms_metadata_and_arrays(snn, pooling):
    """Random values in the new forms' metadata and arrays: NIRImportError or a network, nothing else."""
    import copy
    import random

    rng = random.Random(3)
    values = [
        None,
        -1,
        0,
        1,
        2,
        3,
        4,
        2.0,
        np.nan,
        True,
        "scale",
        "amplitude",
        "gain",
        "AvgPool2d",
        "AdaptiveAvgPool2d",
        b"\xff",
        "",
        np.array([]),
        np.array([2, 2]),
        np.array([-1.0]),
        np.ones((4, 4)),
        np.ones((4, 4, 1, 1)),
        np.zeros((4, 4, 3, 3)),
        {"a": 1},
    ]
    keys = [
        "groups",
        "role",
        "of",
        "kind",
        "count_include_pad",
        "divisor_override",
        "output_size",
        "input_scale",
        "input_scale_role",
    ]
    base = _graph(snn, pooling)
    for _ in range(60):
        graph = copy.deepcopy(base)
        for _ in range(rng.randint(1, 2)):
            node = graph.nodes[rng.choice(list(graph.nodes))]
            if rng.random() < 0.7:
                node.metadata[rng.choice(keys)] = rng.choice(values)
            else:
                fields = [k for k, v in vars(node).items() if isinstance(v, np.ndarray)]
                if fields:
                    setattr(node, rng.choice(fields), rng.choice(values))
        try:
            from_nir(graph)
        except NIRImportError:
            pass


class Shortcut1d(nn.Module):
    """Linear -> ReLU, then Linear + the identity shortcut of those spikes -> ReLU: the amplitude on
    the shortcut is a diagonal Affine."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act1, self.fc2, self.act2 = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU()

    def forward(self, x):
        x = self.act1(self.fc1(x))
        return self.act2(self.fc2(x) + x)


def _shortcut_graph():
    torch.manual_seed(0)
    model, _ = replace_activations(Shortcut1d(), p=4, lam="auto")
    model.train()(torch.randn(8, 3))
    snn = to_snn(model.eval(), T=3)
    return snn, to_nir(snn, (3,))


def test_an_amplitude_as_a_diagonal_affine_passes_through():
    snn, graph = _shortcut_graph()
    names = _role_nodes(graph, "amplitude")  # the shortcut's, and the one on the output
    assert sorted(names) == ["act1_amplitude", "act2_amplitude"]
    assert all(isinstance(graph.nodes[n], nir.Affine) for n in names)
    name = "act1_amplitude"
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert torch.equal(from_nir(graph)(x), snn(x))
    graph.nodes[name].weight[0, 1] = 1e-3
    with pytest.raises(NIRImportError, match="Affine of role 'amplitude' must have a diagonal weight"):
        from_nir(graph)


def test_sequential_round_trip(tmp_path):
    """An nn.Sequential's layers are fx nodes ``_0``, ``_1``, ...: to_nir names its nodes so, and
    from_nir reads them back (the file and the graph) to the same outputs."""
    from na_kernels.nn import NoisyQuant

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), NoisyQuant(p=3, lam=2.0), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    snn = to_snn(model, T=4)
    graph = to_nir(snn, (1, 8, 8))
    assert "_0" in graph.nodes
    path = tmp_path / "sequential.nir"
    nir.write(str(path), graph)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = snn(x)
        for back in (from_nir(graph), from_nir(str(path))):
            torch.testing.assert_close(back(x), expected, rtol=0, atol=0)
