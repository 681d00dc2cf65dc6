"""Deformable convolution (DCNv1, optional DCNv2 modulation mask) and LIT's deformable token merging.

Layout: (B, C, H, W) everywhere.

Operator `deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)`, the semantics of
`torchvision.ops.deform_conv2d` (and of the CUDA DCN extension LITv1/LITv2 ship, which computes the same):
- weight (C_out, C / groups, kh, kw); offset (B, 2 * G * kh * kw, H_out, W_out) with G offset groups, each
  splitting the input channels into G equal groups; for group g and tap k = i * kw + j (row-major),
  channel 2 * (g * kh * kw + k) is dy and the next one dx; optional mask (B, G * kh * kw, H_out, W_out).
- Output position (oh, ow), tap (i, j) samples the input at
      y = oh * stride - padding + i * dilation + dy,   x = ow * stride - padding + j * dilation + dx
  by bilinear interpolation. Border rule: the sample is 0 unless -1 < y < H and -1 < x < W; inside that
  band each of the 4 corner pixels outside [0, H-1] x [0, W-1] reads 0 (so the zero padding fades in).
- out = sum over taps and input channels of weight * (mask *) sample, plus bias.

Implementations:
- `reference`: per tap, explicit bilinear sampling (4 gathered corners with their weights and validity), then
  one contraction with the weight. Pure PyTorch, autograd only; the definition of the semantics.
- `torchvision`: `torchvision.ops.deform_conv2d` (im2col kernels, CPU and CUDA, with a hand-written backward).
  'auto' keeps the reference on the CPU, where torchvision's kernel is slower than it at LITv2's token-merging
  shapes, and takes torchvision on other devices (docs/operators.md, deformable convolution).

`DeformConv2dPack` (DCNv1 with its own offset branch `conv_offset`, a same-geometry Conv2d, zero-initialised
so that it starts as a plain convolution) keeps the parameter names of the DCN packs (`weight`, `bias`,
`conv_offset.weight`, `conv_offset.bias`). `DeformTokenMerge` is LIT's downsampling layer (DTM):
DeformConv2dPack(C, C_out, 2, stride 2) -> BatchNorm2d -> GELU.
"""
import math
from typing import Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from .config import ImplTable, NotPreferred, resolve_impl

try:
    from torchvision.ops import deform_conv2d as _tv_deform_conv2d
    _HAS_TORCHVISION = True
except ImportError:  # pragma: no cover - torchvision is a dependency, but keep the package importable
    _tv_deform_conv2d = None
    _HAS_TORCHVISION = False

__all__ = [
    'DeformConv2dPack', 'DeformTokenMerge', 'deform_conv2d', 'deform_conv2d_reference', 'deform_conv2d_torchvision',
]

IntPair = Union[int, Tuple[int, int]]


def _out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _check_args(x, offset, weight, bias, stride, padding, dilation, mask) -> Tuple[int, int]:
    """Validate shapes; returns (weight groups, offset groups)."""
    if x.ndim != 4 or weight.ndim != 4 or offset.ndim != 4:
        raise ValueError(f'deform_conv2d expects 4-d x, offset and weight, got {tuple(x.shape)}, '
                         f'{tuple(offset.shape)}, {tuple(weight.shape)}')
    B, C, H, W = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    if C % c_per_group or c_out % (C // c_per_group):
        raise ValueError(f'deform_conv2d: weight {tuple(weight.shape)} does not fit {C} input channels')
    groups = C // c_per_group
    if offset.shape[1] % (2 * kh * kw) or C % (offset.shape[1] // (2 * kh * kw) or 1):
        raise ValueError(f'deform_conv2d: offset channels {offset.shape[1]} must be 2 * offset_groups * {kh} * {kw} '
                         f'with offset_groups dividing {C}')
    offset_groups = offset.shape[1] // (2 * kh * kw)
    out_hw = (_out_size(H, kh, stride[0], padding[0], dilation[0]),
              _out_size(W, kw, stride[1], padding[1], dilation[1]))
    if offset_groups == 0 or offset.shape[0] != B or tuple(offset.shape[2:]) != out_hw:
        raise ValueError(f'deform_conv2d: offset {tuple(offset.shape)} does not match the output size {out_hw} '
                         f'of input {tuple(x.shape)} (batch {B})')
    if mask is not None and (mask.shape[0] != B or mask.shape[1] != offset_groups * kh * kw
                             or tuple(mask.shape[2:]) != out_hw):
        raise ValueError(f'deform_conv2d: mask {tuple(mask.shape)} should be ({B}, {offset_groups * kh * kw}, '
                         f'{out_hw[0]}, {out_hw[1]})')
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f'deform_conv2d: bias {tuple(bias.shape)} should be ({c_out},)')
    return groups, offset_groups


def _in_layout_of(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`out` in channels_last memory when `x` is, as conv2d returns it (neither torchvision's kernel nor the
    reference's einsum follows the input's memory format on its own)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _bilinear_sample(img: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """img (N, Cg, H, W), y and x (N, L) sample coordinates -> (N, Cg, L), with the border rule above."""
    N, Cg, H, W = img.shape
    flat = img.reshape(N, Cg, H * W)
    y0, x0 = torch.floor(y), torch.floor(x)
    ly, lx = y - y0, x - x0
    inside = (y > -1) & (y < H) & (x > -1) & (x < W)
    out = img.new_zeros(N, Cg, y.shape[-1])
    for dy, dx, weight in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = y0 + dy, x0 + dx
        valid = inside & (yy >= 0) & (yy <= H - 1) & (xx >= 0) & (xx <= W - 1)
        index = (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1)).long()
        corner = flat.gather(2, index[:, None, :].expand(N, Cg, -1))
        out = out + corner * (weight * valid.to(img.dtype))[:, None, :]
    return out


def deform_conv2d_reference(
        x: torch.Tensor,
        offset: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Deformable convolution by explicit bilinear sampling per tap (see the module docstring).

    x (B, C, H, W), offset (B, 2 G kh kw, Ho, Wo), weight (C_out, C / groups, kh, kw), mask (B, G kh kw, Ho, Wo).
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    groups, offset_groups = _check_args(x, offset, weight, bias, stride, padding, dilation, mask)
    B, C, H, W = x.shape
    c_out, _, kh, kw = weight.shape
    Ho, Wo = offset.shape[2:]
    G, taps = offset_groups, kh * kw
    offset = offset.reshape(B, G, taps, 2, Ho * Wo)
    rows = (torch.arange(Ho, device=x.device, dtype=x.dtype) * stride[0] - padding[0])[:, None].expand(Ho, Wo)
    cols = (torch.arange(Wo, device=x.device, dtype=x.dtype) * stride[1] - padding[1])[None, :].expand(Ho, Wo)
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    img = x.reshape(B * G, C // G, H, W)
    columns = []
    for i in range(kh):
        for j in range(kw):
            k = i * kw + j
            y = (rows + i * dilation[0] + offset[:, :, k, 0]).reshape(B * G, -1)
            x_ = (cols + j * dilation[1] + offset[:, :, k, 1]).reshape(B * G, -1)
            sample = _bilinear_sample(img, y, x_)  # (B G, C / G, Ho Wo)
            if mask is not None:
                sample = sample * mask.reshape(B * G, taps, 1, Ho * Wo)[:, k]
            columns.append(sample.reshape(B, C, Ho * Wo))
    columns = torch.stack(columns, dim=2).reshape(B, groups, C // groups * taps, Ho * Wo)  # (c, tap) order
    w = weight.reshape(groups, c_out // groups, C // groups * taps)
    out = torch.einsum('bgkl,gok->bgol', columns, w).reshape(B, c_out, Ho, Wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return _in_layout_of(out, x)


def _can_use_torchvision(x: torch.Tensor, *args, **kwargs) -> Optional[str]:
    if not _HAS_TORCHVISION:
        return 'torchvision is not installed'
    if x.device.type == 'cpu':
        return NotPreferred("torchvision's CPU kernel is slower than the reference")
    return None


def deform_conv2d_torchvision(
        x: torch.Tensor,
        offset: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """`torchvision.ops.deform_conv2d` with the same arguments."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    _check_args(x, offset, weight, bias, stride, padding, dilation, mask)
    out = _tv_deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)
    return _in_layout_of(out, x)


_IMPLS: ImplTable = {
    'torchvision': (deform_conv2d_torchvision, _can_use_torchvision),
    'reference': (deform_conv2d_reference, None),
}


def deform_conv2d(
        x: torch.Tensor,
        offset: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        mask: Optional[torch.Tensor] = None,
        impl: Optional[str] = None,
) -> torch.Tensor:
    """Deformable convolution (torchvision semantics); `impl` selects the kernel (see the module docstring)."""
    fn = resolve_impl('deform_conv2d', _IMPLS, impl, x)
    return fn(x, offset, weight, bias, stride, padding, dilation, mask)


class DeformConv2dPack(nn.Module):
    """DCNv1 with its offset branch: offset = conv_offset(x), then deform_conv2d(x, offset, weight, bias).

    Args:
        in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias: as nn.Conv2d.
        offset_groups: channel groups with their own offsets (`deformable_groups` in the DCN code).
        kernel_impl: implementation (None: process-wide setting).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
                 dilation: IntPair = 1, groups: int = 1, offset_groups: int = 1, bias: bool = True,
                 kernel_impl: Optional[str] = None):
        super().__init__()
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.in_chs, self.out_chs, self.groups = in_chs, out_chs, groups
        self.kernel_impl = kernel_impl
        self.weight = nn.Parameter(torch.empty(out_chs, in_chs // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_chs)) if bias else None
        self.conv_offset = nn.Conv2d(
            in_chs, 2 * offset_groups * self.kernel_size[0] * self.kernel_size[1], self.kernel_size,
            stride=self.stride, padding=self.padding, dilation=self.dilation, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's init for the weight and bias; a zero offset branch (starts as a plain convolution)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.conv_offset(x)
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation,
                             impl=self.kernel_impl)

    def extra_repr(self) -> str:
        return (f'{self.in_chs}, {self.out_chs}, kernel_size={self.kernel_size}, stride={self.stride}, '
                f'padding={self.padding}, dilation={self.dilation}, groups={self.groups}')


class DeformTokenMerge(nn.Module):
    """LIT's deformable token merging: DeformConv2dPack(k 2, stride 2, no padding) -> BatchNorm2d -> GELU.

    Odd input sides are floored (the last row/column is not read unless an offset points to it), as in the
    official dense-prediction backbone. Input and output are (B, C, H, W).
    """

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = DeformConv2dPack(in_chs, out_chs, 2, stride=2, padding=0)
        self.norm = nn.BatchNorm2d(out_chs)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] < 2 or x.shape[-1] < 2:
            raise ValueError(f'DeformTokenMerge needs a map of at least 2 x 2, got {tuple(x.shape[-2:])}')
        return self.act(self.norm(self.conv(x)))
