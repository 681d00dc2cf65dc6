"""LS (large-small) convolution of LSNet: large-kernel perception (LKP) produces per-pixel small kernels that
small-kernel aggregation (SKA) applies.

Layout: (B, C, H, W).

Operator `ska(x, weight)`: weight (B, G, k * k, H, W) holds a k x k kernel per pixel and weight group; channel c
uses group c mod G (groups tiled over the channels, as the official Triton kernel):
    out[n, c, i, j] = sum_{a, b < k} x[n, c, i + a - p, j + b - p] * weight[n, c mod G, a * k + b, i, j],  p = (k - 1) // 2
with zero padding. The official implementation is a CUDA-only Triton kernel; nothing here needs a build.

Implementations:
- `reference`: unfold x into its k * k neighbourhoods (a k^2-fold copy), multiply, sum.
- `shift`: accumulate the k * k taps one shifted view at a time; channels are viewed as (C / G, G) so every
  tap is one in-place broadcast multiply-add against the weight group, and the k^2-fold copy is never made.
  Its backward (a custom autograd function) accumulates the input gradient of all taps in one padded buffer.

`LSConv(dim)`: BN(SKA(x, LKP(x))) + x with LKP = 1x1 -> dw 7x7 -> 1x1 -> 1x1 (9 * dim / 8 channels) -> GroupNorm.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import ImplTable, grad_required, is_capturing_graph, resolve_impl
from .conv_norm import ConvNorm

__all__ = ['LSConv', 'LargeKernelPerception', 'ska', 'ska_reference', 'ska_shift']


def _check_ska(x: torch.Tensor, weight: torch.Tensor) -> int:
    if x.ndim != 4 or weight.ndim != 5 or weight.shape[0] != x.shape[0] or weight.shape[-2:] != x.shape[-2:]:
        raise ValueError(f'ska expects x (B, C, H, W) and weight (B, G, k*k, H, W), got {tuple(x.shape)} and '
                         f'{tuple(weight.shape)}')
    k = math.isqrt(int(weight.shape[2]))
    if k * k != weight.shape[2] or k % 2 == 0 or x.shape[1] % weight.shape[1]:
        raise ValueError(f'ska needs an odd square kernel and C divisible by G, got {weight.shape[2]} taps, '
                         f'C={x.shape[1]}, G={weight.shape[1]}')
    return k


def _in_layout_of(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Outputs follow the input's memory format (channels_last in, channels_last out)."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def ska_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Small-kernel aggregation by unfolding (see the module docstring)."""
    k = _check_ska(x, weight)
    B, C, H, W = x.shape
    groups = weight.shape[1]
    patches = F.unfold(x, k, padding=(k - 1) // 2).view(B, C, k * k, H, W)
    channel_group = torch.arange(C, device=x.device) % groups
    return _in_layout_of((patches * weight[:, channel_group]).sum(dim=2), x)


def _ska_shift_taps(padded: torch.Tensor, weight: torch.Tensor, k: int, H: int, W: int) -> torch.Tensor:
    """padded (B, C/G, G, H + 2p, W + 2p), weight (B, G, k*k, H, W) -> (B, C/G, G, H, W), one in-place
    multiply-add per tap into a single output buffer."""
    out = padded[..., :H, :W] * weight[:, None, :, 0]
    for tap in range(1, k * k):
        a, b = divmod(tap, k)
        out.addcmul_(padded[..., a:a + H, b:b + W], weight[:, None, :, tap])
    return out


class _SkaShift(torch.autograd.Function):
    """The shifted multiply-adds with a backward that accumulates every tap into one padded gradient buffer.

    Autograd through the plain loop would give each of the k*k shifted views its own zero-filled, padded-size
    gradient and then sum them; here the input gradient costs one buffer and k*k in-place multiply-adds.
    """

    @staticmethod
    def forward(ctx, padded: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:
        p = (k - 1) // 2
        H, W = padded.shape[-2] - 2 * p, padded.shape[-1] - 2 * p
        ctx.save_for_backward(padded, weight)
        ctx.k = k
        return _ska_shift_taps(padded, weight, k, H, W)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        padded, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # a channels-last gradient comes back in the planes' layout
        k = ctx.k
        H, W = grad_out.shape[-2:]
        grad_padded = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_padded = torch.zeros_like(padded)
            for tap in range(k * k):
                a, b = divmod(tap, k)
                grad_padded[..., a:a + H, b:b + W].addcmul_(grad_out, weight[:, None, :, tap])
        if ctx.needs_input_grad[1]:
            grad_weight = torch.stack([(grad_out * padded[..., a:a + H, b:b + W]).sum(dim=1)
                                       for a, b in (divmod(tap, k) for tap in range(k * k))], dim=2)
        return grad_padded, grad_weight, None


def ska_shift(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Small-kernel aggregation as k * k shifted multiply-adds, without the unfolded copy."""
    k = _check_ska(x, weight)
    B, C, H, W = x.shape
    groups = weight.shape[1]
    p = (k - 1) // 2
    # (C / G, G, H, W) planes: the per-tap multiply-adds broadcast the weight over whole planes, several times faster
    # than over interleaved channels-last rows (one layout copy each way is cheaper than the difference)
    padded = F.pad(x.contiguous(), (p, p, p, p)).view(B, C // groups, groups, H + 2 * p, W + 2 * p)
    if grad_required(padded, weight) and not is_capturing_graph():
        out = _SkaShift.apply(padded, weight, k)
    else:
        out = _ska_shift_taps(padded, weight, k, H, W)
    return _in_layout_of(out.reshape(B, C, H, W), x)


_IMPLS: ImplTable = {
    'shift': (ska_shift, None),
    'reference': (ska_reference, None),
}


def ska(x: torch.Tensor, weight: torch.Tensor, impl: Optional[str] = None) -> torch.Tensor:
    """Per-pixel dynamic k x k aggregation with weight groups tiled over channels; `impl` selects the kernel."""
    return resolve_impl('ska', _IMPLS, impl, x, weight)(x, weight)


class LargeKernelPerception(nn.Module):
    """LKP: 1x1 -> ReLU -> dw 7x7 -> 1x1 -> ReLU -> 1x1 (9 taps x dim/8 groups) -> GroupNorm (one group per
    weight group). Returns per-pixel 3x3 kernels (B, dim / 8, 9, H, W)."""

    def __init__(self, dim: int, large_kernel: int = 7, small_kernel: int = 3, groups: int = 8):
        super().__init__()
        hidden = dim // 2
        self.small_kernel = small_kernel
        self.weight_groups = dim // groups
        self.cv1 = ConvNorm(dim, hidden)
        self.act = nn.ReLU()
        self.cv2 = ConvNorm(hidden, hidden, large_kernel, padding=large_kernel // 2, groups=hidden)
        self.cv3 = ConvNorm(hidden, hidden)
        self.cv4 = nn.Conv2d(hidden, small_kernel ** 2 * self.weight_groups, 1)
        self.norm = nn.GroupNorm(self.weight_groups, small_kernel ** 2 * self.weight_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.cv3(self.cv2(self.act(self.cv1(x)))))
        x = self.norm(self.cv4(x))
        B, _, H, W = x.shape
        return x.view(B, self.weight_groups, self.small_kernel ** 2, H, W)


class LSConv(nn.Module):
    """LS convolution: "see large" (LKP) to generate kernels, "focus small" (SKA) to apply them; BN; residual."""

    def __init__(self, dim: int, kernel_impl: Optional[str] = None):
        super().__init__()
        self.kernel_impl = kernel_impl
        self.lkp = LargeKernelPerception(dim)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(ska(x, self.lkp(x), impl=self.kernel_impl)) + x
