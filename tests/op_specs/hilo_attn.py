"""Test cases for layers/hilo_attn.py: HiLo attention, incl. maps not divisible by the window and single branches."""
import torch

from layers.hilo_attn import hilo_attention, hilo_attention_reference
from op_harness import OpSpec


def _inputs(case, dtype):
    b, h, w, c, d, ws = case['b'], case['h'], case['w'], case['c'], case['d'], case['ws']
    hi, lo, bias = case['hi'] * d, case['lo'] * d, case.get('qkv_bias', True)
    if case.get('layout') == 'strided':  # an NCHW map viewed as NHWC, as token merging hands it over
        x = torch.randn(b, c, h, w, dtype=dtype).permute(0, 2, 3, 1)
    else:
        x = torch.randn(b, h, w, c, dtype=dtype)
    tensors = [x]

    def linear(n_out, n_in, with_bias=True):
        tensors.append(torch.randn(n_out, n_in, dtype=dtype) / n_in ** 0.5)
        if with_bias:
            tensors.append(0.1 * torch.randn(n_out, dtype=dtype))

    if hi:
        linear(3 * hi, c, bias)
        linear(hi, hi)
    if lo:
        linear(lo, c, bias)
        linear(2 * lo, c, bias)
        linear(lo, lo)
    return tensors, dict(hi=bool(hi), lo=bool(lo), qkv_bias=bias, head_dim=d, window_size=ws)


def _call(fn):
    """Unpack the flat tensor list into the operator's (x, hifi, lofi) arguments."""
    def call(x, *params, hi, lo, qkv_bias, head_dim, window_size, **kwargs):
        params = list(params)

        def take(with_bias):
            return params.pop(0), (params.pop(0) if with_bias else None)
        hifi = (*take(qkv_bias), *take(True)) if hi else None
        lofi = (*take(qkv_bias), *take(qkv_bias), *take(True)) if lo else None
        return fn(x, hifi, lofi, head_dim, window_size, **kwargs)
    return call


SPECS = [
    OpSpec(
        name='hilo_attention', op=_call(hilo_attention), reference=_call(hilo_attention_reference),
        fast_impls=['sdpa'],
        cases=[
            dict(b=2, h=6, w=6, c=32, d=8, ws=2, hi=1, lo=3),  # divisible, LITv2's stage-3 split
            dict(b=1, h=3, w=5, c=8, d=4, ws=2, hi=1, lo=1),  # not divisible: padded windows and pooling
            dict(b=2, h=7, w=5, c=24, d=6, ws=3, hi=2, lo=2, qkv_bias=False),
            dict(b=1, h=5, w=6, c=16, d=8, ws=2, hi=2, lo=0),  # alpha 0: windows only
            dict(b=2, h=4, w=3, c=16, d=4, ws=1, hi=0, lo=4),  # window 1: plain global attention
            dict(b=1, h=5, w=5, c=16, d=8, ws=2, hi=0, lo=2),  # alpha 1: pooled keys/values only
            dict(b=2, h=6, w=4, c=16, d=8, ws=2, hi=1, lo=1, layout='strided'),
        ],
        make_inputs=_inputs, layout='tokens',
    ),
]
