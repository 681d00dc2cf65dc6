"""Test cases for layers/large_kernel_conv.py."""
import torch

from layers.large_kernel_conv import dilated_dwconv2d, dilated_dwconv2d_reference
from op_harness import OpSpec


def _dwconv_inputs(case, dtype):
    b, c, h, w, k = case['b'], case['c'], case['h'], case['w'], case['k']
    x = torch.randn(b, c, h, w, dtype=dtype)
    if case.get('layout') == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    elif case.get('layout') == 'strided':
        x = torch.randn(b, c, h, w * 2, dtype=dtype)[..., ::2]  # non-contiguous view
    weight = torch.randn(c, 1, k, k, dtype=dtype) / k
    bias = torch.randn(c, dtype=dtype) if case.get('bias', True) else None
    tensors = [x, weight] + ([bias] if bias is not None else [])
    return tensors, dict(dilation=case['d'])


def _dwconv_call(fn):
    def call(x, weight, bias=None, **kwargs):
        return fn(x, weight, bias, **kwargs)
    return call


SPECS = [
    OpSpec(
        name='dilated_dwconv2d',
        op=_dwconv_call(dilated_dwconv2d),
        reference=_dwconv_call(dilated_dwconv2d_reference),
        fast_impls=['subgrid'],
        cases=[
            dict(b=2, c=8, h=21, w=21, k=7, d=3),  # divisible by the dilation
            dict(b=1, c=5, h=13, w=11, k=7, d=3),  # batch 1, odd, not divisible
            dict(b=2, c=4, h=14, w=9, k=5, d=2, bias=False),
            dict(b=1, c=3, h=4, w=5, k=7, d=3),  # map smaller than the kernel's reach
            dict(b=2, c=6, h=17, w=10, k=3, d=4, layout='channels_last'),
            dict(b=2, c=6, h=12, w=15, k=7, d=3, layout='strided'),
        ],
        make_inputs=_dwconv_inputs, layout='nchw',
    ),
]
