"""Benchmark cases for layers/rep_conv.py: multi-branch re-parameterizable convolution."""
from typing import List

import torch

from layers import rep_conv2d
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """FMViT's gMLP projections (1x1, groups 1/2/4) and local mixers (3x3 + 1x1 grouped + identity) at its stage
    shapes (224 input), eval mode (BatchNorm folded into each branch): the branches one by one vs merged into one
    convolution. An identity branch is a depthwise 1x1 branch."""
    cases = []
    shapes = (
        ('gMLP fc1', 64, 256, 56, ((1, 1), (1, 2), (1, 4)), False),
        ('gMLP fc1', 128, 512, 28, ((1, 1), (1, 2), (1, 4)), False),
        ('gMLP fc2', 1024, 256, 14, ((1, 1), (1, 2), (1, 4)), False),
        ('mixer 3x3', 128, 128, 28, ((3, 4), (1, 4)), True),
        ('mixer 3x3', 256, 256, 14, ((3, 8), (1, 8)), True),
    )
    for label, cin, cout, size, branches, identity in shapes:
        x = torch.randn(batch_size, cin, size, size)
        weights = [torch.randn(cout, cin // g, k, k) / (cin // g * k * k) ** 0.5 for k, g in branches]
        groups = [g for _, g in branches]
        if identity:
            weights.append(torch.randn(cout, 1, 1, 1))
            groups.append(cout)
        biases = [torch.randn(cout) for _ in weights]
        cases.append(OpCase(f'rep_conv2d ({label})', f'B{batch_size} {cin}->{cout} {size}x{size} {branches}',
                            impls=['reference', 'merged'],
                            run=lambda impl, x=x, w=weights, b=biases, g=groups: rep_conv2d(x, w, b, g, impl=impl)))
        n = len(weights)
        cases.append(fwd_bwd_case(
            f'rep_conv2d ({label})', cases[-1].shape, ['reference', 'merged'],
            lambda impl, x, *t, n=n, g=groups: rep_conv2d(x, list(t[:n]), list(t[n:]), g, impl=impl),
            (x, *weights, *biases)))
    return cases
