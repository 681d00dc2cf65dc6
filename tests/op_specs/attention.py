"""Test cases for layers/attention.py: softmax attention, with 2-D RoPE (MALA) and against fewer, pooled keys
(FMViT's multi-rate core)."""
import torch

from layers.attention import softmax_attention, softmax_attention_reference
from layers.linear_attn import rope_2d
from op_harness import OpSpec


def _inputs(case, dtype):
    b, h, rows, cols, d = case['b'], case['h'], case['rows'], case['cols'], case['d']
    n, m = rows * cols, case.get('keys', rows * cols)
    if case.get('layout') == 'strided':  # views into one qkv tensor, as the model produces them
        qkv = torch.randn(b, 3, h, d, n, dtype=dtype).permute(1, 0, 2, 4, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]
    else:
        q = torch.randn(b, h, n, d, dtype=dtype)
        k, v = torch.randn(b, h, m, d, dtype=dtype), torch.randn(b, h, m, d, dtype=dtype)
    rope = rope_2d(rows, cols, d, dtype=dtype) if case.get('rope', True) else None
    return [q, k, v], dict(scale=d ** -0.5, rope=rope)


SPECS = [
    OpSpec(
        name='softmax_attention', op=softmax_attention, reference=softmax_attention_reference, fast_impls=['sdpa'],
        cases=[
            dict(b=2, h=2, rows=7, cols=9, d=16),
            dict(b=1, h=1, rows=1, cols=1, d=8),  # a single token
            dict(b=2, h=3, rows=5, cols=4, d=12, layout='strided'),
            dict(b=1, h=2, rows=6, cols=6, d=8, rope=False),
            dict(b=2, h=2, rows=8, cols=8, d=8, keys=4, rope=False),  # keys pooled at rate 4
        ],
        make_inputs=_inputs, layout='tokens',
    ),
]
