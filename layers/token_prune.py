"""Adaptive token pruning driven by head-importance-weighted class attention (AS-ViT).

Layout: attention cores take q, k, v as (B, heads, N, d), token 0 being the class token; scores are (B, N - 1)
over the patch tokens.

Operator `attention_with_cls_score(q, k, v, scale, key_mask=None, policy=None)` returns the attention output
O = softmax(q k^T * scale) v, (B, heads, N, d), and the pruning score of every patch token j:
    w[h, j] = ||O[h, j]|| / (sum_h' ||O[h', j]|| + 1e-8)          (token-level head importance)
    s[j]    = sum_h A[h, 0, j] * w[h, j]                         (class attention weighted by it)
Masks:
- `key_mask` (B, N) bool: keys that exist (False for padding in a batch of images that kept different token
  counts). Masked keys get zero attention; the scores of masked tokens are -inf, so they are never kept.
- `policy` (B, N) float in [0, 1]: AS-ViT's training-time soft keep decisions. The softmax is then the official
  `exp(a - max) * p' ` renormalised with an eps of 1e-6 (`(e + eps / N) / (sum e + eps)`), where p' is the policy
  with each query's own key always visible; computed in float32 (float64 inputs stay float64).

Implementations:
- `reference`: the explicit N x N attention matrix.
- `sdpa`: `scaled_dot_product_attention` for O (fused, never stores the N x N matrix) and one extra row of
  attention for the class query; the score needs only that row. Not for `policy` (the eps-smoothed softmax has
  no fused form).

Token selection (plain functions, no alternative kernels):
- `select_tokens_per_image`: each image keeps its patch tokens with s > threshold, in their original order;
  images keeping fewer tokens are padded to the batch maximum and the padding is masked (key_mask), so an
  image's result never depends on the rest of its batch.
- `select_tokens_batch_topk`: the official batched rule: k = floor(#(s > threshold over the batch) / B), every
  image keeps its top-k tokens by score, re-ordered by score.
- `straight_through_keep(s, threshold, tau)`: training decision hard(sigmoid((s - thr) / tau)) with the
  gradient of the sigmoid.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import sdpa_backward_not_preferred
from .config import ImplTable, resolve_impl

__all__ = [
    'AdaptiveThreshold', 'attention_with_cls_score', 'attention_with_cls_score_reference',
    'attention_with_cls_score_sdpa', 'gather_tokens', 'select_tokens_batch_topk', 'select_tokens_per_image',
    'straight_through_keep',
]


def _cls_score(cls_row: torch.Tensor, out: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """cls_row: (B, H, N) attention of the class query; out: (B, H, N, d) attention output."""
    importance = out[:, :, 1:].norm(dim=-1)
    importance = importance / (importance.sum(dim=1, keepdim=True) + 1e-8)
    score = (cls_row[:, :, 1:] * importance).sum(dim=1)
    if key_mask is not None:
        score = score.masked_fill(~key_mask[:, 1:], float('-inf'))
    return score


def _policy_softmax(logits: torch.Tensor, policy: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """AS-ViT's masked softmax: keys weighted by the policy (a query always sees itself), eps-smoothed."""
    N = logits.shape[-1]
    eye = torch.eye(N, dtype=policy.dtype, device=policy.device)
    keep = policy[:, None, None, :]
    keep = keep + (1.0 - keep) * eye
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    weights = (logits - logits.amax(dim=-1, keepdim=True)).to(compute_dtype).exp() * keep.to(compute_dtype)
    weights = (weights + eps / N) / (weights.sum(dim=-1, keepdim=True) + eps)
    return weights.to(logits.dtype)


def attention_with_cls_score_reference(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        key_mask: Optional[torch.Tensor] = None,
        policy: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Explicit attention; returns (out (B, H, N, d), score (B, N - 1)). See the module docstring."""
    logits = (q @ k.transpose(-2, -1)) * scale
    if policy is not None:
        attn = _policy_softmax(logits, policy)
    else:
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, None, :], float('-inf'))
        attn = logits.softmax(dim=-1)
    out = attn @ v
    return out, _cls_score(attn[:, :, 0], out, key_mask)


def _can_use_sdpa(q, k, v, scale, key_mask=None, policy=None) -> Optional[str]:
    if policy is not None:
        return 'training policies use the eps-smoothed softmax, which has no fused form'
    return sdpa_backward_not_preferred(q, k, v)


def attention_with_cls_score_sdpa(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        key_mask: Optional[torch.Tensor] = None,
        policy: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fused attention for the output plus the class query's attention row for the score."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    cls_logits = (q[:, :, :1] @ k.transpose(-2, -1)) * scale
    if mask is not None:
        cls_logits = cls_logits.masked_fill(~mask, float('-inf'))
    return out, _cls_score(cls_logits.softmax(dim=-1)[:, :, 0], out, key_mask)


_IMPLS: ImplTable = {
    'sdpa': (attention_with_cls_score_sdpa, _can_use_sdpa),
    'reference': (attention_with_cls_score_reference, None),
}


def attention_with_cls_score(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        key_mask: Optional[torch.Tensor] = None,
        policy: Optional[torch.Tensor] = None,
        impl: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention output and head-importance-weighted class-attention score; `impl` selects the kernel."""
    fn = resolve_impl('attention_with_cls_score', _IMPLS, impl, q, k, v, scale, key_mask, policy)
    return fn(q, k, v, scale, key_mask, policy)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: (B, N, ...) gathered along N with index (B, K) -> (B, K, ...)."""
    return x.gather(1, index.reshape(*index.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:]))


def select_tokens_per_image(score: torch.Tensor, threshold: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per image, the patch tokens with score > threshold in original order, padded to the batch maximum.

    Returns:
        index (B, K) into the patch tokens (padding repeats index 0) and valid (B, K) bool.
    """
    keep = score > threshold
    counts = keep.sum(dim=1)
    # a stable sort of "dropped?" puts the kept tokens first, in their original order
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
    max_kept = int(counts.max())  # NOTE: data-dependent size; eval-only path (torch.compile breaks the graph here)
    index = order[:, :max_kept]
    valid = torch.arange(max_kept, device=score.device)[None, :] < counts[:, None]
    return index.masked_fill(~valid, 0), valid


def select_tokens_batch_topk(score: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """The official batched rule: every image keeps its top-k by score, k = floor(#(s > thr in batch) / B)."""
    k = int((score > threshold).sum()) // score.shape[0]
    return torch.argsort(score, dim=1, descending=True)[:, :k]


def straight_through_keep(score: torch.Tensor, threshold: torch.Tensor, tau: float = 1e-4) -> torch.Tensor:
    """Hard keep decision (1/0) in the forward pass, the sigmoid's gradient in the backward pass."""
    soft = torch.sigmoid((score - threshold) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard - soft.detach() + soft


class AdaptiveThreshold(nn.Module):
    """A learnable scalar keep threshold for one pruning stage (0-dim parameter, as in the official code)."""

    def __init__(self, init: float):
        super().__init__()
        self.keep_threshold = nn.Parameter(torch.tensor(float(init)))

    def forward(self, score: torch.Tensor) -> torch.Tensor:
        return straight_through_keep(score, self.keep_threshold)
