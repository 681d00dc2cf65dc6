"""Large-kernel depthwise convolution and large-kernel attention (LKA).

Layout: (B, C, H, W) everywhere; channels_last inputs are accepted and give channels_last outputs.

Operator `dilated_dwconv2d`: a depthwise convolution with an odd kernel, dilation d and "same" zero
padding d * (k - 1) // 2, i.e. `F.conv2d(x, w, b, padding=d * (k - 1) // 2, dilation=d, groups=C)`.
It is the expensive half of VAN's LKA (depthwise 7x7, dilation 3).

Implementations:
- `reference`: one `F.conv2d` call with dilation.
- `subgrid`: dilation d only ever mixes pixels that are congruent modulo d, so the dilated conv equals an
  undilated conv with padding (k - 1) // 2 on each of the d x d interleaved sub-grids `x[..., i::d, j::d]`.
  The map is zero-padded at the bottom/right to a multiple of d (which changes nothing: those pixels lie
  in the conv's zero padding anyway), the d^2 sub-grids are folded into the batch with one reshape, and a
  single undilated depthwise conv runs on them. Exact (float64 max diff 0), and faster on the CPU than oneDNN's
  dilated depthwise kernel at VAN's stage shapes (docs/operators.md, dilated depthwise convolution).

`LargeKernelAttention` is VAN's LKA: `u * conv1(conv_spatial(conv0(u)))` with conv0 a depthwise k0 x k0,
conv_spatial a depthwise k1 x k1 dilated conv (the operator above), conv1 a 1x1 conv, all with bias.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import ImplTable, NotPreferred, grad_required, resolve_impl

__all__ = [
    'LargeKernelAttention', 'dilated_dwconv2d', 'dilated_dwconv2d_reference', 'dilated_dwconv2d_subgrid',
]


def _same_padding(weight: torch.Tensor, dilation: int):
    return dilation * (weight.shape[-2] - 1) // 2, dilation * (weight.shape[-1] - 1) // 2


def _check_dwconv_args(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f'dilated_dwconv2d expects x of shape (B, C, H, W), got {tuple(x.shape)}')
    if weight.ndim != 4 or weight.shape[0] != x.shape[1] or weight.shape[1] != 1:
        raise ValueError(
            f'dilated_dwconv2d expects a depthwise weight of shape ({x.shape[1]}, 1, kh, kw), got {tuple(weight.shape)}')
    if weight.shape[-2] % 2 == 0 or weight.shape[-1] % 2 == 0:
        raise ValueError(f'dilated_dwconv2d needs an odd kernel for same padding, got {tuple(weight.shape[-2:])}')


def dilated_dwconv2d_reference(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        dilation: int = 1,
) -> torch.Tensor:
    """Depthwise conv, dilation `dilation`, zero 'same' padding. x: (B, C, H, W), weight: (C, 1, kh, kw)."""
    _check_dwconv_args(x, weight)
    return F.conv2d(x, weight, bias, padding=_same_padding(weight, dilation), dilation=dilation, groups=x.shape[1])


def _can_use_subgrid(x: torch.Tensor, weight: torch.Tensor, bias=None, dilation: int = 1) -> Optional[str]:
    if dilation <= 1:
        return 'dilation 1 has no sub-grids to fold'
    if x.device.type == 'cpu' and x.shape[-2] * x.shape[-1] < 14 * 14 and grad_required(x, weight, bias):
        # the folding's reshapes cost more in the backward than the dilated kernel loses on a small map: LKA's
        # training step at VAN's 7 x 7 stage ran 0.65x the reference's, at 14 x 14 1.03-1.08x (docs/speed.md)
        return NotPreferred(f'training step on a {x.shape[-2]} x {x.shape[-1]} map: the dilated kernel is faster')
    return None


def dilated_dwconv2d_subgrid(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        dilation: int = 1,
) -> torch.Tensor:
    """Same result as the reference, computed as one undilated conv over the d x d folded sub-grids."""
    _check_dwconv_args(x, weight)
    d = dilation
    B, C, H, W = x.shape
    Hf, Wf = (H + d - 1) // d, (W + d - 1) // d  # ceil; not -(-H // d), which ONNX exports as truncation
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    x = F.pad(x, (0, Wf * d - W, 0, Hf * d - H))
    # (B, C, Hf, d, Wf, d) -> (B, d, d, C, Hf, Wf): sub-grid (i, j) holds x[..., i::d, j::d]
    x = x.reshape(B, C, Hf, d, Wf, d).permute(0, 3, 5, 1, 2, 4).reshape(B * d * d, C, Hf, Wf)
    y = F.conv2d(x, weight, bias, padding=_same_padding(weight, 1), groups=C)
    y = y.reshape(B, d, d, C, Hf, Wf).permute(0, 3, 4, 1, 5, 2).reshape(B, C, Hf * d, Wf * d)
    y = y[:, :, :H, :W]
    return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


_DWCONV_IMPLS: ImplTable = {
    'subgrid': (dilated_dwconv2d_subgrid, _can_use_subgrid),
    'reference': (dilated_dwconv2d_reference, None),
}


def dilated_dwconv2d(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        dilation: int = 1,
        impl: Optional[str] = None,
) -> torch.Tensor:
    """Depthwise conv with dilation and same zero padding; `impl` selects the kernel (see module doc)."""
    fn = resolve_impl('dilated_dwconv2d', _DWCONV_IMPLS, impl, x, weight, bias, dilation)
    return fn(x, weight, bias, dilation)


class LargeKernelAttention(nn.Module):
    """VAN's large-kernel attention: `u * conv1(conv_spatial(conv0(u)))`, an elementwise gate, no softmax.

    Args:
        dim: channels.
        kernel_size: depthwise kernel of conv0 (5 in VAN).
        dilated_kernel_size: depthwise kernel of conv_spatial (7 in VAN).
        dilation: dilation of conv_spatial (3 in VAN: a 23 x 23 receptive field together with conv0).
        kernel_impl: implementation of the dilated conv (None: process-wide setting).
    """

    def __init__(
            self,
            dim: int,
            kernel_size: int = 5,
            dilated_kernel_size: int = 7,
            dilation: int = 3,
            kernel_impl: Optional[str] = None,
    ):
        super().__init__()
        self.dilation = dilation
        self.kernel_impl = kernel_impl
        self.conv0 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        # Parameters live in a Conv2d so checkpoints keep the official layout; its forward is never called.
        self.conv_spatial = nn.Conv2d(
            dim, dim, dilated_kernel_size, padding=dilation * (dilated_kernel_size - 1) // 2,
            dilation=dilation, groups=dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        attn = self.conv0(u)
        attn = dilated_dwconv2d(attn, self.conv_spatial.weight, self.conv_spatial.bias, self.dilation, self.kernel_impl)
        attn = self.conv1(attn)
        return u * attn
