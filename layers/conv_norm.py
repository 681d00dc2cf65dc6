"""Conv + BatchNorm and BatchNorm + Linear blocks that fold into one layer for deployment (reparameterization).

`ConvNorm` is Conv2d (no bias) -> BatchNorm2d; `NormLinear` is BatchNorm1d -> Linear. Each has `fuse()`
returning the single equivalent layer (eval-mode statistics folded in); timm's `reparameterize_model(model)`
replaces every child that has a `fuse()` by its fused form.
    conv:   W' = W * g / sqrt(var + eps),  b' = beta - mean * g / sqrt(var + eps)
    linear: W' = W * s[None, :],  b' = W (beta - mean * s) + b,  s = g / sqrt(var + eps)
Fused layers keep the dtype and device of the originals.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['ConvNorm', 'NormLinear', 'folded_bn']

# ConvNorm runs a 1x1 conv on a channels-last map of at most this many pixels as a GEMM over the NHWC view
_LINEAR_MAX_PIXELS = 14 * 14


def folded_bn(bn: nn.modules.batchnorm._BatchNorm) -> Tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm as an affine map: (scale, shift), bn(x) = scale * x + shift per channel.

    Raises in training mode: folding uses the running statistics, which a training-mode BatchNorm does not apply.
    """
    if bn.training:
        raise RuntimeError('folding a BatchNorm uses its running statistics: call model.eval() before '
                           'reparameterize_model/fuse()')
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return scale, bn.bias - bn.running_mean * scale


class ConvNorm(nn.Module):
    """Conv2d without bias followed by BatchNorm2d."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 and x.ndim == 4
                and x.shape[-2] * x.shape[-1] <= _LINEAR_MAX_PIXELS and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last)):
            # a channels-last map is an NHWC matrix: the 1x1 conv is one GEMM on it, and on small maps its backward
            # beats oneDNN's 1x1 convolution backward (LSNet-T's training step 1.085x; docs/speed.md)
            weight = conv.weight.view(conv.out_channels, conv.in_channels)
            return self.bn(F.linear(x.permute(0, 2, 3, 1), weight).permute(0, 3, 1, 2))
        return self.bn(conv(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        conv = self.conv
        scale, shift = folded_bn(self.bn)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(shift)
        return fused


class NormLinear(nn.Module):
    """BatchNorm1d followed by Linear (a classifier head)."""

    def __init__(self, in_features: int, out_features: int, std: float = .02):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features)
        self.fc = nn.Linear(in_features, out_features)
        nn.init.trunc_normal_(self.fc.weight, std=std)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        fc = self.fc
        scale, shift = folded_bn(self.norm)
        fused = nn.Linear(fc.in_features, fc.out_features, device=fc.weight.device, dtype=fc.weight.dtype)
        fused.weight.copy_(fc.weight * scale[None, :])
        fused.bias.copy_(fc.weight @ shift + fc.bias)
        return fused

