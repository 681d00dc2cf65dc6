"""Halo attention: blocked local self-attention with a halo and 2-D relative position logits (HaloNet).

Layout: (B, C, H, W) at the module edge; the core works on q (B * heads, blocks, Q, d) against keys/values
(B * heads, blocks, K, d) where Q = b'^2 query positions of a block (b' = block size / query stride) and
K = (b + 2 * halo)^2 the block plus its zero-padded halo.

Semantics follow timm's `HaloAttn` (the reference implementation of HaloNet, which has no official code):
    logits = q k^T * s + rel(q)          (or (q k^T + rel(q)) * s with scale_pos_embed)
    out    = softmax(logits) v
rel(q)[i, j] = q_i . (R_h[dy_ij] + R_w[dx_ij]) with learned tables R_h, R_w of 2 * win - 1 offsets.
Map borders are zero padding (padded keys take part in the softmax with key 0 and value 0, as in timm).
Maps not divisible by the block size (timm raises) are zero-padded at the bottom/right to whole blocks after the
q/kv projections, the same zero padding as the halo (padded keys stay unmasked); outputs are cropped to the
size a stride-1 layer or a strided query gives (H or ceil(H / 2); the average-pooling path halves with floor, as
timm's does). At divisible sizes nothing changes.

Operator `blocked_attention(q, k, v, bias, scale, bias_scaled)` (the core above, given the relative logits):
- `reference`: explicit matmul, add, softmax, matmul.
- `sdpa`: one `scaled_dot_product_attention` call with the relative logits as an additive float mask.
Operator `halo_attention_core(q, k, v, height_rel, width_rel, block, scale, bias_scaled)` (the whole core, relative
logits included):
- `reference`: relative logits (gather from the tables), then `blocked_attention_reference`.
- `sdpa`: the same relative logits as a float mask to `scaled_dot_product_attention`.
- `onehot`: no bias tensor at all. The relative logit of query (y, x) and key (ky, kx) is
  a_h[y, ky] + a_w[x, kx] with a_h = q . R_h[ky - y + win - 1] (a (Q, win) table per block, likewise a_w), which is
  the dot product of [a_h, a_w] with the one-hot code [e(ky), e(kx)]. So queries [q * s, a_h, a_w] against keys
  [k, e(ky), e(kx)] give q k^T s + rel in one unmasked `scaled_dot_product_attention` (scale 1), whose fused kernel
  never materialises the (Q, K) logits per block.
Operator `halo_attention(q, kv, height_rel, width_rel, num_heads, block, halo, scale, bias_scaled)` (the whole
layer between the projections and the output: q and kv maps in, the attention output map out):
- `reference`, `sdpa`, `onehot`: pad kv by the halo, copy its overlapping windows once into a channels-last
  (blocks, win^2, c) layout, block the queries, run the `halo_attention_core` impl of that name, fold back.
- `matmul`: channel-major batched matmuls. Every block's q, k, v are taken as (d, positions) matrices of the NCHW
  maps and the output is computed transposed, v (dv, K) @ softmax(...)^T, which is already the NCHW order of the
  block. On a map that is one block (HaloNet-26t's last stage at 256 input) the zero-padded kv map *is* the window,
  so nothing is unfolded, blocked or folded: the only copies are the halo padding and the (Q, K) logits.
`HaloAttention` holds timm's parameter names (`q`, `kv`, `pos_embed.height_rel`, `pos_embed.width_rel`), so timm
checkpoints load as they are.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import make_divisible, trunc_normal_

from .config import ImplTable, NotPreferred, is_torchscript_onnx_export, resolve_impl

__all__ = ['HaloAttention', 'blocked_attention', 'blocked_attention_reference', 'blocked_attention_sdpa',
           'halo_attention', 'halo_attention_core', 'relative_logits_2d']


def blocked_attention_reference(q, k, v, bias, scale: float, bias_scaled: bool = False) -> torch.Tensor:
    """softmax(q k^T * s + bias) v, or softmax((q k^T + bias) * s) v when `bias_scaled`."""
    logits = q @ k.transpose(-2, -1)
    logits = (logits + bias) * scale if bias_scaled else logits * scale + bias
    return logits.softmax(dim=-1) @ v


def blocked_attention_sdpa(q, k, v, bias, scale: float, bias_scaled: bool = False) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias * scale if bias_scaled else bias, scale=scale)


_IMPLS: ImplTable = {
    'sdpa': (blocked_attention_sdpa, None),
    'reference': (blocked_attention_reference, None),
}


def blocked_attention(q, k, v, bias, scale: float, bias_scaled: bool = False,
                      impl: Optional[str] = None) -> torch.Tensor:
    """Attention per block with an additive bias; `impl` selects the kernel."""
    return resolve_impl('blocked_attention', _IMPLS, impl, q, k, v)(q, k, v, bias, scale, bias_scaled)


def _rel_logits_1d(q: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """q (N, rows, cols, d), rel (2 * win - 1, d) -> (N, rows, cols, win): logit of each query column c
    against each window column w, from table row w - c + win - 1.

    NOTE: timm's convention (its skewed-matrix trick): the offset is w - c, not shifted by the halo, so the
    table's centre row pairs query column c with window column c. Kept for checkpoint compatibility.
    """
    win = (rel.shape[0] + 1) // 2
    cols = q.shape[2]
    logits = q @ rel.transpose(-2, -1)  # (N, rows, cols, 2 * win - 1)
    c = torch.arange(cols, device=q.device)[:, None]
    w = torch.arange(win, device=q.device)[None, :]
    index = (w - c + win - 1).expand(list(logits.shape[:-1]) + [win])
    return logits.gather(-1, index)


def _rel_logits_hw(q: torch.Tensor, height_rel: torch.Tensor, width_rel: torch.Tensor,
                   block: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """q (N, block * block, d) -> the row and column parts of the relative logits, (N, by, bx, win) each."""
    n, _, d = q.shape
    q = q.reshape(n, block, block, d)
    logits_w = _rel_logits_1d(q, width_rel)  # (n, by, bx, win_x)
    logits_h = _rel_logits_1d(q.transpose(1, 2), height_rel).transpose(1, 2)  # (n, by, bx, win_y)
    return logits_h, logits_w


def relative_logits_2d(q: torch.Tensor, height_rel: torch.Tensor, width_rel: torch.Tensor,
                       block: int) -> torch.Tensor:
    """q (N, block * block, d) in row-major block order -> (N, block * block, win * win) relative logits."""
    n = q.shape[0]
    win = (height_rel.shape[0] + 1) // 2
    logits_h, logits_w = _rel_logits_hw(q, height_rel, width_rel, block)
    logits = logits_h[..., :, None] + logits_w[..., None, :]  # (n, by, bx, win_y, win_x)
    return logits.reshape(n, block * block, win * win)


def _core_with_bias(q, k, v, height_rel, width_rel, block: int, scale: float, bias_scaled: bool, impl: str):
    N, nb, Q, d = q.shape
    bias = relative_logits_2d(q.reshape(N * nb, Q, d), height_rel, width_rel, block).reshape(N, nb, Q, -1)
    if torch.jit.is_scripting():  # TorchScript does not compile the dispatcher; `impl` is 'reference' or 'sdpa'
        if impl == 'reference':
            return blocked_attention_reference(q, k, v, bias, scale, bias_scaled)
        return blocked_attention_sdpa(q, k, v, bias, scale, bias_scaled)
    return blocked_attention(q, k, v, bias, scale, bias_scaled, impl=impl)


def halo_attention_core_reference(q, k, v, height_rel, width_rel, block: int, scale: float,
                                  bias_scaled: bool = False) -> torch.Tensor:
    """Halo attention per block with the relative logits written out (see the module docstring).

    Args:
        q: (N, blocks, block * block, d) queries, row-major inside a block. k: (N, blocks, win * win, d) and
            v: (N, blocks, win * win, dv), the block's window, row-major. height_rel, width_rel: (2 * win - 1, d).
        block: query block side. scale: logit scale. bias_scaled: scale the relative logits too.
    """
    return _core_with_bias(q, k, v, height_rel, width_rel, block, scale, bias_scaled, 'reference')


def halo_attention_core_sdpa(q, k, v, height_rel, width_rel, block: int, scale: float,
                             bias_scaled: bool = False) -> torch.Tensor:
    return _core_with_bias(q, k, v, height_rel, width_rel, block, scale, bias_scaled, 'sdpa')


def halo_attention_core_onehot(q, k, v, height_rel, width_rel, block: int, scale: float,
                               bias_scaled: bool = False) -> torch.Tensor:
    N, nb, Q, d = q.shape
    win = (height_rel.shape[0] + 1) // 2
    logits_h, logits_w = _rel_logits_hw(q.reshape(N * nb, Q, d), height_rel, width_rel, block)
    rel_scale = scale if bias_scaled else 1.0
    q_aug = torch.cat([q * scale, (logits_h * rel_scale).reshape(N, nb, Q, win),
                       (logits_w * rel_scale).reshape(N, nb, Q, win)], dim=-1)
    eye = torch.eye(win, dtype=k.dtype, device=k.device)
    code = torch.cat([eye[:, None, :].expand(win, win, win), eye[None, :, :].expand(win, win, win)], dim=-1)
    k_aug = torch.cat([k, code.reshape(1, 1, win * win, 2 * win).expand(N, nb, -1, -1)], dim=-1)
    return F.scaled_dot_product_attention(q_aug, k_aug, v, scale=1.0)


# 'auto' takes `sdpa`; `onehot` (widened head dim, which falls off PyTorch's fused CPU kernel) is kept for devices
# whose kernels take it. The layer-level order is at `_HALO_IMPLS` below.
_CORE_IMPLS: ImplTable = {
    'sdpa': (halo_attention_core_sdpa, None),
    'onehot': (halo_attention_core_onehot, None),
    'reference': (halo_attention_core_reference, None),
}


def halo_attention_core(q, k, v, height_rel, width_rel, block: int, scale: float, bias_scaled: bool = False,
                        impl: Optional[str] = None) -> torch.Tensor:
    """Blocked attention with HaloNet's relative logits; `impl` selects the implementation."""
    fn = resolve_impl('halo_attention_core', _CORE_IMPLS, impl, q, k, v)
    return fn(q, k, v, height_rel, width_rel, block, scale, bias_scaled)


def _block_grid(q: torch.Tensor, kv: torch.Tensor, block: int) -> Tuple[int, int, int]:
    """Blocks per side (nh, nw) of the kv map and the query block side bq (block / query stride)."""
    nh, nw = kv.shape[-2] // block, kv.shape[-1] // block
    if kv.shape[-2] != nh * block or kv.shape[-1] != nw * block or q.shape[-2] % nh or q.shape[-1] % nw:
        raise ValueError(f'halo_attention needs whole blocks of {block}: q {list(q.shape)}, kv {list(kv.shape)}')
    return nh, nw, q.shape[-1] // nw


def _kv_windows(kv: torch.Tensor, block: int, halo: int) -> torch.Tensor:
    """(B, C, nh * block, nw * block) -> (B, C, nh, nw, win, win): every block's window with its zero halo."""
    win = block + 2 * halo
    if not torch.jit.is_scripting():  # (TorchScript compiles no ONNX export check)
        if is_torchscript_onnx_export():
            # the TorchScript-based ONNX exporter takes Tensor.unfold only on inputs of known size, which the padded
            # map is not (its pads are computed in the graph); im2col pads itself and reads the size at run time
            B, C, H, W = kv.shape
            windows = F.unfold(kv, win, padding=halo, stride=block)  # (B, C * win * win, nh * nw)
            return windows.reshape(B, C, win, win, H // block, W // block).permute(0, 1, 4, 5, 2, 3)
    return F.pad(kv, [halo] * 4).unfold(2, win, block).unfold(3, win, block)  # a view


def _halo_attention_unfolded(q, kv, height_rel, width_rel, num_heads: int, block: int, halo: int, scale: float,
                             bias_scaled: bool, core_impl: str) -> torch.Tensor:
    B = q.shape[0]
    nh, nw, bq = _block_grid(q, kv, block)
    dq = q.shape[1] // num_heads
    win = block + 2 * halo
    q = q.reshape(B * num_heads, dq, nh, bq, nw, bq)
    q = q.permute(0, 2, 4, 3, 5, 1).reshape(B * num_heads, nh * nw, bq * bq, dq)
    kv = _kv_windows(kv, block, halo)  # (B, C, nh, nw, win, win)
    # one copy straight into (B * heads, blocks, win^2, c) with channels last, so k and v are views whose rows
    # the fused kernels read without another copy
    kv = kv.reshape(B, num_heads, -1, nh, nw, win, win).permute(0, 1, 3, 4, 5, 6, 2)
    kv = kv.reshape(B * num_heads, nh * nw, win * win, -1)
    k, v = kv.split([dq, kv.shape[-1] - dq], dim=-1)
    if torch.jit.is_scripting():  # TorchScript does not compile the dispatcher
        if core_impl == 'reference':
            out = halo_attention_core_reference(q, k, v, height_rel, width_rel, bq, scale, bias_scaled)
        elif core_impl == 'onehot':
            out = halo_attention_core_onehot(q, k, v, height_rel, width_rel, bq, scale, bias_scaled)
        else:
            out = halo_attention_core_sdpa(q, k, v, height_rel, width_rel, bq, scale, bias_scaled)
    else:
        out = halo_attention_core(q, k, v, height_rel, width_rel, bq, scale, bias_scaled, impl=core_impl)
    out = out.reshape(B, num_heads, nh, nw, bq, bq, -1).permute(0, 1, 6, 2, 4, 3, 5)
    return out.reshape(B, -1, nh * bq, nw * bq)


def halo_attention_reference(q, kv, height_rel, width_rel, num_heads: int, block: int, halo: int, scale: float,
                             bias_scaled: bool = False) -> torch.Tensor:
    """Halo attention from the projected maps (see the module docstring).

    Args:
        q: (B, heads * d, nh * bq, nw * bq) queries (bq = block, or block / 2 for strided queries).
        kv: (B, heads * (d + dv), nh * block, nw * block) keys and values, head-major, [k | v] per head; zero-padded
            by `halo` on every side here. height_rel, width_rel: (2 * (block + 2 * halo) - 1, d).
        num_heads, block, halo: heads, block side of the kv map, halo width. scale, bias_scaled: as the core's.

    Returns:
        (B, heads * dv, nh * bq, nw * bq), head-major channels.
    """
    return _halo_attention_unfolded(q, kv, height_rel, width_rel, num_heads, block, halo, scale, bias_scaled,
                                    'reference')


def halo_attention_sdpa(q, kv, height_rel, width_rel, num_heads: int, block: int, halo: int, scale: float,
                        bias_scaled: bool = False) -> torch.Tensor:
    return _halo_attention_unfolded(q, kv, height_rel, width_rel, num_heads, block, halo, scale, bias_scaled, 'sdpa')


def halo_attention_onehot(q, kv, height_rel, width_rel, num_heads: int, block: int, halo: int, scale: float,
                          bias_scaled: bool = False) -> torch.Tensor:
    return _halo_attention_unfolded(q, kv, height_rel, width_rel, num_heads, block, halo, scale, bias_scaled,
                                    'onehot')


def halo_attention_matmul(q, kv, height_rel, width_rel, num_heads: int, block: int, halo: int, scale: float,
                          bias_scaled: bool = False) -> torch.Tensor:
    B = q.shape[0]
    nh, nw, bq = _block_grid(q, kv, block)
    dq = q.shape[1] // num_heads
    win = block + 2 * halo
    N, Q, K = B * num_heads * nh * nw, bq * bq, win * win
    # (N, d, Q) and (N, d + dv, K): views of the maps when the map is one block, else one copy each
    q = q.reshape(B * num_heads, dq, nh, bq, nw, bq).permute(0, 2, 4, 1, 3, 5).reshape(N, dq, Q)
    kv = _kv_windows(kv, block, halo)
    kv = kv.reshape(B, num_heads, -1, nh, nw, win, win).permute(0, 1, 3, 4, 2, 5, 6).reshape(N, -1, K)
    k, v = kv[:, :dq], kv[:, dq:]
    q_t = q.transpose(1, 2)  # (N, Q, d)
    logits_h, logits_w = _rel_logits_hw(q_t, height_rel, width_rel, bq)
    logits = torch.bmm(q_t, k) if bias_scaled else torch.bmm(q_t * scale, k)
    # the relative logits are added in place (bmm's backward needs its inputs, not its output)
    grid = logits.view(N, bq, bq, win, win)
    grid.add_(logits_h[..., :, None]).add_(logits_w[..., None, :])
    if bias_scaled:
        logits = logits * scale
    out = torch.bmm(v, logits.softmax(dim=-1).transpose(1, 2))  # (N, dv, Q): each block in NCHW order
    out = out.reshape(B, num_heads, nh, nw, -1, bq, bq).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(B, -1, nh * bq, nw * bq)


def _can_use_matmul(q, kv, height_rel, width_rel, num_heads: int, block: int, halo: int, *args,
                    **kwargs) -> Optional[str]:
    nh, nw, bq = _block_grid(q, kv, block)
    if nh * nw > 1:
        return NotPreferred(f'{nh * nw} blocks: the windows are copied either way, and the fused sdpa core ties or '
                            'wins there holding less memory')
    return None


# 'auto' order: `matmul` on a map that is one block (nothing to unfold, it wins there); otherwise `sdpa`, which ties
# with `matmul` on several blocks and holds less memory; `onehot` only when named (slower on the CPU). The figures
# at HaloNet-26t's shapes are in docs/operators.md, halo attention.
_HALO_IMPLS: ImplTable = {
    'matmul': (halo_attention_matmul, _can_use_matmul),
    'sdpa': (halo_attention_sdpa, None),
    'onehot': (halo_attention_onehot, lambda *args, **kwargs: NotPreferred('slower than sdpa on the CPU')),
    'reference': (halo_attention_reference, None),
}


def halo_attention(q, kv, height_rel, width_rel, num_heads: int, block: int, halo: int, scale: float,
                   bias_scaled: bool = False, impl: Optional[str] = None) -> torch.Tensor:
    """HaloNet attention from the projected q and kv maps to the output map; `impl` selects the implementation."""
    fn = resolve_impl('halo_attention', _HALO_IMPLS, impl, q, kv, height_rel, width_rel, num_heads, block, halo)
    return fn(q, kv, height_rel, width_rel, num_heads, block, halo, scale, bias_scaled)


class HaloAttention(nn.Module):
    """HaloNet's attention layer, timm-compatible (see timm.layers.HaloAttn for the argument conventions).

    Args:
        dim, dim_out: input/output channels. stride: 1, or 2 (query blocks strided, or average pooling).
        num_heads, dim_head, qk_ratio: heads and q/k width (dim_head or make_divisible(dim_out * qk_ratio, 8)
            // num_heads); v width is dim_out // num_heads.
        block_size, halo_size: query block side and halo width. qkv_bias: bias on q/kv.
        avg_down: downsample by average pooling rather than strided query blocks.
        scale_pos_embed: scale the relative logits with q k^T.
        kernel_impl: blocked-attention implementation (None: process-wide setting).
        device, dtype: where and in what type to create the parameters (timm's builders pass them).
    """
    kernel_impl: Optional[str]  # for TorchScript, which would type an attribute holding None as NoneType

    def __init__(self, dim: int, dim_out: Optional[int] = None, feat_size=None, stride: int = 1,
                 num_heads: int = 8, dim_head: Optional[int] = None, block_size: int = 8, halo_size: int = 3,
                 qk_ratio: float = 1.0, qkv_bias: bool = False, avg_down: bool = False,
                 scale_pos_embed: bool = False, kernel_impl: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        dim_out = dim_out or dim
        if dim_out % num_heads or stride not in (1, 2):
            raise ValueError(f'HaloAttention needs dim_out divisible by num_heads and stride 1 or 2, got '
                             f'dim_out={dim_out}, num_heads={num_heads}, stride={stride}')
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.dim_out_qk, self.dim_out_v = num_heads * self.dim_head_qk, num_heads * self.dim_head_v
        self.scale = self.dim_head_qk ** -0.5
        self.scale_pos_embed = scale_pos_embed
        self.block_size = self.block_size_ds = block_size
        self.halo_size = halo_size
        self.win_size = block_size + 2 * halo_size
        self.kernel_impl = kernel_impl
        self.block_stride = 1
        use_avg_pool = False
        if stride > 1:
            use_avg_pool = avg_down or block_size % stride != 0
            self.block_stride = 1 if use_avg_pool else stride
            self.block_size_ds = block_size // self.block_stride
        self.q = nn.Conv2d(dim, self.dim_out_qk, 1, stride=self.block_stride, bias=qkv_bias, **dd)
        self.kv = nn.Conv2d(dim, self.dim_out_qk + self.dim_out_v, 1, bias=qkv_bias, **dd)
        self.pos_embed = nn.Module()
        self.pos_embed.height_rel = nn.Parameter(torch.zeros(self.win_size * 2 - 1, self.dim_head_qk, **dd))
        self.pos_embed.width_rel = nn.Parameter(torch.zeros(self.win_size * 2 - 1, self.dim_head_qk, **dd))
        self.pool = nn.AvgPool2d(2, 2) if use_avg_pool else nn.Identity()
        std = self.q.weight.shape[1] ** -0.5
        trunc_normal_(self.q.weight, std=std)
        trunc_normal_(self.kv.weight, std=std)
        trunc_normal_(self.pos_embed.height_rel, std=self.scale)
        trunc_normal_(self.pos_embed.width_rel, std=self.scale)

    def _halo_attention_scripted(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """`halo_attention` with the implementation fixed when the module is scripted: the one named by
        `kernel_impl`, else (None, 'auto', 'flops') the one 'auto' picks while exporting."""
        args = (q, kv, self.pos_embed.height_rel, self.pos_embed.width_rel, self.num_heads, self.block_size,
                self.halo_size, self.scale, self.scale_pos_embed)
        impl = self.kernel_impl
        if impl is None or impl == 'auto' or impl == 'flops':
            one_block = kv.shape[-2] == self.block_size and kv.shape[-1] == self.block_size
            impl = 'matmul' if one_block else 'sdpa'
        if impl == 'matmul':
            return halo_attention_matmul(*args)
        if impl == 'sdpa':
            return halo_attention_sdpa(*args)
        if impl == 'onehot':
            return halo_attention_onehot(*args)
        if impl == 'reference':
            return halo_attention_reference(*args)
        raise ValueError(f'Unknown implementation {impl} for halo_attention')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        b, bq = self.block_size, self.block_size_ds
        nh, nw = (H + b - 1) // b, (W + b - 1) // b  # ceil; not -(-H // b), which ONNX exports as truncation
        q = self.q(x)
        out_h, out_w = q.shape[-2:]
        if out_h != nh * bq or out_w != nw * bq:
            q = F.pad(q, [0, nw * bq - out_w, 0, nh * bq - out_h])
        kv = self.kv(x)
        if H != nh * b or W != nw * b:
            kv = F.pad(kv, [0, nw * b - W, 0, nh * b - H])
        if torch.jit.is_scripting():
            out = self._halo_attention_scripted(q, kv)
        else:
            out = halo_attention(q, kv, self.pos_embed.height_rel, self.pos_embed.width_rel, self.num_heads, b,
                                 self.halo_size, self.scale, self.scale_pos_embed, impl=self.kernel_impl)
        if out_h != nh * bq or out_w != nw * bq:
            out = out[:, :, :out_h, :out_w]
        return self.pool(out)
