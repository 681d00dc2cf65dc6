"""Test cases for layers/token_prune.py (attention with the class-attention pruning score)."""
import torch

from layers.token_prune import attention_with_cls_score, attention_with_cls_score_reference
from op_harness import OpSpec


def _inputs(case, dtype):
    b, h, n, d = case['b'], case['h'], case['n'], case['d']
    q, k, v = (torch.randn(b, h, n, d, dtype=dtype) for _ in range(3))
    if case.get('layout') == 'strided':  # q, k, v as views into one qkv tensor, as a model produces them
        qkv = torch.randn(b, n, 3, h, d, dtype=dtype).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
    key_mask = None
    if case.get('padded'):
        counts = torch.randint(1, n + 1, (b,), generator=torch.Generator().manual_seed(n))
        key_mask = torch.arange(n)[None, :] < counts[:, None]
        key_mask[:, 0] = True
    return [q, k, v], dict(scale=d ** -0.5, key_mask=key_mask)


def _call(fn):
    def call(q, k, v, scale, key_mask=None, impl=None):
        out, score = (fn(q, k, v, scale, key_mask) if impl is None else fn(q, k, v, scale, key_mask, impl=impl))
        finite = torch.isfinite(score)
        # -inf marks padding: compare finite scores, and the mask itself through the output
        return torch.cat([out.flatten(), torch.where(finite, score, torch.zeros_like(score)).flatten(),
                          finite.to(out.dtype).flatten()])
    return call


SPECS = [
    OpSpec(
        name='attention_with_cls_score',
        op=_call(attention_with_cls_score),
        reference=_call(attention_with_cls_score_reference),
        fast_impls=['sdpa'],
        cases=[
            dict(b=2, h=3, n=197, d=64),
            dict(b=1, h=2, n=5, d=8),
            dict(b=3, h=4, n=29, d=16, padded=True),
            dict(b=2, h=6, n=68, d=64, layout='strided'),
            dict(b=1, h=1, n=1, d=4),  # only the class token left
        ],
        make_inputs=_inputs, layout='tokens',
    ),
]
