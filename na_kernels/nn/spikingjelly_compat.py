"""Swap SpikingJelly's IF neurons in an existing model for ``na_kernels.nn.IFNode``.

``swap_spikingjelly_neurons(model)`` replaces every ``spikingjelly.activation_based.neuron.IFNode``
in ``model`` (in place) by an ``IFNode`` with the same arguments (``v_threshold``, ``v_reset``,
``surrogate_function``, ``detach_reset``, ``step_mode``, ``store_v_seq``), the same state (``v``,
``v_seq``), training flag and forward hooks (a SpikingJelly monitor keeps recording). The model
then runs as before: identical spikes and v for float32 input, gradients equal within float
rounding; for float16/bfloat16 input see ``IFNode``'s ``state_dtype``. SpikingJelly is needed only
to recognise its neurons (``pip install spikingjelly --no-deps loguru tqdm``).
"""

from typing import List

from torch import nn

from .if_node import SPIKINGJELLY_SURROGATES, IFNode

# forward hooks travel with the module (the same dicts, so existing handles still remove them)
_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def _spikingjelly_if_class():
    try:
        from spikingjelly.activation_based import neuron
    except ImportError as error:
        raise ImportError(
            "swapping SpikingJelly neurons needs spikingjelly: pip install spikingjelly --no-deps loguru tqdm"
        ) from error
    return neuron.IFNode


def from_spikingjelly(node, *, state_dtype: str = "float32", name: str = "node") -> IFNode:
    """An ``IFNode`` equal to SpikingJelly's ``node`` (a ``neuron.IFNode``): its arguments, state
    (v, v_seq), training flag and forward hooks. ``name`` labels the node in errors.

    Raises TypeError for a subclass of SpikingJelly's IFNode (it may change the dynamics) or a
    surrogate without a fused backward here (only Sigmoid, ATan and Rect), ValueError for a node
    with SpikingJelly's explicit neuron precision set (its CUDA-only storage dtypes).
    """
    sj_if = _spikingjelly_if_class()
    if type(node) is not sj_if:
        raise TypeError(
            f"{name}: expected spikingjelly's neuron.IFNode, got {type(node).__module__}."
            f"{type(node).__name__} (a subclass may change the dynamics; swap it by hand)"
        )
    if getattr(node, "_neuron_precision", None) is not None:
        raise ValueError(
            f"{name}: SpikingJelly's explicit neuron precision {node._neuron_precision} has no "
            "equivalent here; clear it, or use state_dtype='input' for 16-bit input"
        )
    surrogate = node.surrogate_function
    if type(surrogate).__name__ not in SPIKINGJELLY_SURROGATES:
        raise TypeError(
            f"{name}: surrogate_function {type(surrogate).__name__} has no fused backward here "
            f"(only {tuple(SPIKINGJELLY_SURROGATES)}); keep SpikingJelly's IFNode for it"
        )
    ours = IFNode(
        v_threshold=node.v_threshold,
        v_reset=node.v_reset,
        surrogate_function=surrogate,
        detach_reset=node.detach_reset,
        step_mode=node.step_mode,
        store_v_seq=node.store_v_seq,
        state_dtype=state_dtype,
    )
    ours.v = node.v
    ours.v_seq = node.v_seq
    ours.train(node.training)
    for attribute in _HOOK_DICTS:
        if hasattr(node, attribute):
            setattr(ours, attribute, getattr(node, attribute))
    return ours


def swap_spikingjelly_neurons(model: nn.Module, *, state_dtype: str = "float32") -> List[str]:
    """Replace every SpikingJelly ``neuron.IFNode`` in ``model`` by ``na_kernels.nn.IFNode``, in place.

    Arguments, state and hooks are kept (``from_spikingjelly``); other neuron types (LIF, ...) are
    left as they are. Returns the qualified names of the swapped modules. SpikingJelly's
    ``functional.reset_net`` cache of the model is cleared so it resets the new neurons.

    Raises ValueError if ``model`` holds no SpikingJelly IFNode, TypeError if ``model`` is itself
    one (use ``from_spikingjelly``) or a neuron cannot be swapped (naming it).
    """
    sj_if = _spikingjelly_if_class()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, sj_if):
        raise TypeError("model is itself a SpikingJelly IFNode: use na_kernels.nn.from_spikingjelly(node)")
    targets = [
        (name, module) for name, module in model.named_modules(remove_duplicate=False) if isinstance(module, sj_if)
    ]
    if not targets:
        raise ValueError(f"no spikingjelly neuron.IFNode in {type(model).__name__}: nothing to swap")
    replacements = {}  # one new node per SpikingJelly node, wherever it is registered
    for name, module in targets:
        if id(module) not in replacements:
            replacements[id(module)] = from_spikingjelly(module, state_dtype=state_dtype, name=name)
    for name, module in targets:  # every check passed: now change the model
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, replacements[id(module)])
    try:
        from spikingjelly.activation_based.functional import invalidate_reset_cache
    except ImportError:
        pass
    else:
        invalidate_reset_cache(model)
    return [name for name, _ in targets]
