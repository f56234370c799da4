"""The one registration of a public op: its two torch.library custom ops, their fake rules, the
autograd formula and the eager fast path, produced from one ``Op`` description per op.

The call path it generates, for ``na_kernels.noisy_quant`` (``integrate_fire`` alike)::

    ops/noisy_quant/__init__.py  noisy_quant(x, p, ...)   checks the arguments, builds the record
      -> Op.__call__(*tensors, args)                       (this file)
         plain eager (``_eager.forward_ok``):
           -> Op.eager: no grad needed -> the backend's forward directly
                        grad needed    -> EagerFunction.apply (autograd.Function, same save/backward)
         otherwise (compile, export, fake/meta tensors, modes, autocast, jit.trace, torch.func):
           -> torch.ops.na_kernels.noisy_quant (custom op; under torch.func: FuncFunction.apply)
              -> _forward_device (CPU/CUDA) or _forward_reference (any other device)
      -> _backend.implementation(op, device) picks the module:
           ops/noisy_quant/triton.py     forward/backward adapter -> launcher -> @triton.jit kernels
           ops/noisy_quant/cpu.py        forward/backward adapter -> na_kernels._C (csrc/noisy_quant/)
           ops/noisy_quant/reference.py  forward/backward adapter -> the formula in PyTorch
    backward: Op.gradients -> the backend's backward directly (eager) or
              torch.ops.na_kernels.noisy_quant_backward (-> the same modules)

An op takes tensors and an argument record (a dataclass of ``_spec``: ``NoisyQuantArgs``,
``IntegrateFireArgs``). The schema of ``na_kernels::<name>`` lists the tensors, then the record's
fields, flattened to ints, floats and bools (an enum field becomes its int), so torch.compile and
torch.export trace it; the schema of ``na_kernels::<name>_backward`` lists the backward's
tensors, the same fields, then the backward's own extra arguments. Inside the kernels, the fake
rules and setup_context the record is rebuilt, so the per-op code only ever sees records.

Each backend (``_backend.implementation``) has one module per op with

    forward(*tensors, args)                       -> the op's outputs
    backward(*backward_tensors, args, *extras)    -> the backward op's outputs

CUDA and CPU tensors run on the backend chosen by ``_backend.resolve``, any other device on the
reference. ``Op.__call__(*tensors, args)`` is what the public function calls: in plain eager mode
(``_eager.forward_ok``) it calls the backend directly (through an autograd.Function with the op's
own setup_context and backward when a gradient is needed), otherwise the custom op.

torch.func transforms (grad, vjp, jacrev, vmap) cannot differentiate a ``register_autograd``
formula in torch 2.13: the autograd.Function that torch.library generates for it has no
setup_context, which functorch requires (pytorch/pytorch#170834, #179652). Inside a transform
the op therefore runs through ``_func_function``: an autograd.Function with setup_context whose
forward is the custom op and whose backward is the same formula, and both custom ops get a vmap
rule (one call per batch element) so that jacrev and vmap can batch them. Double backward is not
supported (the backward is a straight-through or surrogate formula, not differentiable): the
backward runs through ``_backward_function``, whose own backward raises a NotImplementedError
naming the op.
"""

import dataclasses
import enum
import importlib
import typing

import torch

from .. import _backend
from . import _eager

_SCALARS = {bool: "bool", int: "int", float: "float"}


def _schema_type(annotation) -> str:
    """The schema type of a record field: an enum is an int, Optional[X] is X?."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "int"
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(options) == 1:
        return _schema_type(options[0]) + "?"
    raise TypeError(f"no schema type for a record field of type {annotation!r}")


class _Record:
    """A dataclass record as schema arguments: ``flatten`` for the op, ``rebuild`` inside it."""

    def __init__(self, record_type):
        hints = typing.get_type_hints(record_type)
        self.type = record_type
        self.names = tuple(field.name for field in dataclasses.fields(record_type))
        self.schema = ", ".join(f"{_schema_type(hints[name])} {name}" for name in self.names)
        self._enums = tuple(
            hints[name] if isinstance(hints[name], type) and issubclass(hints[name], enum.Enum) else None
            for name in self.names
        )

    def flatten(self, args):
        return tuple(
            int(value) if kind is not None else value
            for kind, value in zip(self._enums, (getattr(args, name) for name in self.names))
        )

    def rebuild(self, flat):
        return self.type(*(value if kind is None else kind(value) for kind, value in zip(self._enums, flat)))


def _count(parameters: str) -> int:
    return len([p for p in parameters.split(",") if p.strip()])


class Op:
    """A public op's registration.

    name:      "noisy_quant" registers na_kernels::noisy_quant and na_kernels::noisy_quant_backward.
    record:    the argument record's dataclass.
    inputs, outputs: the forward's tensor parameters (the first is never None: its device picks the
               backend) and returns, in schema syntax.
    backward_inputs, backward_extras, backward_outputs: the backward op's tensor parameters, its
               parameters after the record's fields, and its returns.
    fake(*tensors, args), fake_backward(*backward_tensors, args, *extras): the fake rules.
    save(ctx, tensors, args, output): what setup_context keeps (``ctx.args`` is kept already).
    backward(ctx, run, *grad_outputs): the gradients of the forward's tensors; ``run(*backward_tensors,
               *extras)`` computes the backward op (its kernels directly on the fast path).
    tags:      torch.Tag's of both custom ops (``torch.Tag.flexible_layout``: Inductor passes tensors in
               the layout it has; the fake rules then give the outputs' strides for those inputs).
    """

    def __init__(
        self,
        name,
        record,
        *,
        inputs,
        outputs,
        backward_inputs,
        backward_extras,
        backward_outputs,
        fake,
        fake_backward,
        save,
        backward,
        tags=(),
    ):
        self.name = name
        self.record = _Record(record)
        self._inputs = _count(inputs)
        self._backward_inputs = _count(backward_inputs)
        self._save = save
        self._backward = backward
        self._reference = importlib.import_module(f"na_kernels.ops.{name}.reference")
        fields = self.record.schema

        self.forward_op = torch.library.custom_op(
            f"na_kernels::{name}",
            self._forward_reference,
            mutates_args=(),
            schema=f"({inputs}, {fields}) -> {outputs}",
            tags=tuple(tags),
        )
        self.forward_op.register_kernel(("cpu", "cuda"))(self._forward_device)
        self.forward_op.register_fake(lambda *flat: self._call(fake, flat, self._inputs))
        self.forward_op.register_autograd(self._op_backward, setup_context=self._setup_context)

        self.backward_op = torch.library.custom_op(
            f"na_kernels::{name}_backward",
            self._backward_reference,
            mutates_args=(),
            schema=f"({backward_inputs}, {fields}, {backward_extras}) -> {backward_outputs}",
            tags=tuple(tags),
        )
        self.backward_op.register_kernel(("cpu", "cuda"))(self._backward_device)
        self.backward_op.register_fake(lambda *flat: self._call(fake_backward, flat, self._backward_inputs))

        self.forward_op.register_vmap(_per_sample_vmap(self.forward_op))
        self.backward_op.register_vmap(_per_sample_vmap(self.backward_op))

        self.function = _eager_function(self)
        self.func_function = _func_function(self)
        self.backward_function = _backward_function(self)

    # ------------------------------------------------------------------------- the public call

    def __call__(self, *inputs):
        """The op on (*tensors, args): the backend directly in plain eager mode, else the custom op."""
        if _eager.forward_ok(*inputs[:-1]):
            return self.eager(*inputs)
        args = inputs[-1]
        if not torch.compiler.is_compiling():  # torch.compile traces the custom op itself
            if _eager.functorch_active():
                return self.func_function.apply(*inputs)
            if torch._C._get_tracing_state() is not None:  # torch.jit.trace records the fields as constants
                args = args.for_trace()
        return self.forward_op(*inputs[:-1], *self.record.flatten(args))

    def eager(self, *inputs, **options):
        """The custom op's work for a plain eager call: the kernel directly, or through the
        autograd.Function when a gradient is needed. options: keywords of the backend's own
        forward, passed where no gradient is needed (integrate_fire's C++ ``overwrite``, ``counts``)."""
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs[:-1]):
            return self.function.apply(*inputs)
        return _backend.implementation(self.name, inputs[0].device).forward(*inputs, **options)

    def implementation(self, tensors):
        """The backend module for these tensors (all on one device; None entries skipped)."""
        return _backend.implementation(self.name, next(t for t in tensors if t is not None).device)

    # ------------------------------------------------------------- the custom ops' functions

    def _split(self, flat, count):
        """Schema arguments -> (tensors, record, extras)."""
        fields = len(self.record.names)
        return tuple(flat[:count]), self.record.rebuild(flat[count : count + fields]), tuple(flat[count + fields :])

    def _call(self, function, flat, count):
        """function(*tensors, args, *extras) of schema arguments whose first ``count`` are the tensors."""
        tensors, args, extras = self._split(flat, count)
        return function(*tensors, args, *extras)

    def _forward_reference(self, *flat):
        return self._call(self._reference.forward, flat, self._inputs)

    def _forward_device(self, *flat):
        return self._call(self.implementation(flat[: self._inputs]).forward, flat, self._inputs)

    def _backward_reference(self, *flat):
        return self._call(self._reference.backward, flat, self._backward_inputs)

    def _backward_device(self, *flat):
        return self._call(self.implementation(flat[: self._backward_inputs]).backward, flat, self._backward_inputs)

    # ------------------------------------------------------------------------------ autograd

    def _setup_context(self, ctx, inputs, output):
        tensors, args, _ = self._split(inputs, self._inputs)
        self.keep(ctx, tensors, args, output)

    def keep(self, ctx, tensors, args, output):
        ctx.args = args
        self._save(ctx, tensors, args, output)

    def _op_backward(self, ctx, *grads):
        return self.gradients(ctx, grads) + (None,) * len(self.record.names)

    def gradients(self, ctx, grads):
        """The gradients of the forward's tensors, the backward op (or its kernels) computing them."""

        def run(*inputs):
            tensors, extras = inputs[: self._backward_inputs], inputs[self._backward_inputs :]
            if _eager.backward_ok(ctx, *grads):  # the forward bypassed the op: so may the backward
                return self.implementation(tensors).backward(*tensors, ctx.args, *extras)
            if not torch.compiler.is_compiling() and (torch.is_grad_enabled() or _eager.functorch_active()):
                # create_graph, or inside a torch.func transform: a second derivative raises clearly
                return self.backward_function.apply(ctx.args, *inputs)
            return self.backward_op(*tensors, *self.record.flatten(ctx.args), *extras)

        return tuple(self._backward(ctx, run, *grads))


def _eager_function(op: Op):
    """The op's autograd in plain eager mode without the dispatcher: the same kernels, the same
    setup_context and backward (which then calls the backward kernels directly as well)."""

    class EagerFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            tensors, args = inputs[:-1], inputs[-1]
            output = op.implementation(tensors).forward(*inputs)
            op.keep(ctx, tensors, args, output)
            ctx.eager_fast = True
            return output

        @staticmethod
        def backward(ctx, *grads):
            return op.gradients(ctx, grads) + (None,)  # nothing for the record

    EagerFunction.__name__ = EagerFunction.__qualname__ = "".join(w.title() for w in op.name.split("_")) + "Eager"
    return EagerFunction


def _title(op: Op):
    return "".join(w.title() for w in op.name.split("_"))


def _func_function(op: Op):
    """The op for torch.func transforms: an autograd.Function with setup_context (which functorch
    needs) around the custom op, the op's own setup_context and backward, and a vmap rule
    generated from the custom op's."""

    def forward(*inputs):
        return op.forward_op(*inputs[:-1], *op.record.flatten(inputs[-1]))

    def setup_context(ctx, inputs, output):
        op.keep(ctx, inputs[:-1], inputs[-1], output)

    def backward(ctx, *grads):
        return op.gradients(ctx, grads) + (None,)

    def jvp(ctx, *tangents):
        raise NotImplementedError(
            f"na_kernels.{op.name}: forward-mode AD (torch.func.jvp, jacfwd, hessian, torch.autograd.forward_ad) "
            f"is not supported; use reverse mode (torch.func.grad, vjp, jacrev, or .backward())"
        )

    # type(): the class (and its autograd node, "<name>Backward") named after the op
    return type(
        f"{_title(op)}Func",
        (torch.autograd.Function,),
        {
            "generate_vmap_rule": True,
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
            "jvp": staticmethod(jvp),
        },
    )


def _backward_function(op: Op):
    """The backward op where its result could be differentiated again (create_graph=True, or a
    torch.func transform): the same computation, and a clear error if a gradient of it is asked."""

    def forward(args, *inputs):
        tensors, extras = inputs[: op._backward_inputs], inputs[op._backward_inputs :]
        return op.backward_op(*tensors, *op.record.flatten(args), *extras)

    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise NotImplementedError(
            f"na_kernels.{op.name}: double backward (a gradient of its gradient: create_graph=True and "
            f"then another backward, torch.func.grad of grad, hessian, ...) is not supported; its backward "
            f"is a straight-through / surrogate-gradient formula with no derivative of its own. Take "
            f"first-order gradients only, or use na_kernels.ops.{op.name}.reference.{op.name} (plain PyTorch, "
            f"differentiable by autograd) where second derivatives are needed."
        )

    return type(
        f"{_title(op)}Gradient",
        (torch.autograd.Function,),
        {
            "generate_vmap_rule": True,
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
        },
    )


def _per_sample_vmap(custom_op):
    """A vmap rule for a custom op: the op once per element of the vmapped dimension, outputs
    stacked along dim 0 (these kernels have no batched form; jacrev and vmap need one)."""

    def rule(info, in_dims, *args):
        def sample(i):
            return tuple(arg if dim is None or arg is None else arg.select(dim, i) for arg, dim in zip(args, in_dims))

        results = [custom_op(*sample(i)) for i in range(info.batch_size)]
        if isinstance(results[0], torch.Tensor):
            return torch.stack(results), 0
        outputs = tuple(torch.stack(parts) for parts in zip(*results))
        return outputs, (0,) * len(outputs)

    return rule
