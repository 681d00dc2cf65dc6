"""The operator-test contract: an `OpSpec` says how to call an operator, its fast impls and input cases.

Each operator file in layers/ has a module in tests/op_specs/ defining `SPECS = [OpSpec(...)]`;
tests/test_layers.py collects them all and runs every check on every spec.
"""
from dataclasses import dataclass
from typing import Callable, List, Sequence

# The memory layouts an operator's inputs come in, and what tests/test_layers.py checks for each:
# - 'nchw': image maps (B, C, H, W); every 4-d input is also given in channels_last memory (as a model converted
#   with `.to(memory_format=torch.channels_last)` hands them over): each implementation gives the same result, and
#   the fast ones return the memory format the reference returns.
# - 'tokens': token or grid tensors (B, heads, N, d), (B, H, W, C), ...; every input is also given as a
#   non-contiguous view (as q, k, v sliced from one projection are): each implementation gives the same result.
LAYOUTS = ('nchw', 'tokens')


@dataclass
class OpSpec:
    """An operator under test: how to call it, which fast impls it has, input cases and its input layout.

    `make_inputs(case, dtype)` returns (tensor_args, static_kwargs); tensors are differentiated. `layout` is one of
    `LAYOUTS`; it has no default, so a spec cannot leave the layout test out. `bfloat16_inputs` False says the fast
    impls cannot take bfloat16 tensors directly (they still run under bfloat16 autocast, as the deployment form does).
    """
    name: str
    op: Callable
    reference: Callable
    fast_impls: List[str]
    cases: Sequence[dict]
    make_inputs: Callable
    layout: str
    bfloat16_inputs: bool = True
