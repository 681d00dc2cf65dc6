"""Benchmark cases for layers/dynamic_conv.py: ContMix."""
from typing import List

import torch

from layers import ContMix
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """ContMix at OverLoCK-XT's Focus-Net shapes at 224 (dim 256 at 14x14 with K 13, dim 336 at 7x7 with K 7)."""
    cases = []
    for dim, ctx_dim, size, kernel, heads in ((256, 84, 14, 13, 4), (336, 84, 7, 7, 6)):
        layer = ContMix(dim, ctx_dim, kernel, 5, heads).eval()
        with torch.no_grad():
            layer.rpb1.normal_(0, .02)
            layer.rpb2.normal_(0, .02)
        feat, ctx, value = torch.randn(batch_size, dim, size, size), torch.randn(batch_size, ctx_dim, size, size), \
            torch.randn(batch_size, dim, size, size)

        def run(impl, layer=layer, f=feat, c=ctx, v=value):
            layer.kernel_impl = impl
            return layer(f, c, v)
        cases.append(OpCase('contmix', f'B{batch_size} C{dim} {size}x{size} k{kernel}+5 G{2 * heads}',
                            impls=['reference', 'blocked'], run=run))
        cases.append(fwd_bwd_case('contmix', cases[-1].shape, ['reference', 'blocked'],
                                  lambda impl, f, c, v, run=run: run(impl, f=f, c=c, v=v), (feat, ctx, value), layer))
    return cases
