"""Bi-level routing attention (BRA, BiFormer): region routing, then token attention over the routed regions.

Layout: the attention core works on region-major tokens, q, k, v of shape (N, P, w2, C): P = S * S regions of a
map cut into an S x S grid (region id j * S + i, j the region row), w2 = rh * rw tokens per region in row-major
order. Heads are contiguous channel chunks (channel = head * head_dim + d). The module works on NHWC maps.

Semantics (the official `ops/bra_legacy.py`, rayleizhu/BiFormer@1697bbb):
1. Region routing: q_r, k_r = mean of q, k over each region's tokens, detached (no gradient flows through the
   routing); logits = (q_r * scale) k_r^T, (N, P, P); idx = torch.topk(logits, topk).indices, (N, P, topk). A
   region is not forced into its own set. Ties go the way torch.topk breaks them: every implementation calls the
   same `region_route` on the same tensors, so all of them select the same regions, bit for bit.
2. Token attention: each query of region r attends to the tokens of its topk regions, softmax((q * scale) K^T) V,
   per head, no mask, no bias. NOTE: scale is qk_dim ** -0.5 with the *whole* qk_dim, not head_dim ** -0.5 (kept
   for checkpoint compatibility; the official refactor keeps it too).
3. Local context enhancement (LCE, "lepe"): a depthwise k x k conv (k = 5) on V laid out as the whole (padded)
   map, so it crosses region borders and zero-pads only at the map border; added to the attention output before
   the output projection.
4. Padding (`auto_pad`): a map whose sides are not multiples of S is zero-padded at the bottom/right *before* the
   qkv projection, so padded tokens carry q = k = v = bias; they enter the region means and act as ordinary
   (unmasked) keys and values, and LCE sees them too. The region grid stays S x S with side ceil(H / S); the
   output is cropped back to H x W. At sizes divisible by S nothing is padded.

Operator `routed_attention(q, k, v, topk, num_heads, scale)` (steps 1-2) implementations:
- `reference`: the official computation: `torch.gather` of K|V from an expanded (N, P, P, w2, C) view, i.e. a
  full copy of the topk routed regions per query region, then matmul, softmax, matmul. Its backward allocates the
  expanded (N, P, P, w2, C) shape (P = 49 times K|V), as the official code does.
- `masked`: no gather at all: one scaled_dot_product_attention over every token of the map with a boolean mask
  that admits exactly the routed regions (masked logits contribute exact zeros). It does P / topk times the
  useful MACs, so it only runs where at least a quarter of the regions are routed (BiFormer stage 3: 16 of 49).
- `sdpa`: regions gathered with `index_select` on the flattened (N * P) region axis (one copy of the routed
  regions, whose backward is a KV-sized index_add), then scaled_dot_product_attention on strided 4-D views (no
  further copies; the fused kernel never materialises the logits).
'auto' tries them in that order. FLOPs are counted on the reference (its matmuls are the useful MACs).
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .config import ImplTable, resolve_impl

__all__ = [
    'BiLevelRoutingAttention', 'region_partition', 'region_reverse', 'region_route', 'routed_attention',
    'routed_attention_masked', 'routed_attention_reference', 'routed_attention_sdpa',
]

# `masked` attends densely to every region; it runs only where topk / P >= 1 / _MASKED_MAX_OVERHEAD.
_MASKED_MAX_OVERHEAD = 4


def _grid(grid: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    return (grid, grid) if isinstance(grid, int) else tuple(grid)


def region_partition(x: torch.Tensor, grid: Union[int, Tuple[int, int]]) -> torch.Tensor:
    """(N, gh * rh, gw * rw, C) NHWC map -> (N, gh * gw, rh * rw, C) region-major tokens (region j * gw + i).

    `grid` is the number of regions per side, (gh, gw) or one int for a square grid.
    """
    N, H, W, C = x.shape
    gh, gw = _grid(grid)
    if H % gh or W % gw:
        raise ValueError(f'region_partition needs a map divisible by the {gh} x {gw} region grid, got {H}x{W}')
    rh, rw = H // gh, W // gw
    x = x.reshape(N, gh, rh, gw, rw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(N, gh * gw, rh * rw, C)


def region_reverse(x: torch.Tensor, grid: Union[int, Tuple[int, int]], height: int, width: int) -> torch.Tensor:
    """Inverse of `region_partition`: (N, gh * gw, rh * rw, C) -> (N, height, width, C) with height = gh * rh."""
    N, P, w2, C = x.shape
    gh, gw = _grid(grid)
    rh, rw = height // gh, width // gw
    if P != gh * gw or rh * gh != height or rw * gw != width or rh * rw != w2:
        raise ValueError(f'region_reverse: {tuple(x.shape)} is not a {gh} x {gw} grid of a {height}x{width} map')
    x = x.reshape(N, gh, gw, rh, rw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(N, height, width, C)


def region_route(q: torch.Tensor, k: torch.Tensor, topk: int, scale: float,
                 region_sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Top-k key regions per query region: (N, P, w2, Cqk) q, k -> (N, P, topk) int64 region indices.

    Region descriptors are the token means of the detached q and k; affinity (q_r * scale) k_r^T; torch.topk.
    `region_sizes` (P,): the count of real tokens per region when the map was zero-padded *after* the projection
    (the official NCHW operator's average pool with count_include_pad=False); None averages over all w2 tokens.
    """
    P = q.shape[1]
    if not 0 < topk <= P:
        raise ValueError(f'topk must be in [1, {P}] for {P} regions, got {topk}')
    if region_sizes is None:
        q_r, k_r = q.detach().mean(dim=2), k.detach().mean(dim=2)
    else:
        q_r, k_r = (t.detach().sum(dim=2) / region_sizes[:, None].to(t.dtype) for t in (q, k))
    logits = (q_r * scale) @ k_r.transpose(-2, -1)
    return torch.topk(logits, k=topk, dim=-1).indices


def _check_and_route(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, num_heads: int, scale: float,
                     route_scale: Optional[float], region_sizes: Optional[torch.Tensor]) -> torch.Tensor:
    """Validate the region-major inputs and return the routed regions, (N, P, topk)."""
    if q.ndim != 4 or k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError('routed_attention expects q, k (N, P, w2, Cqk) and v (N, P, w2, Cv), got '
                         f'{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}')
    if q.shape[-1] % num_heads or v.shape[-1] % num_heads:
        raise ValueError(f'channels ({q.shape[-1]}, {v.shape[-1]}) must be divisible by num_heads={num_heads}')
    return region_route(q, k, topk, scale if route_scale is None else route_scale, region_sizes)


def routed_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, num_heads: int,
                               scale: float, route_scale: Optional[float] = None,
                               region_sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bi-level routing attention core, computed as the official code does (see the module docstring).

    Args:
        q, k: (N, P, w2, Cqk) region-major queries and keys. v: (N, P, w2, Cv).
        topk: routed regions per query region. num_heads: heads (channel chunks). scale: logit scale.
        route_scale: scale of the region affinities (default `scale`; only ties could tell them apart).
        region_sizes: real tokens per region when k and v were zero-padded after the projection (see
            `region_route`); the padded keys stay ordinary keys (logit 0, value 0), as in the official operator.

    Returns:
        (N, P, w2, Cv) attention output, region-major.
    """
    idx = _check_and_route(q, k, v, topk, num_heads, scale, route_scale, region_sizes)
    N, P, w2, cq = q.shape
    cv = v.shape[-1]
    kv = torch.cat([k, v], dim=-1)
    c = cq + cv
    # a full copy of the routed regions for every query region: (N, P, topk, w2, Cqk + Cv)
    kv_sel = torch.gather(kv[:, None].expand(N, P, P, w2, c), 2, idx[:, :, :, None, None].expand(N, P, topk, w2, c))
    k_sel, v_sel = kv_sel.split([cq, cv], dim=-1)
    k_sel = k_sel.reshape(N * P, topk * w2, num_heads, cq // num_heads).permute(0, 2, 3, 1)  # (NP, h, d, k w2)
    v_sel = v_sel.reshape(N * P, topk * w2, num_heads, cv // num_heads).transpose(1, 2)  # (NP, h, k w2, dv)
    q = q.reshape(N * P, w2, num_heads, cq // num_heads).transpose(1, 2)  # (NP, h, w2, d)
    attn = ((q * scale) @ k_sel).softmax(dim=-1)
    out = attn @ v_sel  # (NP, h, w2, dv)
    return out.transpose(1, 2).reshape(N, P, w2, cv)


def _can_use_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, num_heads: int,
                    scale: float, route_scale: Optional[float] = None,
                    region_sizes: Optional[torch.Tensor] = None) -> Optional[str]:
    P = q.shape[1]
    if topk * _MASKED_MAX_OVERHEAD < P:
        return (f'routing is too sparse for dense masked attention (topk {topk} of {P} regions would cost '
                f'{P / topk:.1f}x the MACs; runs from topk >= P / {_MASKED_MAX_OVERHEAD})')
    return None


def routed_attention_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, num_heads: int,
                            scale: float, route_scale: Optional[float] = None,
                            region_sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Same result as the reference: dense attention over all P * w2 tokens, masked to the routed regions."""
    idx = _check_and_route(q, k, v, topk, num_heads, scale, route_scale, region_sizes)
    N, P, w2, cq = q.shape
    cv = v.shape[-1]
    # a one-hot comparison rather than scatter_: the TorchScript-based ONNX exporter and fvcore trace it exactly
    routed = (idx[..., None] == torch.arange(P, device=q.device)).any(dim=2)  # (N, P, P)
    mask = routed[:, None, :, None, :, None].expand(N, 1, P, w2, P, w2).reshape(N, 1, P * w2, P * w2)
    q, k, v = (t.reshape(N, P * w2, num_heads, t.shape[-1] // num_heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (N, h, P w2, dv)
    return out.transpose(1, 2).reshape(N, P, w2, cv)


def routed_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, num_heads: int,
                          scale: float, route_scale: Optional[float] = None,
                          region_sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Same result as the reference: index_select of the routed regions, then fused attention per region."""
    idx = _check_and_route(q, k, v, topk, num_heads, scale, route_scale, region_sizes)
    N, P, w2, cq = q.shape
    cv = v.shape[-1]
    flat_idx = (idx + torch.arange(N, device=idx.device)[:, None, None] * P).reshape(-1)
    # 4-D (batch, heads, tokens, d) strided views: the CPU/GPU fused kernels take them without a copy
    k_sel = k.reshape(N * P, w2, cq).index_select(0, flat_idx).view(N * P, topk * w2, num_heads, cq // num_heads)
    v_sel = v.reshape(N * P, w2, cv).index_select(0, flat_idx).view(N * P, topk * w2, num_heads, cv // num_heads)
    q = q.reshape(N * P, w2, num_heads, cq // num_heads)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k_sel.transpose(1, 2), v_sel.transpose(1, 2), scale=scale)
    return out.transpose(1, 2).reshape(N, P, w2, cv)


_IMPLS: ImplTable = {
    'masked': (routed_attention_masked, _can_use_masked),
    'sdpa': (routed_attention_sdpa, None),
    'reference': (routed_attention_reference, None),
}


def routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, num_heads: int, scale: float,
                     impl: Optional[str] = None, route_scale: Optional[float] = None,
                     region_sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bi-level routing attention core on region-major q, k, v (see the module docstring); `impl` selects it."""
    fn = resolve_impl('routed_attention', _IMPLS, impl, q, k, v, topk, num_heads, scale)
    return fn(q, k, v, topk, num_heads, scale, route_scale=route_scale, region_sizes=region_sizes)


def pad_to_regions(x: torch.Tensor, n_win: int) -> Tuple[torch.Tensor, int, int]:
    """Zero-pad an NHWC map at the bottom/right to multiples of n_win; returns (x, pad_bottom, pad_right)."""
    _, H, W, _ = x.shape
    pad_b, pad_r = -H % n_win, -W % n_win
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x, pad_b, pad_r


class BiLevelRoutingAttention(nn.Module):
    """BiFormer's bi-level routing attention on NHWC maps, with the official parameter layout.

    Two official forms, which differ only on maps not divisible by the region grid (and in the routing scale, which
    only matters for ties):
    - 'legacy' (ops/bra_legacy.py, every released model but STL-nchw): an S x S region grid; with `auto_pad`, the
      *input* is zero-padded to multiples of S before the qkv projection (padded tokens carry the bias and count in
      the region means); routing affinities are scaled by `qk_scale`.
    - 'nchw' (ops/bra_nchw.py, BiFormer-STL-nchw): regions of floor(H / S) x floor(W / S) tokens, so a map that is
      not divisible gets more than S regions per side; q, k, v are zero-padded *after* the projection, region means
      count real tokens only, padded keys stay (logit 0, value 0); routing affinities are unscaled.

    Args:
        dim: channels (also the value width).
        num_heads: heads.
        n_win: regions per side, S.
        topk: routed regions per query region.
        qk_dim: query/key width (default dim).
        qk_scale: logit scale (default qk_dim ** -0.5; see the NOTE in the module docstring).
        side_dwconv: kernel of the LCE depthwise conv on V (0 disables it).
        auto_pad: 'legacy' only: zero-pad maps not divisible by n_win (the official detection/segmentation
            behaviour); when False, such maps raise a ValueError (the official classification models assert instead).
        mode: 'legacy' or 'nchw' (above).
        kernel_impl: implementation of the attention core (None: process-wide setting, see layers.config).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            n_win: int = 7,
            topk: int = 4,
            qk_dim: Optional[int] = None,
            qk_scale: Optional[float] = None,
            side_dwconv: int = 5,
            auto_pad: bool = True,
            mode: str = 'legacy',
            kernel_impl: Optional[str] = None,
    ):
        super().__init__()
        if mode not in ('legacy', 'nchw'):
            raise ValueError(f"mode must be 'legacy' or 'nchw', got {mode!r}")
        self.dim = dim
        self.qk_dim = qk_dim or dim
        if self.qk_dim % num_heads or dim % num_heads:
            raise ValueError(f'qk_dim ({self.qk_dim}) and dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = qk_scale or self.qk_dim ** -0.5
        self.auto_pad = auto_pad
        self.mode = mode
        self.kernel_impl = kernel_impl
        self.qkv = nn.Linear(dim, 2 * self.qk_dim + dim)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0 else None
        self.proj = nn.Linear(dim, dim)

    def _legacy_grid(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int], Tuple[int, int], None]:
        """Pad the input (before the projection) to an S x S grid.

        Returns (region-major qkv, grid, padded map size, region sizes = None)."""
        _, H, W, _ = x.shape
        S = self.n_win
        if self.auto_pad:
            x, _, _ = pad_to_regions(x, S)
        elif H % S or W % S:
            raise ValueError(f'BiLevelRoutingAttention with auto_pad=False needs a map divisible by n_win={S}, '
                             f'got {H}x{W}; build it with auto_pad=True or resize the input')
        return self.qkv(region_partition(x, S)), (S, S), x.shape[1:3], None

    def _nchw_grid(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int], Tuple[int, int], torch.Tensor]:
        """Project, then zero-pad q, k, v to whole regions of floor(H / S) x floor(W / S) tokens.

        Returns (region-major qkv, grid, padded map size, real tokens per region or None if nothing was padded)."""
        _, H, W, _ = x.shape
        rh, rw = H // self.n_win, W // self.n_win
        if rh == 0 or rw == 0:
            raise ValueError(f'BiLevelRoutingAttention (nchw) needs a map of at least n_win={self.n_win} per side, '
                             f'got {H}x{W}; use a larger input')
        pad_b, pad_r = -H % rh, -W % rw
        qkv = self.qkv(x)
        if pad_b or pad_r:
            qkv = F.pad(qkv, (0, 0, 0, pad_r, 0, pad_b))
        grid = ((H + pad_b) // rh, (W + pad_r) // rw)
        rows = torch.full((grid[0],), rh, device=x.device)
        cols = torch.full((grid[1],), rw, device=x.device)
        rows[-1], cols[-1] = rh - pad_b, rw - pad_r
        region_sizes = (rows[:, None] * cols[None, :]).flatten() if pad_b or pad_r else None
        return region_partition(qkv, grid), grid, qkv.shape[1:3], region_sizes

    @torch.no_grad()
    def routed_regions(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """The routing that forward(x) does, read-only: ((N, P, topk) indices of the key regions each query region
        attends to, region grid (rows, cols)); regions are numbered row-major on the grid."""
        qkv, grid, _, region_sizes = self._legacy_grid(x) if self.mode == 'legacy' else self._nchw_grid(x)
        q, k, _ = qkv.split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        route_scale = 1.0 if self.mode == 'nchw' else self.scale
        return region_route(q, k, self.topk, route_scale, region_sizes), grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, C) -> (N, H, W, C)."""
        N, H, W, C = x.shape
        qkv, grid, (Hp, Wp), region_sizes = self._legacy_grid(x) if self.mode == 'legacy' else self._nchw_grid(x)
        q, k, v = qkv.split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        route_scale = 1.0 if self.mode == 'nchw' else None
        out = routed_attention(q, k, v, self.topk, self.num_heads, self.scale, self.kernel_impl,
                               route_scale=route_scale, region_sizes=region_sizes)
        out = region_reverse(out, grid, Hp, Wp)
        if self.lepe is not None:
            # NHWC memory seen as NCHW is channels_last: the depthwise conv runs on it without a copy
            v_map = region_reverse(v, grid, Hp, Wp).permute(0, 3, 1, 2)
            out = out + self.lepe(v_map).permute(0, 2, 3, 1)
        out = self.proj(out)
        if Hp != H or Wp != W:
            out = out[:, :H, :W].contiguous()
        return out
