"""Test cases for layers/rep_conv.py (multi-branch re-parameterizable convolution, eval form)."""
import torch

from layers.rep_conv import rep_conv2d, rep_conv2d_reference
from op_harness import OpSpec


def _split(tensors, branches):
    n = len(branches)
    return tensors[0], list(tensors[1:n + 1]), list(tensors[n + 1:])


def _op(*tensors, branches, stride, impl=None):
    x, weights, biases = _split(tensors, branches)
    return rep_conv2d(x, weights, biases, [g for _, g in branches], stride, impl=impl)


def _reference(*tensors, branches, stride):
    x, weights, biases = _split(tensors, branches)
    return rep_conv2d_reference(x, weights, biases, [g for _, g in branches], stride)


def _inputs(case, dtype):
    b, cin, cout, h, w, branches = case['b'], case['cin'], case['cout'], case['h'], case['w'], case['branches']
    x = torch.randn(b, cin, h, w, dtype=dtype)
    if case.get('layout') == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    weights = [torch.randn(cout, cin // g, k, k, dtype=dtype) for k, g in branches]
    biases = [torch.randn(cout, dtype=dtype) for _ in branches]
    return [x, *weights, *biases], dict(branches=branches, stride=case.get('stride', 1))


SPECS = [
    OpSpec(
        name='rep_conv2d', op=_op, reference=_reference, fast_impls=['merged'],
        cases=[
            dict(b=2, cin=16, cout=24, h=7, w=7, branches=((1, 1), (1, 2), (1, 4))),  # gMLP projections
            dict(b=1, cin=8, cout=8, h=5, w=6, branches=((3, 2), (1, 2), (1, 8))),  # mixer: 3x3 + 1x1 + identity
            dict(b=2, cin=12, cout=6, h=9, w=4, branches=((5, 3), (3, 1), (1, 6)), stride=2),  # mixed sizes, stride
            dict(b=1, cin=4, cout=4, h=1, w=1, branches=((3, 1), (1, 4))),  # a single pixel: only centre taps
            dict(b=2, cin=8, cout=16, h=6, w=6, branches=((3, 4), (1, 2)), layout='channels_last'),
        ],
        make_inputs=_inputs, layout='nchw',
    ),
]
