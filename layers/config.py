"""Kernel-implementation selection shared by every operator in `layers/`.

Every operator has a `reference` implementation (plain PyTorch, the definition of its semantics) and
one or more fast ones. Which one runs is decided, in order, by:

1. the `impl=` argument of the operator call, or the `kernel_impl` attribute of the operator module that makes the
   call (its constructor argument; for a whole model, `timm.create_model(name, kernel_impl=...)` or
   `set_module_kernel_impl(model, ...)`, which sets it on every operator module of the model);
2. the process-wide setting: `set_kernel_impl()`, the `kernel_impl()` context manager, or the
   `ZOO_KERNEL_IMPL` environment variable read at import;
3. `'auto'`: the first implementation, in the operator's priority order, that can run on the given
   inputs and is not marked `NotPreferred` there (the reference is always last and always runs).

The process-wide setting is `'auto'`, `'reference'`, or `'flops'`: the implementation whose traced ops count
the operator's intrinsic work (the reference, unless the reference is a deliberately naive definition, as the
quadratic form of linear attention is; benchmark.py counts FLOPs under it). A named implementation that cannot run raises
`KernelUnavailableError` with every reason; it never silently falls back.

A plain `torch.jit.trace` (not an ONNX export) is what fvcore's `FlopCountAnalysis` and other jit-based counters run:
there 'auto' means 'flops', so that they count what benchmark.py counts (`layers.fvcore_handles()`).

Tracing and export: while a graph is captured (`torch.jit.trace`, the TorchScript-based `torch.onnx.export`,
`torch.export.export` and the dynamo-based ONNX exporter built on it), and for a model built under timm's
`exportable` or `scriptable` layer config, 'auto' passes over the implementations marked `untraceable` (their
captured graph would not compute the same thing for other inputs); every other implementation traces exactly.
timm sets `exportable`/`scriptable` only while a model is built; `bind_layer_config` records them on the model
so that they hold whenever it runs.
"""
import contextlib
import os
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from timm.layers import is_exportable, is_scriptable

__all__ = [
    'GLOBAL_IMPLS', 'KernelUnavailableError', 'NotPreferred', 'bind_layer_config', 'export_friendly',
    'get_kernel_impl', 'grad_required', 'is_capturing_graph', 'is_torchscript_onnx_export',
    'kernel_impl', 'resolve_impl', 'set_kernel_impl', 'set_module_kernel_impl',
    'traceable_only', 'untraceable', 'usable_impls',
]

GLOBAL_IMPLS = ('auto', 'reference', 'flops')
_ENV_VAR = 'ZOO_KERNEL_IMPL'

# An implementation table: name -> (function, can_use). `can_use(*args, **kwargs)` returns None when the
# implementation can run on those inputs, else a short reason (a `NotPreferred` reason: it runs when named, but
# 'auto' passes it over). Insertion order is the 'auto' priority.
ImplTable = Dict[str, Tuple[Callable, Optional[Callable[..., Optional[str]]]]]


class NotPreferred(str):
    """A `can_use` reason for an implementation that runs on these inputs but is measured slower here than one
    later in the table: 'auto' skips it, naming it still runs it."""


class KernelUnavailableError(RuntimeError):
    """A caller named a kernel implementation that cannot run on the given inputs."""


def _check_global(name: str) -> str:
    if name not in GLOBAL_IMPLS:
        raise ValueError(
            f'Unknown global kernel implementation {name!r}: expected one of {GLOBAL_IMPLS}. '
            f'Operator-specific implementations are chosen per call with impl=... or per model with kernel_impl=....')
    return name


_global_impl = _check_global(os.environ.get(_ENV_VAR, 'auto').strip() or 'auto')


def get_kernel_impl() -> str:
    """The process-wide kernel implementation: 'auto', 'reference' or 'flops'."""
    return _global_impl


def set_kernel_impl(name: str) -> None:
    """Set the process-wide kernel implementation ('auto', 'reference' or 'flops')."""
    global _global_impl
    _global_impl = _check_global(name)


@contextlib.contextmanager
def kernel_impl(name: str) -> Iterator[None]:
    """Context manager: run the enclosed code with the given process-wide implementation."""
    previous = get_kernel_impl()
    set_kernel_impl(name)
    try:
        yield
    finally:
        set_kernel_impl(previous)


def set_module_kernel_impl(module: 'torch.nn.Module', impl: Optional[str]) -> 'torch.nn.Module':
    """Set `kernel_impl = impl` on every operator module inside `module` (itself included); returns `module`.

    An operator module is one with a `kernel_impl` attribute, which its forward passes as `impl=` to the operator
    call. Model constructors call this once at the end instead of passing the choice through every block.
    """
    for sub in module.modules():
        if hasattr(sub, 'kernel_impl'):
            sub.kernel_impl = impl
    return module


_export_friendly_depth = 0


def is_capturing_graph() -> bool:
    """True while torch.jit.trace, torch.onnx.export or torch.export runs the model to capture its graph."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def grad_required(*tensors) -> bool:
    """True if autograd records an operation on these inputs (a training forward), so its backward will run too.

    Some fast implementations win in inference but have a slower backward than the reference at small shapes;
    their `can_use` checks this to make 'auto' pick by the training step's measured speed.
    """
    return torch.is_grad_enabled() and any(torch.is_tensor(t) and t.requires_grad for t in tensors)


def is_torchscript_onnx_export() -> bool:
    """True while the TorchScript-based ONNX exporter (`torch.onnx.export(..., dynamo=False)`) runs the model.

    That exporter lacks some ops the dynamo-based one (which runs under `torch.export`) takes, so a few operators
    switch to an equivalent formulation only then.
    """
    return torch.onnx.is_in_onnx_export() and not torch.compiler.is_exporting()


@contextlib.contextmanager
def export_friendly(enable: bool = True) -> Iterator[None]:
    """Context manager: 'auto' picks only implementations that trace exactly, as it does while exporting."""
    global _export_friendly_depth
    _export_friendly_depth += int(enable)
    try:
        yield
    finally:
        _export_friendly_depth -= int(enable)


def traceable_only() -> bool:
    """True while 'auto' picks only implementations that trace exactly (graph capture, or an exportable model runs)."""
    return _export_friendly_depth > 0 or is_exportable() or is_scriptable() or is_capturing_graph()


def untraceable(reason: str) -> Callable[[Callable], Callable]:
    """Mark an implementation whose captured graph would not hold for other inputs (data-dependent Python
    control flow or sizes); 'auto' skips it while exporting, naming it there raises `KernelUnavailableError`."""
    def mark(fn: Callable) -> Callable:
        fn.untraceable_reason = reason
        return fn
    return mark


def _enter_layer_config(module: torch.nn.Module, args) -> None:
    global _export_friendly_depth
    if module.exportable or module.scriptable:
        _export_friendly_depth += 1
        module._layer_config_entered = getattr(module, '_layer_config_entered', 0) + 1


def _exit_layer_config(module: torch.nn.Module, args, output) -> None:
    global _export_friendly_depth
    if getattr(module, '_layer_config_entered', 0):
        module._layer_config_entered -= 1
        _export_friendly_depth -= 1


def bind_layer_config(model: torch.nn.Module) -> List[torch.utils.hooks.RemovableHandle]:
    """Record timm's `exportable`/`scriptable` layer config in force now (at build) as `model.exportable` and
    `model.scriptable`, read whenever the model runs: while either is set, 'auto' picks only implementations that
    trace exactly, as it does during export. Both attributes may be changed later.

    Returns the handles of the two forward hooks that apply them (TorchScript cannot compile Python hooks: a model
    that scripts removes them first).
    """
    model.exportable, model.scriptable = is_exportable(), is_scriptable()
    return [model.register_forward_pre_hook(_enter_layer_config),
            model.register_forward_hook(_exit_layer_config, always_call=True)]


def resolve_impl(op_name: str, impls: ImplTable, impl: Optional[str], *args, flops_impl: str = 'reference',
                 **kwargs) -> Callable:
    """Pick the implementation of `op_name` to run on these inputs.

    Args:
        op_name: operator name, for error messages.
        impls: the operator's implementation table, in 'auto' priority order, ending with 'reference'.
        impl: None (use the process-wide setting), 'auto', 'reference', 'flops' or a name from `impls`.
        *args, **kwargs: the operator's inputs, passed to each `can_use` check.
        flops_impl: the implementation that 'flops' selects for this operator.

    Returns:
        The implementation function.
    """
    name = get_kernel_impl() if impl is None else impl
    if name == 'auto' and torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
        # a plain torch.jit.trace is what fvcore and other jit-based FLOP counters run: they count the 'flops' kernels
        name = 'flops'
    if name == 'flops':
        name = flops_impl
    if name == 'auto':
        export_mode = traceable_only()
        reasons = []
        for candidate, (fn, can_use) in impls.items():
            reason = getattr(fn, 'untraceable_reason', None) if export_mode else None
            if reason is None and can_use is not None:
                reason = can_use(*args, **kwargs)
            if reason is None:
                return fn
            reasons.append(f'{candidate}: {reason}')
        raise KernelUnavailableError(f'No implementation of {op_name} can run here: ' + '; '.join(reasons))
    if name not in impls:
        raise ValueError(f'Unknown implementation {name!r} for {op_name}; available: {list(impls)} or "auto".')
    fn, can_use = impls[name]
    reason = getattr(fn, 'untraceable_reason', None) if is_capturing_graph() else None
    if reason is None and can_use is not None:
        reason = can_use(*args, **kwargs)
    if reason is not None and not isinstance(reason, NotPreferred):
        raise KernelUnavailableError(f'{op_name} implementation {name!r} cannot run on these inputs because: {reason}')
    return fn


def usable_impls(impls: ImplTable, *args, **kwargs) -> Dict[str, Optional[str]]:
    """Map every implementation name to None (usable on these inputs, if perhaps not preferred) or the reason it
    is not."""
    reasons = {name: (None if can_use is None else can_use(*args, **kwargs)) for name, (_, can_use) in impls.items()}
    return {name: None if isinstance(reason, NotPreferred) else reason for name, reason in reasons.items()}
