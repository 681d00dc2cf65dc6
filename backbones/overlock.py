"""OverLoCK: an Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels.

Paper: M. Lou, Y. Yu, "OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels",
CVPR 2025, https://arxiv.org/abs/2502.20087

    @inproceedings{lou2025overlock,
      title={OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels},
      author={Lou, Meng and Yu, Yizhou},
      booktitle={CVPR},
      year={2025}
    }

Official code: https://github.com/LMMMEng/OverLoCK, matched at commit 2c8ab3b29e3a11fb4a2510d98e4d9ed8b33cf091
(models/overlock.py), Apache-2.0.

Structure (NCHW; LN = channels LayerNorm eps 1e-6, BN eps 1e-5):
- Base-Net: a 4-conv stem (/4), stages 0-2 (/4, /8, /16) of RepConvBlocks, each stage after the first starting
  with a 3x3/2 conv + BN. RepConvBlock: x = x + dw3x3(x); x = ls(x) + proj(x), proj = LN -> DilatedReparamBlock
  (UniRepLKNet: a K x K dw conv + BN plus dilated dw branches + BN, K = 17/15/13/7) -> BN -> SE -> 1x1 (4x) ->
  GELU -> (x + dw3x3) -> GRN -> 1x1. Layer scale (a dw 1x1 conv: weight and bias) sits on the shortcut.
- Overview-Net: stage 3 (/32) on the Base-Net output, same blocks; its output is the context prior (and feeds the
  auxiliary deep-supervision head). A 1x1 conv (`overview_proj`) maps it to Ch = D3 / 4 context channels.
- Focus-Net: focus stage 0 (/16, dim D2) and focus stage 1 (a 3x3/2 conv + BN for the feature and one for the
  context stream, then dim D3) of FocusBlocks. Top-down guidance: every block concatenates the context stream h
  to its feature (and splits its output back), and non-first blocks re-inject the prior, h = x_scale(h) +
  h_scale(prior) (prior: the projected context, bilinearly upsampled to /16 for stage 0). Inside, ContMix
  (`layers.ContMix`) computes per-pixel 5x5 and K x K kernels from the affinity of each pixel with 7 x 7
  pooled context tokens and applies them over NATTEN-style shifted windows (`layers.na2d_av`).
- Head: 1x1 conv -> BN -> SiLU (1024) -> average pool -> linear; the features are cat[x, h], D3 + Ch channels.
- Training returns the main logits (the timm contract); the aux head's logits reach the loss through the model
  hook `training_losses()` (CE(main) + 0.4 CE(aux), as the official loss). `*_reparam` variants are the official
  deploy form (each DilatedReparamBlock one K x K dw conv with bias); timm's `reparameterize_model` converts a
  trained model (eval mode), exactly.

Measurements, the FLOPs-gap investigation (ours vs the published counts) and their commands: docs/overlock.md.

Deviations (none changes the function):
- timm layout: `stem`, `stages.{0..3}.{downsample,blocks}` (stage 3 = Overview-Net), `overview_proj`,
  `focus_stages.{0,1}.{downsample,blocks}`, ContMix parameters under `.contmix.`, heads `head.{conv,norm,fc}` and
  `aux_head.{norm,fc}` with Linear classifiers (the official 1x1 convs are reshaped on load).
  `checkpoint_filter_fn` maps the official keys (bare, 'state_dict', 'model' or 'state_dict_ema' wrapped).
- Training returns the main logits, as every timm model; the aux head's logits of the training forward enter the
  loss through `training_losses()` (engine/hooks.py): the official CE(main) + 0.4 CE(aux) with the training
  criterion (`aux_loss_weight`). `deep_supervision=False` builds no aux head (checkpoints' aux keys are then dropped).
- `*_reparam` variants are the official deploy form; timm's `reparameterize_model(model.eval())` converts a trained
  model exactly. The official `*_reparam` constructors ignore their kwargs (num_classes, drop_path_rate) and s/b
  never load weights; ours honour both.
- The dilated branches run through `layers.dilated_dwconv2d` (exact sub-grid fast path); ContMix's aggregation
  through `layers.na2d_av` (blocked dense-tile fast path, or NATTEN's own op if installed). No NATTEN and no
  iGEMM package are needed.
- Inputs of any size: as the official code, ContMix resizes maps smaller than its kernel (inputs below 208 px at
  /16 or 224 px at /32) bilinearly to the kernel size and pools the result back.
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, SelectAdaptivePool2d, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from layers import ContMix, dilated_dwconv2d, folded_bn, set_module_kernel_impl
from ._helpers import (
    build_model_with_cfg, channels_last_on_cpu, check_input_size, check_state_dict_keys, feature_take_indices,
    remap_state_dict, unwrap_state_dict,
)

__all__ = ['OverLoCK']

# kernel size -> (branch kernel sizes, dilations) of UniRepLKNet's DilatedReparamBlock
_BRANCHES = {
    17: ((5, 7, 9, 3, 3, 3), (1, 1, 2, 4, 5, 7)),
    15: ((5, 7, 7, 3, 3, 3), (1, 1, 2, 3, 5, 7)),
    13: ((5, 7, 7, 3, 3, 3), (1, 1, 2, 3, 4, 5)),
    11: ((5, 7, 5, 3, 3, 3), (1, 1, 2, 3, 4, 5)),
    9: ((5, 7, 5, 3, 3), (1, 1, 2, 3, 4)),
    7: ((5, 3, 3, 3), (1, 1, 2, 3)),
    5: ((3, 3), (1, 2)),
}


class DilatedReparamBlock(nn.Module):
    """UniRepLKNet's block: BN(dw KxK) + sum_i BN_i(dw k_i x k_i, dilation r_i), all 'same' padded.

    `deploy=True` is the merged form, one dw K x K conv with bias; `fuse()` returns it (eval statistics).
    """

    def __init__(self, dim: int, kernel_size: int, deploy: bool = False):
        super().__init__()
        if kernel_size not in _BRANCHES:
            raise ValueError(f'DilatedReparamBlock supports kernel sizes {sorted(_BRANCHES)}, got {kernel_size}')
        self.kernel_size, self.deploy = kernel_size, deploy
        self.kernel_impl: Optional[str] = None  # the operator's implementation, set by the model
        self.branches = tuple(zip(*_BRANCHES[kernel_size]))
        self.lk_origin = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=deploy)
        if not deploy:
            self.origin_bn = nn.BatchNorm2d(dim)
            for k, r in self.branches:
                self.add_module(f'dil_conv_k{k}_{r}', nn.Conv2d(
                    dim, dim, k, padding=(r * (k - 1) + 1) // 2, dilation=r, groups=dim, bias=False))
                self.add_module(f'dil_bn_k{k}_{r}', nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lk_origin(x)
        if self.deploy:
            return out
        out = self.origin_bn(out)
        for k, r in self.branches:
            conv, bn = getattr(self, f'dil_conv_k{k}_{r}'), getattr(self, f'dil_bn_k{k}_{r}')
            out = out + bn(dilated_dwconv2d(x, conv.weight, None, r, impl=self.kernel_impl))
        return out

    @torch.no_grad()
    def fuse(self) -> 'DilatedReparamBlock':
        if self.deploy:
            return self
        dim, K = self.lk_origin.out_channels, self.kernel_size
        scale, bias = folded_bn(self.origin_bn)
        weight = self.lk_origin.weight * scale[:, None, None, None]
        for k, r in self.branches:
            s, b = folded_bn(getattr(self, f'dil_bn_k{k}_{r}'))
            w = getattr(self, f'dil_conv_k{k}_{r}').weight * s[:, None, None, None]
            span = r * (k - 1) + 1
            dilated = w.new_zeros(dim, 1, span, span)
            dilated[:, :, ::r, ::r] = w  # zero-interleaved: the same taps at their dilated offsets
            pad = (K - span) // 2
            weight = weight + F.pad(dilated, [pad] * 4)
            bias = bias + b
        fused = DilatedReparamBlock(dim, K, deploy=True).to(weight)
        fused.kernel_impl = self.kernel_impl
        fused.lk_origin.weight.copy_(weight)
        fused.lk_origin.bias.copy_(bias)
        return fused


class LayerScale(nn.Module):
    """Per-channel affine x * w + b, stored as the official depthwise 1x1 conv (weight (C, 1, 1, 1), bias (C,))."""

    def __init__(self, dim: int, init_value: float = 1.):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim, 1, 1, 1), float(init_value)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class GRN(nn.Module):
    """ConvNeXt-V2 global response normalisation on (B, C, H, W): (gamma * N + 1) * x + beta, N = G / mean_c G."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
        return (self.gamma * n + 1) * x + self.beta


class SEModule(nn.Module):
    """Squeeze-excite with a GELU inner activation and max(16, dim // 8) hidden channels."""

    def __init__(self, dim: int, reduction: int = 8):
        super().__init__()
        hidden = max(16, dim // reduction)
        self.proj = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, hidden, 1), nn.GELU(),
                                  nn.Conv2d(hidden, dim, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.proj(x)


class ResDWConv(nn.Conv2d):
    """x + dw3x3(x) (with bias)."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def _conv_bn(in_chs: int, out_chs: int, stride: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False), nn.BatchNorm2d(out_chs))


class RepConvBlock(nn.Module):
    """Base-/Overview-Net block (see the module docstring)."""

    def __init__(self, dim: int, kernel_size: int, mlp_ratio: float = 4., ls_init_value: Optional[float] = None,
                 drop_path: float = 0., deploy: bool = False):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.dwconv = ResDWConv(dim)
        self.proj = nn.Sequential(
            LayerNorm2d(dim, eps=1e-6),
            DilatedReparamBlock(dim, kernel_size, deploy),
            nn.BatchNorm2d(dim),
            SEModule(dim),
            nn.Conv2d(dim, hidden, 1),
            nn.GELU(),
            ResDWConv(hidden),
            GRN(hidden),
            nn.Conv2d(hidden, dim, 1),
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.ls = LayerScale(dim, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(x)
        return self.ls(x) + self.drop_path(self.proj(x))  # NOTE: res_scale: layer scale on the shortcut


class FocusBlock(nn.Module):
    """Focus-Net block (official DynamicConvBlock): feature x (dim) and context stream h (ctx_dim) in, both out
    (the last block returns cat[x, h])."""

    def __init__(self, dim: int, ctx_dim: int, kernel_size: int, small_kernel_size: int = 5, num_heads: int = 2,
                 mlp_ratio: float = 3., ls_init_value: Optional[float] = 1., drop_path: float = 0.,
                 is_first: bool = False, is_last: bool = False, deploy: bool = False):
        super().__init__()
        out_dim = dim + ctx_dim
        hidden = int(dim * mlp_ratio)
        self.dim, self.ctx_dim, self.is_first, self.is_last = dim, ctx_dim, is_first, is_last
        self.contmix = ContMix(dim, ctx_dim, kernel_size, small_kernel_size, num_heads)
        if not is_first:
            self.x_scale = LayerScale(ctx_dim, 1.)
            self.h_scale = LayerScale(ctx_dim, 1.)
        self.dwconv1 = ResDWConv(out_dim)
        self.norm1 = LayerNorm2d(out_dim, eps=1e-6)
        self.fusion = nn.Sequential(
            nn.Conv2d(out_dim, out_dim, 3, padding=1, groups=out_dim), nn.BatchNorm2d(out_dim), nn.GELU(),
            nn.Conv2d(out_dim, dim, 1), GRN(dim))
        self.dyconv_proj = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.lepe = nn.Sequential(DilatedReparamBlock(dim, kernel_size, deploy), nn.BatchNorm2d(dim))
        self.se_layer = SEModule(dim)
        self.gate = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.SiLU())
        self.proj = nn.Sequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, out_dim, 1))
        self.dwconv2 = ResDWConv(out_dim)
        self.norm2 = LayerNorm2d(out_dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Conv2d(out_dim, hidden, 1), nn.GELU(), ResDWConv(hidden), GRN(hidden), nn.Conv2d(hidden, out_dim, 1))
        self.ls1 = LayerScale(out_dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ls2 = LayerScale(out_dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, h: torch.Tensor, prior: torch.Tensor):
        if not self.is_first:
            h = self.x_scale(h) + self.h_scale(prior)
        f = self.dwconv1(torch.cat([x, h], dim=1))
        identity = f
        f = self.norm1(f)
        u = self.fusion(f)
        gate = self.gate(u)
        lepe = self.lepe(u)
        y = self.contmix(f[:, :self.dim], f[:, self.dim:], u)
        y = self.se_layer(self.dyconv_proj(y) + lepe) * gate
        y = self.proj(y)
        x = self.ls1(identity) + self.drop_path(y)
        x = self.dwconv2(x)
        x = self.ls2(x) + self.drop_path(self.mlp(self.norm2(x)))
        if self.is_last:
            return x, None
        return x[:, :self.dim], x[:, self.dim:]


class BaseStage(nn.Module):
    """Optional 3x3/2 conv + BN, then RepConvBlocks."""

    def __init__(self, in_chs: int, dim: int, depth: int, downsample: bool, **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        drop_path = block_kwargs.pop('drop_path')
        self.downsample = _conv_bn(in_chs, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[RepConvBlock(dim, drop_path=drop_path[j], **block_kwargs) for j in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class ContextDownsample(nn.Module):
    """3x3/2 conv + BN on the feature (in_chs -> dim) and on the context stream (ctx_dim -> ctx_dim)."""

    def __init__(self, in_chs: int, dim: int, ctx_dim: int):
        super().__init__()
        self.x_proj = _conv_bn(in_chs, dim)
        self.h_proj = _conv_bn(ctx_dim, ctx_dim)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.x_proj(x), self.h_proj(h)


class FocusStage(nn.Module):
    """Optional ContextDownsample, then FocusBlocks; returns (x, h), or (cat[x, h], None) after the last block."""

    def __init__(self, in_chs: int, dim: int, ctx_dim: int, depth: int, downsample: bool, first_is_first: bool,
                 last_is_last: bool, drop_path: List[float], **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = ContextDownsample(in_chs, dim, ctx_dim) if downsample else None
        self.blocks = nn.ModuleList([
            FocusBlock(dim, ctx_dim, drop_path=drop_path[j], is_first=first_is_first and j == 0,
                       is_last=last_is_last and j == depth - 1, **block_kwargs) for j in range(depth)])

    def forward(self, x: torch.Tensor, h: torch.Tensor, prior: torch.Tensor):
        if self.downsample is not None:
            x, h = self.downsample(x, h)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                x, h = checkpoint(block, x, h, prior, use_reentrant=False)
            else:
                x, h = block(x, h, prior)
        return x, h


class ConvClassifierHead(nn.Module):
    """1x1 conv (no bias) -> BN -> SiLU -> global pool -> Linear (official: a 1x1 conv after the pool)."""

    def __init__(self, in_chs: int, hidden: int, num_classes: int, pool_type: str = 'avg', drop_rate: float = 0.):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, hidden, 1, bias=False)
        self.norm = nn.BatchNorm2d(hidden)
        self.act = nn.SiLU()
        self.hidden = hidden
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes, pool_type)

    def reset(self, num_classes: int, pool_type: Optional[str] = None) -> None:
        if pool_type is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.fc = nn.Linear(self.hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(self.act(self.norm(self.conv(x))))
        x = self.drop(x)
        if pre_logits:
            return x
        if x.ndim == 4:  # no pooling: classify every position
            return self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(x)


class AuxHead(nn.Module):
    """Deep-supervision head on the Overview-Net output: BN -> average pool -> Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.dim = dim
        self.norm = nn.BatchNorm2d(dim)
        self.reset(num_classes)

    def reset(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x).mean(dim=(2, 3)))


class OverLoCK(nn.Module):
    """OverLoCK: Base-Net, Overview-Net (context prior) and Focus-Net with top-down guidance (ContMix)."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Tuple[int, ...] = (56, 112, 256, 336),
            depths: Tuple[int, ...] = (2, 2, 3, 2),
            focus_depths: Tuple[int, ...] = (6, 2),
            kernel_sizes: Tuple[int, ...] = (17, 15, 13, 7),
            mlp_ratios: Tuple[float, ...] = (4, 4, 4, 4),
            focus_mlp_ratios: Tuple[float, ...] = (3, 3),
            focus_num_heads: Tuple[int, ...] = (4, 6),
            ls_init_values: Tuple[Optional[float], ...] = (None, None, 1., 1.),
            small_kernel_size: int = 5,
            head_hidden_size: int = 1024,
            deploy: bool = False,
            deep_supervision: bool = True,
            aux_loss_weight: float = 0.4,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            kernel_impl: Optional[str] = None,
    ):
        """
        Args:
            in_chans, num_classes, global_pool: as in timm (global_pool 'avg' or '' for none).
            embed_dims: Base/Overview stage widths D0..D3; the Focus-Net uses D2 and D3, context Ch = D3 // 4.
            depths: RepConvBlocks per stage (stage 3 = Overview-Net). focus_depths: FocusBlocks per focus stage.
            kernel_sizes: large kernel per stage (the focus stages use those of stages 2 and 3).
            mlp_ratios, focus_mlp_ratios: MLP widths. focus_num_heads: ContMix uses 2x this many groups.
            ls_init_values: layer-scale init per stage (None: no layer scale); focus stages use stages 2, 3.
            small_kernel_size: ContMix's small kernel. head_hidden_size: width of the head's 1x1 conv.
            deploy: build the re-parameterised form (one dw conv per DilatedReparamBlock).
            deep_supervision: keep the auxiliary head on the Overview-Net output; `training_losses()` then
                gives its loss, `aux_loss_weight * criterion(aux_logits, target)`.
            aux_loss_weight: weight of the aux head's loss (official 0.4).
            drop_rate: dropout before the classifier. drop_path_rate: stochastic depth, linear over all blocks
                (Base/Overview blocks first, then Focus blocks, as the official schedule).
            kernel_impl: implementation of the layers operators (None: process-wide setting).
        """
        super().__init__()
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        D = embed_dims
        ctx_dim = D[3] // 4
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = D[3] + ctx_dim
        self.head_hidden_size = head_hidden_size
        self.grad_checkpointing = False

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, D[0] // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(D[0] // 2), nn.GELU(),
            nn.Conv2d(D[0] // 2, D[0] // 2, 3, 1, 1, bias=False), nn.BatchNorm2d(D[0] // 2), nn.GELU(),
            nn.Conv2d(D[0] // 2, D[0], 3, 2, 1, bias=False), nn.BatchNorm2d(D[0]), nn.GELU(),
            nn.Conv2d(D[0], D[0], 3, 1, 1, bias=False), nn.BatchNorm2d(D[0]))
        all_depths = list(depths) + list(focus_depths)
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(all_depths), device='cpu').split(all_depths)]
        self.stages = nn.Sequential(*[
            BaseStage(D[i - 1] if i else D[0], D[i], depths[i], downsample=i > 0, kernel_size=kernel_sizes[i],
                      mlp_ratio=mlp_ratios[i], ls_init_value=ls_init_values[i], drop_path=dpr[i], deploy=deploy)
            for i in range(4)])
        self.overview_proj = nn.Conv2d(D[3], ctx_dim, 1)
        self.focus_stages = nn.ModuleList([
            FocusStage(D[1 + i], D[2 + i], ctx_dim, focus_depths[i], downsample=i == 1, first_is_first=i == 0,
                       last_is_last=i == 1, drop_path=dpr[4 + i], kernel_size=kernel_sizes[2 + i],
                       small_kernel_size=small_kernel_size, num_heads=focus_num_heads[i],
                       mlp_ratio=focus_mlp_ratios[i], ls_init_value=ls_init_values[2 + i], deploy=deploy)
            for i in range(2)])
        self.feature_info = [
            dict(num_chs=D[0], reduction=4, module='stages.0'),
            dict(num_chs=D[1], reduction=8, module='stages.1'),
            dict(num_chs=D[2] + ctx_dim, reduction=16, module='focus_stages.0'),
            dict(num_chs=D[3] + ctx_dim, reduction=32, module='focus_stages.1'),
        ]
        self.aux_head = AuxHead(D[3], num_classes) if deep_supervision else None
        self.aux_loss_weight = aux_loss_weight
        self._aux_logits: Optional[torch.Tensor] = None  # of the last training forward
        self.head = ConvClassifierHead(self.num_features, head_hidden_size, num_classes, global_pool, drop_rate)
        self.apply(_init_weights)
        set_module_kernel_impl(self, kernel_impl)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^stem',
            blocks=[(r'^stages\.(\d+)', None), (r'^overview_proj', (4,)), (r'^focus_stages\.(\d+)', (5,))]
            if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^overview_proj', (4,)),
                (r'^focus_stages\.(\d+)\.downsample', (5,)),
                (r'^focus_stages\.(\d+)\.blocks\.(\d+)', (6,)),
                (r'^aux_head', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in (*self.stages, *self.focus_stages):
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None and global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head.reset(num_classes, global_pool)
        if self.aux_head is not None:
            self.aux_head.reset(num_classes)

    def _base(self, x: torch.Tensor, upto: int = 3) -> List[torch.Tensor]:
        outs = []
        x = self.stem(x)
        for stage in self.stages[:upto + 1]:
            x = stage(x)
            outs.append(x)
        return outs

    def _focus(self, x: torch.Tensor, ctx: torch.Tensor, upto: int = 1) -> List[torch.Tensor]:
        """Focus-Net on the Base-Net output x (/16) guided by the Overview-Net output ctx (/32)."""
        prior = self.overview_proj(ctx)
        prior_up = F.interpolate(prior, size=x.shape[2:], mode='bilinear', align_corners=False)
        outs = []
        h = prior_up
        for i, stage in enumerate(self.focus_stages[:upto + 1]):
            x, h = stage(x, h, prior_up if i == 0 else prior)
            outs.append(x if h is None else torch.cat([x, h], dim=1))
        return outs

    def _forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features cat[x, h] at /32, Overview-Net output)."""
        check_input_size(x, self.in_chans, model_name=type(self).__name__)
        *_, x16, ctx = self._base(x)
        return self._focus(x16, ctx)[-1], ctx

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Pyramid features: Base stages 0, 1 (/4, /8), Focus stage outputs cat[x, h] (/16, /32).

        Not `_helpers.stage_intermediates`: the levels are not one stem + stages chain (the Focus-Net runs on the
        Base-Net output, guided by the Overview-Net's).

        Args:
            x: (B, C, H, W). indices: None (all 4), n (last n) or a list (negatives allowed).
            norm: unused (the dense-prediction copies' extra norms are not in the ImageNet checkpoints).
            stop_early: stop after the last selected level. output_fmt: 'NCHW' only.
            intermediates_only: return only the list.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f'OverLoCK produces NCHW features, output_fmt={output_fmt!r} is not supported')
        check_input_size(x, self.in_chans, model_name=type(self).__name__)
        take_indices, max_index = feature_take_indices(4, indices)
        levels = len(self.stages) if len(self.stages) < 4 else 2 + len(self.focus_stages)  # fewer after pruning
        if not stop_early:
            max_index = levels - 1
        if max_index <= 1:
            feats = self._base(x, max_index)
        else:
            base = self._base(x)
            feats = base[:2] + self._focus(base[2], base[3], max_index - 2)
        intermediates = [feats[i] for i in take_indices]
        return intermediates if intermediates_only else (feats[-1], intermediates)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what the selected levels do not need (and the heads): what features_only keeps."""
        take_indices, max_index = feature_take_indices(4, indices)
        if max_index <= 1:
            self.stages = self.stages[:max_index + 1]
            self.focus_stages = nn.ModuleList()
            self.overview_proj = nn.Identity()
        else:
            self.focus_stages = self.focus_stages[:max_index - 1]
        if prune_head:
            self.reset_classifier(0, '')
            self.aux_head = None
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(channels_last_on_cpu(x))[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    @torch.jit.ignore
    def training_losses(self, criterion: nn.Module, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Deep supervision of the last training forward: aux_loss_weight * criterion(aux logits, target)."""
        if self.aux_head is None:
            return {}
        if self._aux_logits is None:
            raise RuntimeError('training_losses() needs a training-mode forward first')
        aux_logits, self._aux_logits = self._aux_logits, None  # read once: a kept graph would block deepcopy
        return dict(deep_supervision=self.aux_loss_weight * criterion(aux_logits, target))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, ctx = self._forward(x)
        self._aux_logits = self.aux_head(ctx) if self.training and self.aux_head is not None else None
        return self.forward_head(feats)


def _init_weights(module: nn.Module) -> None:
    """The official init: trunc-normal(0.02) convs/linears with zero bias (norms keep their unit defaults)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _focus_key(match) -> str:
    return f'focus_stages.{int(match[1]) - 3}.blocks.'


# Official key -> ours, applied in order to every key.
_KEY_RULES = (
    (r'^patch_embed1\.', 'stem.'),
    (r'^patch_embed([234])\.', lambda m: f'stages.{int(m[1]) - 1}.downsample.'),
    (r'^blocks([1234])\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.'),
    (r'^high_level_proj\.', 'overview_proj.'),
    (r'^patch_embedx\.', 'focus_stages.1.downsample.'),
    (r'^sub_blocks([34])\.', _focus_key),
    (r'^(focus_stages\.\d\.blocks\.\d+)\.(rpb1|rpb2|weight_query|weight_key|weight_proj)', r'\1.contmix.\2'),
    (r'^head\.0\.', 'head.conv.'),
    (r'^head\.1\.', 'head.norm.'),
    (r'^head\.4\.', 'head.fc.'),
    (r'^aux_head\.0\.', 'aux_head.norm.'),
    (r'^aux_head\.2\.', 'aux_head.fc.'),
)


def checkpoint_filter_fn(state_dict: dict, model: OverLoCK) -> dict:
    """Convert an official OverLoCK checkpoint (train or deploy layout, bare or wrapped) to this layout.

    The official classifiers are 1x1 convs: their weights are reshaped for our Linear layers. A model built
    without the aux head drops the checkpoint's `aux_head.*`; ours pass through.
    """
    state_dict = unwrap_state_dict(state_dict, ema='prefer')
    if 'stem.0.weight' not in state_dict:
        state_dict = remap_state_dict(state_dict, _KEY_RULES)
    for key in ('head.fc.weight', 'aux_head.fc.weight'):
        if key in state_dict and state_dict[key].ndim == 4:
            state_dict[key] = state_dict[key].flatten(1)
    if model.aux_head is None:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('aux_head.')}
    check_state_dict_keys(state_dict, model, source='OverLoCK checkpoint')
    return state_dict


def _create_overlock(variant: str, pretrained: bool = False, **kwargs) -> OverLoCK:
    return build_model_with_cfg(
        OverLoCK, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.95, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0', 'classifier': ('head.fc', 'aux_head.fc'), 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2502.20087',
        'paper_name': 'OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels',
        'origin_url': 'https://github.com/LMMMEng/OverLoCK', **kwargs,
    }


_URL = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1'
default_cfgs = generate_default_cfgs({
    'overlock_xt.in1k': _cfg(url=f'{_URL}/overlock_xt_in1k_224.pth', crop_pct=0.925),
    'overlock_t.in1k': _cfg(url=f'{_URL}/overlock_t_in1k_224.pth', crop_pct=0.95),
    'overlock_s.in1k': _cfg(url=f'{_URL}/overlock_s_in1k_224.pth', crop_pct=0.95),
    'overlock_b.in1k': _cfg(url=f'{_URL}/overlock_b_in1k_224.pth', crop_pct=0.975),
    'overlock_xt_reparam.in1k': _cfg(url=f'{_URL}/overlock_xt_in1k_224_reparam.pth', crop_pct=0.925),
    'overlock_t_reparam.in1k': _cfg(url=f'{_URL}/overlock_t_in1k_224_reparam.pth', crop_pct=0.95),
    'overlock_s_reparam.in1k': _cfg(url=f'{_URL}/overlock_s_in1k_224_reparam.pth', crop_pct=0.95),
    'overlock_b_reparam.in1k': _cfg(url=f'{_URL}/overlock_b_in1k_224_reparam.pth', crop_pct=0.975),
})

@register_model
def overlock_xt(pretrained: bool = False, **kwargs) -> OverLoCK:
    model_args = dict(embed_dims=(56, 112, 256, 336), depths=(2, 2, 3, 2), focus_depths=(6, 2), focus_num_heads=(4, 6))
    return _create_overlock('overlock_xt', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def overlock_t(pretrained: bool = False, **kwargs) -> OverLoCK:
    model_args = dict(embed_dims=(64, 128, 256, 512), depths=(4, 4, 6, 2), focus_depths=(12, 2), focus_num_heads=(4, 8))
    return _create_overlock('overlock_t', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def overlock_s(pretrained: bool = False, **kwargs) -> OverLoCK:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(6, 6, 8, 3),
                      focus_depths=(16, 3), focus_num_heads=(8, 16))
    return _create_overlock('overlock_s', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def overlock_b(pretrained: bool = False, **kwargs) -> OverLoCK:
    model_args = dict(embed_dims=(80, 160, 384, 576), depths=(8, 8, 10, 4),
                      focus_depths=(20, 4), focus_num_heads=(6, 9))
    return _create_overlock('overlock_b', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def overlock_xt_reparam(pretrained: bool = False, **kwargs) -> OverLoCK:
    model_args = dict(embed_dims=(56, 112, 256, 336), depths=(2, 2, 3, 2),
                      focus_depths=(6, 2), focus_num_heads=(4, 6), deploy=True)
    return _create_overlock('overlock_xt_reparam', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def overlock_t_reparam(pretrained: bool = False, **kwargs) -> OverLoCK:
    model_args = dict(embed_dims=(64, 128, 256, 512), depths=(4, 4, 6, 2),
                      focus_depths=(12, 2), focus_num_heads=(4, 8), deploy=True)
    return _create_overlock('overlock_t_reparam', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def overlock_s_reparam(pretrained: bool = False, **kwargs) -> OverLoCK:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(6, 6, 8, 3),
                      focus_depths=(16, 3), focus_num_heads=(8, 16), deploy=True)
    return _create_overlock('overlock_s_reparam', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def overlock_b_reparam(pretrained: bool = False, **kwargs) -> OverLoCK:
    model_args = dict(embed_dims=(80, 160, 384, 576), depths=(8, 8, 10, 4),
                      focus_depths=(20, 4), focus_num_heads=(6, 9), deploy=True)
    return _create_overlock('overlock_b_reparam', pretrained=pretrained, **dict(model_args, **kwargs))
