"""Benchmark cases for layers/deform_conv.py: deformable convolution."""
import math
from typing import List

import torch

from layers import deform_conv2d
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """LITv2-S deformable token merging (k 2, stride 2) at 224 input: maps 56, 28, 14; plus DCN 3x3 on 28x28."""
    cases = []
    gen = torch.Generator().manual_seed(0)
    for c_in, size, k, s, p in ((96, 56, 2, 2, 0), (192, 28, 2, 2, 0), (384, 14, 2, 2, 0), (64, 28, 3, 1, 1)):
        c_out = 2 * c_in if s == 2 else c_in
        x = torch.randn(batch_size, c_in, size, size, generator=gen)
        out = (size + 2 * p - k) // s + 1
        offset = 3 * torch.randn(batch_size, 2 * k * k, out, out, generator=gen)
        weight = torch.randn(c_out, c_in, k, k, generator=gen) / math.sqrt(c_in * k * k)
        bias = torch.randn(c_out, generator=gen)
        cases.append(OpCase(
            'deform_conv2d', f'B{batch_size} C{c_in}->{c_out} {size}x{size} k{k} s{s} p{p}',
            impls=['reference', 'torchvision'],
            run=lambda impl, x=x, o=offset, w=weight, b=bias, s=s, p=p: deform_conv2d(x, o, w, b, s, p, impl=impl)))
        cases.append(fwd_bwd_case(
            'deform_conv2d', cases[-1].shape, ['reference', 'torchvision'],
            lambda impl, x, o, w, b, s=s, p=p: deform_conv2d(x, o, w, b, s, p, impl=impl), (x, offset, weight, bias)))
    return cases
