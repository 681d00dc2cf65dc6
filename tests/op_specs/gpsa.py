"""Test cases for layers/gpsa.py (gated positional self-attention)."""
import torch

from layers.gpsa import gated_positional_attention, gated_positional_attention_reference, relative_offsets_2d
from op_harness import OpSpec


def _inputs(case, dtype):
    b, h, rows, cols, d = case['b'], case['h'], case['rows'], case['cols'], case['d']
    n = rows * cols
    q, k, v = (torch.randn(b, h, n, d, dtype=dtype) for _ in range(3))
    pos_proj = torch.randn(h, 3, dtype=dtype) * 0.3
    pos_logits = (relative_offsets_2d(rows, cols, dtype=dtype) @ pos_proj.T).permute(2, 0, 1).contiguous()
    gate = torch.randn(h, dtype=dtype)
    return [q, k, v, pos_logits, gate], dict(scale=d ** -0.5)


SPECS = [
    OpSpec(
        name='gated_positional_attention', op=gated_positional_attention,
        reference=gated_positional_attention_reference, fast_impls=['sdpa'],
        cases=[
            dict(b=2, h=4, rows=14, cols=14, d=48),
            dict(b=1, h=1, rows=1, cols=1, d=8),
            dict(b=2, h=3, rows=5, cols=7, d=16),  # non-square grid
            dict(b=1, h=9, rows=4, cols=4, d=12),
        ],
        make_inputs=_inputs, layout='tokens',
    ),
]
