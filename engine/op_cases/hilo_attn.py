"""Benchmark cases for layers/hilo_attn.py: HiLo attention."""
from typing import List

import torch

from layers import HiLoAttention
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """LITv2 stage 3 (HiLo, ws 2, alpha 0.9) and stage 4 (ws 1: global attention) at 224 and 384 input."""
    cases = []
    for name, dim, heads, size, ws in (('S', 384, 12, 14, 2), ('S', 768, 24, 7, 1), ('B', 512, 16, 14, 2),
                                       ('B', 1024, 32, 7, 1), ('B', 512, 16, 24, 2), ('B', 1024, 32, 12, 1),
                                       ('S', 384, 12, 15, 2)):
        layer = HiLoAttention(dim, heads, ws, alpha=0.9).eval()
        x = torch.randn(batch_size, size, size, dim)

        def run(impl, layer=layer, x=x):
            layer.kernel_impl = impl
            return layer(x)
        cases.append(OpCase('hilo_attention', f'LITv2-{name} B{batch_size} {size}x{size} C{dim} h{heads} ws{ws} '
                             f'(hi{layer.h_heads}/lo{layer.l_heads})', impls=['reference', 'sdpa'], run=run))
        if size in (14, 7):  # training runs at 224
            cases.append(fwd_bwd_case('hilo_attention', cases[-1].shape, ['reference', 'sdpa'],
                                      lambda impl, x, run=run: run(impl, x=x), (x,), layer))
    return cases
