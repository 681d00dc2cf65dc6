"""Benchmark cases for layers/ls_conv.py: small-kernel aggregation."""
from typing import List

import torch

from layers import ska
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """SKA at LSNet-T/S/B stage shapes (224 input: 28x28, 14x14, 7x7)."""
    cases = []
    for dim, size in ((64, 28), (128, 28), (128, 14), (256, 14), (256, 7), (384, 7)):
        x = torch.randn(batch_size, dim, size, size)
        w = torch.randn(batch_size, dim // 8, 9, size, size)
        cases.append(OpCase('ska', f'B{batch_size} C{dim} {size}x{size} k3', impls=['reference', 'shift'],
                            run=lambda impl, x=x, w=w: ska(x, w, impl=impl)))
        cases.append(fwd_bwd_case('ska', cases[-1].shape, ['reference', 'shift'],
                                  lambda impl, x, w: ska(x, w, impl=impl), (x, w)))
    return cases
