"""Test cases for layers/linear_attn.py: linear-time MALA and plain linear attention with 2-D RoPE."""
import torch

from layers.linear_attn import linear_attention, linear_attention_reference, rope_2d
from op_harness import OpSpec


def _inputs(case, dtype):
    b, h, rows, cols, d = case['b'], case['h'], case['rows'], case['cols'], case['d']
    n = rows * cols
    if case.get('layout') == 'strided':  # views into one qkv tensor, as the model produces them
        qkv = torch.randn(b, 3, h, d, n, dtype=dtype).permute(1, 0, 2, 4, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]
    else:
        q, k, v = (torch.randn(b, h, n, d, dtype=dtype) for _ in range(3))
    rope = rope_2d(rows, cols, d, dtype=dtype) if case.get('rope', True) else None
    kwargs = dict(scale=d ** -0.5, rope=rope)
    if 'magnitude_aware' in case:
        kwargs['magnitude_aware'] = case['magnitude_aware']
    return [q, k, v], kwargs


_CASES = [
    dict(b=2, h=2, rows=7, cols=9, d=16),
    dict(b=1, h=1, rows=1, cols=1, d=8),  # a single token
    dict(b=2, h=3, rows=5, cols=4, d=12, layout='strided'),
    dict(b=1, h=2, rows=6, cols=6, d=8, rope=False),
]

SPECS = [
    OpSpec(name='linear_attention_mala', op=linear_attention, reference=linear_attention_reference,
           fast_impls=['linear'], cases=[dict(c, magnitude_aware=True) for c in _CASES], make_inputs=_inputs,
           layout='tokens'),
    OpSpec(name='linear_attention_plain', op=linear_attention, reference=linear_attention_reference,
           fast_impls=['linear'], cases=[dict(c, magnitude_aware=False) for c in _CASES], make_inputs=_inputs,
           layout='tokens'),
]
