"""Operator benchmark cases for `benchmark.py --ops`: each `layers` operator at the shapes of the backbones that use
it, with the implementations to time.

One module per operator file of `layers/` (same name), each defining `benchmark_cases(batch_size) -> List[OpCase]`;
`benchmark_cases` collects every module of this package, so a new operator adds its module here and nothing else.
"""
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, List

__all__ = ['OpCase', 'benchmark_cases']


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


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """Every operator's benchmark cases at backbone-stage shapes, module by module in name order."""
    cases = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        cases += importlib.import_module(f'{__name__}.{info.name}').benchmark_cases(batch_size)
    return cases
