"""Benchmark cases for layers/large_kernel_conv.py: dilated depthwise convolution and LKA."""
from typing import List

import torch

from layers import LargeKernelAttention, dilated_dwconv2d
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """`dilated_dwconv2d` and LKA at VAN-B0/B1 stage shapes (224 input)."""
    cases = []
    for dim, size in ((32, 56), (64, 56), (128, 28), (160, 14), (320, 14), (256, 7)):
        x = torch.randn(batch_size, dim, size, size)
        weight, bias = torch.randn(dim, 1, 7, 7) / 7, torch.randn(dim)
        shape = f'B{batch_size} C{dim} {size}x{size} k7 d3'
        cases.append(OpCase(
            'dilated_dwconv2d', shape, impls=['reference', 'subgrid'],
            run=lambda impl, x=x, w=weight, b=bias: dilated_dwconv2d(x, w, b, 3, impl=impl)))
        lka = LargeKernelAttention(dim).eval()

        def run_lka(impl, lka=lka, x=x):
            lka.kernel_impl = impl
            return lka(x)
        cases.append(OpCase('large_kernel_attention', shape, impls=['reference', 'subgrid'], run=run_lka))
        cases.append(fwd_bwd_case('large_kernel_attention', shape, ['reference', 'subgrid'],
                                  lambda impl, x, run=run_lka: run(impl, x=x), (x,), lka))
    return cases
