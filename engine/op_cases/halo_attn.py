"""Benchmark cases for layers/halo_attn.py: halo attention."""
from typing import List

import torch

from layers import HaloAttention
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """HaloNet-26t's halo layers (blocks of 8, halo 2, 8 heads): its three at 256 input (stage 3, the strided first
    block of stage 4, stage 4 on one block) and its stage-3 layer at 512 input."""
    cases = []
    for dim, size, stride in ((256, 16, 1), (512, 16, 2), (512, 8, 1), (256, 32, 1)):
        layer = HaloAttention(dim, num_heads=8, block_size=8, halo_size=2, stride=stride).eval()
        x = torch.randn(batch_size, dim, size, size)

        def run(impl, layer=layer, x=x):
            layer.kernel_impl = impl
            return layer(x)
        cases.append(OpCase('halo_attention', f'B{batch_size} C{dim} {size}x{size} b8 h2 s{stride}',
                            impls=['reference', 'matmul', 'sdpa', 'onehot'], run=run))
        if size == 16:  # the 256-input training shapes
            cases.append(fwd_bwd_case('halo_attention', cases[-1].shape, ['reference', 'matmul', 'sdpa', 'onehot'],
                                      lambda impl, x, run=run: run(impl, x=x), (x,), layer))
    return cases
