"""2-D neighbourhood attention (NA) with NATTEN's border semantics, and its aggregation step on given weights.

Layout: heads-first, as NATTEN's unfused ops: q, k, v, value (B, G, H, W, D); attention weights
(B, G, H, W, Kh * Kw) with tap (a, b) at a * Kw + b; relative position bias tables (G, 2 Kh - 1, 2 Kw - 1).

Window rule (NATTEN, non-causal; per axis of length L, kernel K = 2 r + 1, dilation d): the axis splits into d
interleaved sub-grids (positions congruent mod d); query i sits at index i' = i // d of sub-grid t = i % d, whose
length is L' = ceil((L - t) / d). Its window holds K consecutive sub-grid points starting at
    s' = max(i' - r, 0) + (i' + r >= L') * (L' - i' - r - 1),    i.e. the centred window shifted to stay inside,
so the key of tap a is at s(i) + a * d with s(i) = s' * d + t. Windows are never zero-padded: every query has
exactly K taps per axis. NATTEN requires K * d <= L (so every sub-grid has >= K points) and raises otherwise;
so do we. The bias of tap a is rpb[pb(i) + a] with pb(i) = (s(i) - i) / d + K - 1, the index of the relative
offset (key - query) / d: the bias follows the shifted window (NATTEN's `get_pb_start`).

Operators:
- `na2d_av(attn, value, kernel_size, dilation)`: out[i, j] = sum_{a, b} attn[i, j, a Kw + b] v[s(i) + a d, s(j) + b d]
  (NATTEN <= 0.17 `na2d_av`, used by OverLoCK's ContMix with weights it computes itself).
- `na2d(q, k, v, kernel_size, dilation, rpb, scale)`: softmax over the window of scale * q . k + bias, then the
  aggregation above (NATTEN's `na2d_qk` + softmax + `na2d_av`).

Implementations:
- `reference`: an explicit per-query window gather of the keys/values, (B, G, H, W, Kh, Kw, D), then einsum.
- `blocked`: queries are cut into T x T tiles; all windows of a tile lie inside one (T + K - 1)^2 key region
  (shifted inwards at the borders), so a tile is one dense matmul of its weights, scattered into a
  (T^2, R^2) matrix, against the region (`na2d`: one `scaled_dot_product_attention` call over all tiles with a
  -inf/bias mask). Dilation runs each sub-grid as an undilated problem (exact under this window rule). When the
  kernel is close to the map size (OverLoCK: 13 x 13 on 14 x 14) the whole map is one tile and this is a plain
  dense matmul doing almost only useful work.
- `natten` (`na2d_av` only): NATTEN's own unfused op, when a NATTEN <= 0.17 with `na2d_av` is installed.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import trunc_normal_

from ._shape_cache import shape_cache
from .config import ImplTable, resolve_impl

try:
    from natten.functional import na2d_av as _natten_na2d_av
    _HAS_NATTEN = True
except Exception:  # noqa: BLE001  (any import failure means: not usable)
    _natten_na2d_av = None
    _HAS_NATTEN = False

__all__ = [
    'NeighborhoodAttention2d', 'na2d', 'na2d_av', 'na2d_av_blocked', 'na2d_av_reference', 'na2d_blocked',
    'na2d_reference', 'na_rpb_bias', 'na_window_start',
]

IntPair = Union[int, Tuple[int, int], Sequence[int]]


def _pair(v: IntPair) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def na_window_start(length: int, kernel_size: int, dilation: int = 1) -> List[int]:
    """s(i) for every i < length: the first key of query i's window along one axis (see the module docstring)."""
    r, d = kernel_size // 2, dilation
    starts = []
    for i in range(length):
        t, ip = i % d, i // d
        sub_len = (length - t + d - 1) // d
        s = max(ip - r, 0) + (ip + r >= sub_len) * (sub_len - ip - r - 1)
        starts.append(s * d + t)
    return starts


def _check_args(op: str, height: int, width: int, kernel_size: IntPair, dilation: IntPair):
    (kh, kw), (dh, dw) = _pair(kernel_size), _pair(dilation)
    if kh % 2 == 0 or kw % 2 == 0 or kh < 2 or kw < 2:
        raise ValueError(f'{op} needs an odd kernel size > 1 per axis (NATTEN), got {(kh, kw)}')
    if dh < 1 or dw < 1:
        raise ValueError(f'{op} needs dilation >= 1, got {(dh, dw)}')
    if kh * dh > height or kw * dw > width:
        raise ValueError(
            f'{op}: the product of kernel size and dilation cannot be larger than the input size along any axis '
            f'(NATTEN requires it: a smaller sub-grid has fewer than K points), got map {(height, width)}, '
            f'kernel_size {(kh, kw)}, dilation {(dh, dw)}')
    return kh, kw, dh, dw


@shape_cache(maxsize=256)
def _window_tables(height: int, width: int, kh: int, kw: int, dh: int, dw: int, device: torch.device):
    """Key index of every (query, tap) per axis, (H, Kh) and (W, Kw), and the rpb index tables of the same shapes."""
    out = []
    for length, k, d in ((height, kh, dh), (width, kw, dw)):
        start = torch.tensor(na_window_start(length, k, d))
        i = torch.arange(length)
        taps = torch.arange(k)
        keys = start[:, None] + d * taps[None, :]
        pb = (start - i) // d + k - 1  # exact: s(i) - i is a multiple of d
        out.append((keys.to(device), (pb[:, None] + taps[None, :]).to(device)))
    return out


def na_rpb_bias(rpb: torch.Tensor, height: int, width: int, kernel_size: IntPair, dilation: IntPair = 1) -> torch.Tensor:
    """Relative position bias (G, 2Kh-1, 2Kw-1) -> (G, H, W, Kh*Kw) for every query and tap of the shifted window."""
    kh, kw, dh, dw = _check_args('na_rpb_bias', height, width, kernel_size, dilation)
    if rpb.shape[-2:] != (2 * kh - 1, 2 * kw - 1):
        raise ValueError(f'rpb must be (G, {2 * kh - 1}, {2 * kw - 1}) for kernel {(kh, kw)}, got {tuple(rpb.shape)}')
    (_, pb_h), (_, pb_w) = _window_tables(height, width, kh, kw, dh, dw, rpb.device)
    bias = rpb[:, pb_h[:, None, :, None], pb_w[None, :, None, :]]  # (G, H, W, Kh, Kw)
    return bias.reshape(rpb.shape[0], height, width, kh * kw)


def _check_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: IntPair, dilation: IntPair):
    if attn.ndim != 5 or value.ndim != 5 or attn.shape[:4] != value.shape[:4]:
        raise ValueError(f'na2d_av expects attn (B, G, H, W, Kh*Kw) and value (B, G, H, W, D), got '
                         f'{tuple(attn.shape)} and {tuple(value.shape)}')
    kh, kw, dh, dw = _check_args('na2d_av', value.shape[2], value.shape[3], kernel_size, dilation)
    if attn.shape[-1] != kh * kw:
        raise ValueError(f'na2d_av: attn has {attn.shape[-1]} taps, kernel {(kh, kw)} needs {kh * kw}')
    return kh, kw, dh, dw


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: IntPair, dilation: IntPair):
    if q.ndim != 5 or q.shape != k.shape or v.shape[:4] != q.shape[:4]:
        raise ValueError(f'na2d expects q, k (B, G, H, W, D) and v (B, G, H, W, Dv), got {tuple(q.shape)}, '
                         f'{tuple(k.shape)}, {tuple(v.shape)}')
    return _check_args('na2d', q.shape[2], q.shape[3], kernel_size, dilation)


def _gather_windows(x: torch.Tensor, keys_h: torch.Tensor, keys_w: torch.Tensor) -> torch.Tensor:
    """(B, G, H, W, D) -> (B, G, H, W, Kh, Kw, D): the window of every query."""
    x = x[:, :, keys_h[:, None, :, None], keys_w[None, :, None, :]]  # (B, G, H, W, Kh, Kw, D)
    return x


def na2d_av_reference(attn: torch.Tensor, value: torch.Tensor, kernel_size: IntPair, dilation: IntPair = 1
                      ) -> torch.Tensor:
    """out[i, j] = sum over the shifted window of attn * value; attn (B, G, H, W, Kh*Kw), value (B, G, H, W, D)."""
    kh, kw, dh, dw = _check_av(attn, value, kernel_size, dilation)
    B, G, H, W, _ = value.shape
    (keys_h, _), (keys_w, _) = _window_tables(H, W, kh, kw, dh, dw, value.device)
    windows = _gather_windows(value, keys_h, keys_w)
    return torch.einsum('bghwpq,bghwpqd->bghwd', attn.reshape(B, G, H, W, kh, kw), windows)


def na2d_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: IntPair, dilation: IntPair = 1,
                   rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """softmax_window(scale * q . k + rpb) v with the explicit per-query window gather; q, k, v (B, G, H, W, D)."""
    kh, kw, dh, dw = _check_qkv(q, k, v, kernel_size, dilation)
    B, G, H, W, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    (keys_h, _), (keys_w, _) = _window_tables(H, W, kh, kw, dh, dw, q.device)
    logits = torch.einsum('bghwd,bghwpqd->bghwpq', q, _gather_windows(k, keys_h, keys_w)).reshape(B, G, H, W, -1)
    logits = logits * scale
    if rpb is not None:
        logits = logits + na_rpb_bias(rpb, H, W, (kh, kw), (dh, dw))
    return na2d_av_reference(logits.softmax(dim=-1), v, (kh, kw), (dh, dw))


# ---------------------------------------------------------------------------------------------------------------
# blocked implementation

def _default_tile(length: int, kernel: int, tile: int) -> int:
    # One tile when the kernel nearly covers the axis (the dense matmul wastes little); else `tile` (4 for the
    # aggregation matmul, 8 for SDPA: the fastest on the CPU at NA 7x7; docs/operators.md, neighborhood attention).
    return length if length <= kernel + 8 else tile


@shape_cache(maxsize=256)
def _axis_tiles(length: int, kernel: int, tile: int, device: torch.device):
    """Tiling of one axis (dilation 1): query positions (nt, T), region key positions (nt, R), the local key
    column of every (tile, local query, tap) (nt, T, K), and for every position its flat (tile, local) index."""
    tile = min(tile, length)
    region = min(length, tile + kernel - 1)
    n_tiles = (length + tile - 1) // tile  # ceil; not -(-length // tile), which ONNX exports as truncation
    start = na_window_start(length, kernel, 1)
    q0 = [min(t * tile, length - tile) for t in range(n_tiles)]
    r0 = [min(start[q], length - region) for q in q0]
    qpos = torch.tensor([[q + li for li in range(tile)] for q in q0])
    rpos = torch.tensor([[r + c for c in range(region)] for r in r0])
    cols = torch.tensor([[[start[q + li] + a - r for a in range(kernel)] for li in range(tile)]
                         for q, r in zip(q0, r0)])
    own = torch.tensor([min(i // tile, n_tiles - 1) * tile + i - q0[min(i // tile, n_tiles - 1)]
                        for i in range(length)])
    whole = n_tiles == 1 and region == length
    return qpos.to(device), rpos.to(device), cols.to(device), own.to(device), tile, region, n_tiles, whole


@shape_cache(maxsize=256)
def _dense_index(height: int, width: int, kh: int, kw: int, th: int, tw: int, device: torch.device):
    """Index into each tile's (Th*Tw, Rh*Rw) dense matrix of every (local query, tap), (nth, ntw, Th*Tw*Kh*Kw)."""
    _, _, cols_h, _, th, rh, nth, _ = _axis_tiles(height, kh, th, device)
    _, _, cols_w, _, tw, rw, ntw, _ = _axis_tiles(width, kw, tw, device)
    row = (torch.arange(th, device=device)[:, None] * tw + torch.arange(tw, device=device)[None, :]) * (rh * rw)
    col = cols_h[:, None, :, None, :, None] * rw + cols_w[None, :, None, :, None, :]  # (nth, ntw, Th, Tw, Kh, Kw)
    index = row[None, None, :, :, None, None] + col
    return index.reshape(nth, ntw, th * tw * kh * kw)


def _tile_queries(x: torch.Tensor, qpos_h, qpos_w) -> torch.Tensor:
    """(B, G, H, W, C) -> (B, G, nth, ntw, Th*Tw, C)."""
    B, G, C = x.shape[0], x.shape[1], x.shape[-1]
    x = x[:, :, qpos_h[:, None, :, None], qpos_w[None, :, None, :]]  # (B, G, nth, ntw, Th, Tw, C)
    return x.reshape(B, G, qpos_h.shape[0], qpos_w.shape[0], -1, C)


def _tile_regions(x: torch.Tensor, rpos_h, rpos_w, whole: bool) -> torch.Tensor:
    """(B, G, H, W, D) -> (B, G, nth, ntw, Rh*Rw, D)."""
    B, G, H, W, D = x.shape
    if whole:
        return x.reshape(B, G, 1, 1, H * W, D)
    x = x[:, :, rpos_h[:, None, :, None], rpos_w[None, :, None, :]]
    return x.reshape(B, G, rpos_h.shape[0], rpos_w.shape[0], -1, D)


def _untile(out: torch.Tensor, height: int, width: int, th: int, tw: int, own_h, own_w, whole: bool) -> torch.Tensor:
    """(B, G, nth, ntw, Th*Tw, D) -> (B, G, H, W, D), each position from the tile that owns it."""
    B, G, nth, ntw, _, D = out.shape
    if whole:
        return out.reshape(B, G, height, width, D)
    out = out.reshape(B, G, nth, ntw, th, tw, D)
    ti_h, li_h = own_h // th, own_h % th
    ti_w, li_w = own_w // tw, own_w % tw
    return out[:, :, ti_h[:, None], ti_w[None, :], li_h[:, None], li_w[None, :]]


def _av_blocked_undilated(attn, value, kh, kw, tile):
    B, G, H, W, D = value.shape
    th = tile or _default_tile(H, kh, 4)
    tw = tile or _default_tile(W, kw, 4)
    qpos_h, rpos_h, _, own_h, th, rh, nth, whole_h = _axis_tiles(H, kh, th, value.device)
    qpos_w, rpos_w, _, own_w, tw, rw, ntw, whole_w = _axis_tiles(W, kw, tw, value.device)
    whole = whole_h and whole_w
    index = _dense_index(H, W, kh, kw, th, tw, value.device)
    attn_t = attn.reshape(B, G, 1, 1, -1) if whole else _tile_queries(attn, qpos_h, qpos_w).reshape(B, G, nth, ntw, -1)
    dense = attn.new_zeros(B, G, nth, ntw, th * tw * rh * rw)
    dense = dense.scatter(-1, index.expand(B, G, -1, -1, -1), attn_t)
    out = dense.view(B, G, nth, ntw, th * tw, rh * rw) @ _tile_regions(value, rpos_h, rpos_w, whole)
    return _untile(out, H, W, th, tw, own_h, own_w, whole)


def _by_subgrid(fn, tensors: Sequence[torch.Tensor], dh: int, dw: int, out_channels: int) -> torch.Tensor:
    """Run an undilated `fn` on each of the dh x dw interleaved sub-grids and interleave the results."""
    ref = tensors[0]
    if dh == 1 and dw == 1:
        return fn(*tensors)
    B, G, H, W = ref.shape[:4]
    out = ref.new_zeros(B, G, H, W, out_channels)
    for i in range(dh):
        for j in range(dw):
            out[:, :, i::dh, j::dw] = fn(*(t[:, :, i::dh, j::dw] for t in tensors))
    return out


def na2d_av_blocked(attn: torch.Tensor, value: torch.Tensor, kernel_size: IntPair, dilation: IntPair = 1,
                    tile: Optional[int] = None) -> torch.Tensor:
    """`na2d_av` as one dense matmul per query tile against its key region (see the module docstring)."""
    kh, kw, dh, dw = _check_av(attn, value, kernel_size, dilation)
    return _by_subgrid(lambda a, v: _av_blocked_undilated(a, v, kh, kw, tile), (attn, value), dh, dw,
                       value.shape[-1])


def _na_blocked_undilated(q, k, v, bias, kh, kw, scale, tile):
    B, G, H, W, D = q.shape
    th = tile or _default_tile(H, kh, 8)
    tw = tile or _default_tile(W, kw, 8)
    qpos_h, rpos_h, _, own_h, th, rh, nth, whole_h = _axis_tiles(H, kh, th, q.device)
    qpos_w, rpos_w, _, own_w, tw, rw, ntw, whole_w = _axis_tiles(W, kw, tw, q.device)
    whole = whole_h and whole_w
    index = _dense_index(H, W, kh, kw, th, tw, q.device)
    n = nth * ntw
    # mask: -inf outside each query's window, the window's bias inside; bias is (G or 1, H, W, Kh*Kw)
    bias_t = bias[None].reshape(1, bias.shape[0], 1, 1, -1) if whole else _tile_queries(
        bias[None], qpos_h, qpos_w).reshape(1, bias.shape[0], nth, ntw, -1)
    mask = bias.new_full((1, bias.shape[0], nth, ntw, th * tw * rh * rw), float('-inf'))
    mask = mask.scatter(-1, index.expand(1, bias.shape[0], -1, -1, -1), bias_t)
    q_t = q.reshape(B, G, 1, 1, H * W, D) if whole else _tile_queries(q, qpos_h, qpos_w)
    k_t = _tile_regions(k, rpos_h, rpos_w, whole)
    v_t = _tile_regions(v, rpos_h, rpos_w, whole)
    out = F.scaled_dot_product_attention(
        q_t.reshape(B, G * n, th * tw, D), k_t.reshape(B, G * n, rh * rw, D), v_t.reshape(B, G * n, rh * rw, -1),
        attn_mask=mask.reshape(1, bias.shape[0] * n, th * tw, rh * rw), scale=scale)
    return _untile(out.reshape(B, G, nth, ntw, th * tw, -1), H, W, th, tw, own_h, own_w, whole)


def na2d_blocked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: IntPair, dilation: IntPair = 1,
                 rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                 tile: Optional[int] = None) -> torch.Tensor:
    """`na2d` as one SDPA call over query tiles against their key regions, with a -inf/bias mask."""
    kh, kw, dh, dw = _check_qkv(q, k, v, kernel_size, dilation)
    B, G, H, W, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    # the bias of the full map, then cut per sub-grid like q, k, v (the dilated rpb rule is the sub-grid's rule)
    bias = na_rpb_bias(rpb, H, W, (kh, kw), (dh, dw)) if rpb is not None else q.new_zeros(1, H, W, kh * kw)
    bias = bias.expand(G, -1, -1, -1)

    def run(q_, k_, v_, bias_):
        return _na_blocked_undilated(q_, k_, v_, bias_[0], kh, kw, scale, tile)
    return _by_subgrid(run, (q, k, v, bias[None].expand(B, -1, -1, -1, -1)), dh, dw, v.shape[-1])


# ---------------------------------------------------------------------------------------------------------------
# NATTEN (optional)

def _can_use_natten(attn, value, kernel_size, dilation=1) -> Optional[str]:
    if not _HAS_NATTEN:
        return 'natten with the unfused na2d_av (NATTEN <= 0.17) is not installed'
    if _pair(kernel_size)[0] != _pair(kernel_size)[1] or _pair(dilation)[0] != _pair(dilation)[1]:
        return 'NATTEN na2d_av takes square kernels and equal dilations here'
    return None


def na2d_av_natten(attn: torch.Tensor, value: torch.Tensor, kernel_size: IntPair, dilation: IntPair = 1
                   ) -> torch.Tensor:
    """NATTEN's unfused `na2d_av` (same layout and semantics)."""
    kh, _, dh, _ = _check_av(attn, value, kernel_size, dilation)
    return _natten_na2d_av(attn, value, kernel_size=kh, dilation=dh)


_AV_IMPLS: ImplTable = {
    'natten': (na2d_av_natten, _can_use_natten),
    'blocked': (na2d_av_blocked, None),
    'reference': (na2d_av_reference, None),
}

_NA_IMPLS: ImplTable = {
    'blocked': (na2d_blocked, None),
    'reference': (na2d_reference, None),
}


def na2d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: IntPair, dilation: IntPair = 1,
            impl: Optional[str] = None) -> torch.Tensor:
    """Neighbourhood aggregation with given weights (NATTEN `na2d_av` semantics); `impl` selects the kernel."""
    fn = resolve_impl('na2d_av', _AV_IMPLS, impl, attn, value, kernel_size, dilation)
    return fn(attn, value, kernel_size, dilation)


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: IntPair, dilation: IntPair = 1,
         rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None, impl: Optional[str] = None
         ) -> torch.Tensor:
    """2-D neighbourhood attention (NATTEN semantics, optional relative position bias); `impl` selects the kernel."""
    fn = resolve_impl('na2d', _NA_IMPLS, impl, q, k, v)
    return fn(q, k, v, kernel_size, dilation, rpb, scale)


class NeighborhoodAttention2d(nn.Module):
    """Neighbourhood attention layer on (B, C, H, W) maps: qkv 1x1 projection, NA with RPB, output projection.

    Args:
        dim: channels. num_heads: heads (dim divisible by it). kernel_size: odd window side. dilation: >= 1.
        qkv_bias: bias on the qkv projection. rel_pos_bias: learn a (heads, 2K-1, 2K-1) bias table.
        kernel_impl: NA implementation (None: process-wide setting).
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, dilation: int = 1, qkv_bias: bool = True,
                 rel_pos_bias: bool = True, kernel_impl: Optional[str] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.kernel_size, self.dilation, self.kernel_impl = kernel_size, dilation, kernel_impl
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1)) \
            if rel_pos_bias else None
        self.proj = nn.Conv2d(dim, dim, 1)
        if self.rpb is not None:
            trunc_normal_(self.rpb, std=.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(x).reshape(B, 3, self.num_heads, self.head_dim, H, W).permute(1, 0, 2, 4, 5, 3)
        out = na2d(q, k, v, self.kernel_size, self.dilation, self.rpb, self.scale, impl=self.kernel_impl)
        return self.proj(out.permute(0, 1, 4, 2, 3).reshape(B, C, H, W))
