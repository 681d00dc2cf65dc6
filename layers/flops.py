"""fvcore FLOP (MAC) counting with handles for the ops fvcore skips or miscounts.

fvcore reports multiply-accumulates and calls them flops; so do we here (`macs`), and benchmark.py prints
GFLOPs = 2 x GMACs beside them. Count under `layers.kernel_impl('flops')` (the reference kernels, or the
linear-time form for linear attention, whose reference is the quadratic definition): they are
traceable and their einsum/matmul/conv nodes count exactly the useful work, while fused or sparse paths
either hide in one node or do not trace at all.

`FLOP_HANDLES` maps a traced op name to a handle `(inputs, outputs) -> macs`; an operator registered as a
custom op (`zoo::<name>`) adds its handle here. `fvcore_handles()` hands them to a user's own fvcore analysis:
`FlopCountAnalysis(model, x).set_op_handle(**fvcore_handles()).total()` equals benchmark.py's count, because a plain
jit trace (fvcore's) runs the 'flops' kernels whatever the process-wide setting (layers.config).
"""
import warnings
from collections import Counter
from math import prod
from typing import Callable, Dict, Tuple

import torch

with warnings.catch_warnings():
    warnings.simplefilter('ignore', FutureWarning)  # fvcore.nn scripts a loss at import; torch deprecates jit
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

__all__ = ['FLOP_HANDLES', 'flop_count', 'fvcore_handles', 'sdpa_flop_jit']


def sdpa_flop_jit(inputs, outputs) -> int:
    """scaled_dot_product_attention: Q K^T and A V, i.e. batch * L * S * (E + Ev) MACs (masks not discounted)."""
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    return prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


FLOP_HANDLES: Dict[str, Callable] = {
    'aten::scaled_dot_product_attention': sdpa_flop_jit,
}


def fvcore_handles() -> Dict[str, Callable]:
    """fvcore op handles for the ops it skips (SDPA) or that are ours: `{op_name: handle}`, to pass as
    `FlopCountAnalysis(model, inputs).set_op_handle(**fvcore_handles())`."""
    return dict(FLOP_HANDLES)


def flop_count(model: torch.nn.Module, inputs) -> Tuple[int, Dict[str, int], Dict[str, int]]:
    """Count MACs of `model(*inputs)` with fvcore and our handles.

    Returns:
        (total MACs, MACs per op type, unsupported op -> occurrences). Unsupported ops are the ones fvcore's
        convention leaves out (elementwise, norms, softmax); an attention-like op showing up there is a bug.
    """
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    analysis = FlopCountAnalysis(model, inputs).set_op_handle(**fvcore_handles())
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings('none')
    total = int(analysis.total())
    by_op = {k: int(v) for k, v in analysis.by_operator().items()}
    return total, by_op, dict(Counter(analysis.unsupported_ops()))
