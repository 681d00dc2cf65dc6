"""Operator benchmark cases for `benchmark.py --ops`: each `layers` operator at the shapes of the backbones that use
it, with the implementations to time.

One module per operator file of `layers/` (same name), each defining `benchmark_cases(batch_size) -> List[OpCase]`;
`benchmark_cases` collects every module of this package, so a new operator adds its module here and nothing else.
"""
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

__all__ = ['OpCase', 'benchmark_cases', 'fwd_bwd_case']


@dataclass
class OpCase:
    """One operator benchmark case at a backbone-stage shape, for `benchmark.py --ops`.

    `run(impl)` executes the operator once with implementation `impl` on inputs prepared beforehand;
    `impls` lists the implementations to time, the baseline first (the reference, or for a comparison of two
    different operators such as linear vs softmax attention, `same_result=False`, the one compared against).
    """
    op: str
    shape: str
    run: Callable[[str], object]
    impls: List[str]
    same_result: bool = True


def fwd_bwd_case(op: str, shape: str, impls: List[str], fn: Callable[..., torch.Tensor],
                 tensors: Sequence[torch.Tensor], module: Optional[torch.nn.Module] = None) -> OpCase:
    """The training step of an operator: `fn(impl, *inputs)`, then the gradients of a fixed random cotangent with
    respect to every floating-point input and, if given, `module`'s parameters (what a backward pass computes).

    The case's result is those gradients, flattened and concatenated, so `--ops` also checks that every
    implementation's backward agrees with the baseline's.
    """
    leaves = [t.detach().clone().requires_grad_() if t.is_floating_point() else t for t in tensors]
    wrt = [t for t in leaves if t.requires_grad] + (list(module.parameters()) if module is not None else [])
    cotangent = {}

    def run(impl: str) -> torch.Tensor:
        with torch.enable_grad():
            out = fn(impl, *leaves)
            if 'value' not in cotangent:
                cotangent['value'] = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
            grads = torch.autograd.grad(out, wrt, cotangent['value'], allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(t)).flatten() for g, t in zip(grads, wrt)])
    return OpCase(f'{op} fwd+bwd', shape, run=run, impls=impls)


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """Every operator's benchmark cases at backbone-stage shapes, module by module in name order."""
    cases = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        cases += importlib.import_module(f'{__name__}.{info.name}').benchmark_cases(batch_size)
    return cases
