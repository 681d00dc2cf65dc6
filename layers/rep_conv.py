"""Multi-branch re-parameterizable convolution: parallel Conv-BN branches of different kernel sizes and group
counts (and an optional BatchNorm identity), summed; in eval mode they are one convolution.

A branch i is a convolution with kernel k_i (odd, 'same' padding k_i // 2), g_i groups and a BatchNorm. In eval
mode BatchNorm is affine, so branch i is conv(x, W_i * s_i) + (beta_i - mean_i * s_i), s_i = gamma_i /
sqrt(var_i + eps), and the sum of the branches is a single convolution with

    groups G = gcd(g_i),  kernel K = max(k_i),  W = sum_i expand(W_i * s_i),  b = sum_i (beta_i - mean_i * s_i)

where `expand` zero-pads W_i to K x K (centred) and writes its g_i / G groups into the block diagonal of each of
the G coarser groups. The identity branch (stride 1, in == out) is a BatchNorm on x: a depthwise 1x1 branch
with unit weights.

Operator (eval-mode, BatchNorm already folded into per-branch weights and biases):
    rep_conv2d(x, weights, biases, groups, stride) -> sum_i conv2d(x, weights[i], biases[i], stride, k_i // 2,
                                                       groups=groups[i])
    x: (B, C_in, H, W); weights[i]: (C_out, C_in / g_i, k_i, k_i); biases[i]: (C_out,).
Implementations: `reference` (one convolution per branch, the definition) and `merged` (the branch kernels merged
into one, then one convolution: the cost of the finest branch's kernel instead of the sum of all branches).
Both are differentiable with respect to x and every branch weight and bias.

`RepConvNorm` owns the branches: in training mode it runs them as Conv-BN modules (batch statistics per branch),
in eval mode it folds the BatchNorms and calls `rep_conv2d`; `fuse()` returns the single deploy-time
`nn.Conv2d`, which timm's `reparameterize_model(model)` substitutes.
"""
import math
from functools import reduce
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ImplTable, is_torchscript_onnx_export, resolve_impl
from .conv_norm import ConvNorm, folded_bn

__all__ = ['RepConvNorm', 'rep_conv2d', 'rep_conv2d_reference', 'rep_conv2d_merged', 'merge_branch_kernels']


def _check_branches(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                    groups: Sequence[int]) -> None:
    if not (len(weights) == len(biases) == len(groups)) or not weights:
        raise ValueError(f'rep_conv2d needs one weight, bias and group count per branch, got {len(weights)} '
                         f'weights, {len(biases)} biases and {len(groups)} group counts')
    out_chs = weights[0].shape[0]
    for w, g in zip(weights, groups):
        if w.shape[0] != out_chs or w.shape[1] * g != x.shape[1] or w.shape[-1] % 2 == 0:
            raise ValueError(f'rep_conv2d branch weight {tuple(w.shape)} with {g} groups does not fit an input of '
                             f'{x.shape[1]} channels and {out_chs} outputs (kernels must be odd)')


def rep_conv2d_reference(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                         groups: Sequence[int], stride: int = 1) -> torch.Tensor:
    """Sum of the branch convolutions, each with 'same' padding (k // 2) and its own group count."""
    _check_branches(x, weights, biases, groups)
    out = None
    for w, b, g in zip(weights, biases, groups):
        y = F.conv2d(x, w, b, stride=stride, padding=w.shape[-1] // 2, groups=g)
        out = y if out is None else out + y
    return out


def merge_branch_kernels(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                         groups: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """One kernel, bias and group count equal to the sum of the branches (see the module docstring)."""
    merged_groups = reduce(math.gcd, groups)
    size = max(w.shape[-1] for w in weights)
    kernel = None
    for w, g in zip(weights, groups):
        ratio = g // merged_groups  # branch groups per merged group
        out_chs, in_per_group, k = w.shape[0], w.shape[1], w.shape[-1]
        # (G, r, out/g, in/g, k, k) -> block diagonal over r inside each merged group: (out, r * in/g, k, k)
        w = w.reshape(merged_groups, ratio, out_chs // g, 1, in_per_group, k, k)
        eye = torch.eye(ratio, dtype=w.dtype, device=w.device).reshape(1, ratio, 1, ratio, 1, 1, 1)
        w = (w * eye).reshape(out_chs, ratio * in_per_group, k, k)
        pad = (size - k) // 2
        w = F.pad(w, (pad, pad, pad, pad))
        kernel = w if kernel is None else kernel + w
    bias = reduce(torch.add, biases)
    return kernel, bias, merged_groups


def rep_conv2d_merged(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                      groups: Sequence[int], stride: int = 1) -> torch.Tensor:
    _check_branches(x, weights, biases, groups)
    kernel, bias, merged_groups = merge_branch_kernels(weights, biases, groups)
    return F.conv2d(x, kernel, bias, stride=stride, padding=kernel.shape[-1] // 2, groups=merged_groups)


def _can_use_merged(x, weights, biases, groups, stride: int = 1) -> Optional[str]:
    if is_torchscript_onnx_export():
        return 'the TorchScript-based ONNX exporter cannot export a conv whose kernel is computed in the graph'
    return None


_IMPLS: ImplTable = {
    'merged': (rep_conv2d_merged, _can_use_merged),
    'reference': (rep_conv2d_reference, None),
}


def rep_conv2d(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
               groups: Sequence[int], stride: int = 1, impl: Optional[str] = None) -> torch.Tensor:
    """Sum of parallel convolutions of different kernel sizes and group counts; `impl` selects the kernel."""
    # 'flops' counts the merged conv: in eval mode the branches are one convolution, their sum is not intrinsic work
    fn = resolve_impl('rep_conv2d', _IMPLS, impl, x, weights, biases, groups, flops_impl='merged')
    return fn(x, weights, biases, groups, stride)


class RepConvNorm(nn.Module):
    """Parallel Conv-BN branches (kernel size, groups) plus an optional BatchNorm identity, summed.

    Args:
        in_chs, out_chs: channels.
        branches: (kernel_size, groups) of each branch; every kernel is odd and padded 'same'.
        stride: stride of every branch.
        identity: add a BatchNorm of the input (needs stride 1 and in_chs == out_chs).
        bn_weight_init: initial BatchNorm scale of the conv branches (0 makes a residual branch start as zero).
        kernel_impl: `rep_conv2d` implementation in eval mode (None: the process-wide setting).
    """

    def __init__(self, in_chs: int, out_chs: int, branches: Sequence[Tuple[int, int]] = ((1, 1),), stride: int = 1,
                 identity: bool = False, bn_weight_init: float = 1., kernel_impl: Optional[str] = None):
        super().__init__()
        if identity and (stride != 1 or in_chs != out_chs):
            raise ValueError(f'an identity branch needs stride 1 and in_chs == out_chs, got stride {stride}, '
                             f'{in_chs} -> {out_chs}')
        self.stride = stride
        self.kernel_impl = kernel_impl
        self.branches = nn.ModuleList([
            ConvNorm(in_chs, out_chs, k, stride, k // 2, groups=g, bn_weight_init=bn_weight_init) for k, g in branches])
        self.identity = nn.BatchNorm2d(out_chs) if identity else None

    @property
    def branch_groups(self) -> Tuple[int, ...]:
        return tuple(branch.conv.groups for branch in self.branches)

    def _folded(self) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[int]]:
        weights, biases, groups = [], [], list(self.branch_groups)
        for branch in self.branches:
            scale, shift = folded_bn(branch.bn)
            weights.append(branch.conv.weight * scale[:, None, None, None])
            biases.append(shift)
        if self.identity is not None:
            scale, shift = folded_bn(self.identity)
            weights.append(scale[:, None, None, None])
            biases.append(shift)
            groups.append(scale.shape[0])
        return weights, biases, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            out = sum(branch(x) for branch in self.branches)
            return out if self.identity is None else out + self.identity(x)
        weights, biases, groups = self._folded()
        return rep_conv2d(x, weights, biases, groups, self.stride, impl=self.kernel_impl)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        kernel, bias, merged_groups = merge_branch_kernels(*self._folded())
        fused = nn.Conv2d(kernel.shape[1] * merged_groups, kernel.shape[0], kernel.shape[-1], self.stride,
                          kernel.shape[-1] // 2, groups=merged_groups, bias=True, device=kernel.device,
                          dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        return fused
