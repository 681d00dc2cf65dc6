"""The operator-test contract: an `OpSpec` says how to call an operator, its fast impls and input cases.

Each operator file in layers/ has a module in tests/op_specs/ defining `SPECS = [OpSpec(...)]`;
tests/test_layers.py collects them all and runs every check on every spec.
"""
from dataclasses import dataclass
from typing import Callable, List, Sequence


@dataclass
class OpSpec:
    """An operator under test: how to call it, which fast impls it has, and input cases.

    `make_inputs(case, dtype)` returns (tensor_args, static_kwargs); tensors are differentiated.
    """
    name: str
    op: Callable
    reference: Callable
    fast_impls: List[str]
    cases: Sequence[dict]
    make_inputs: Callable
