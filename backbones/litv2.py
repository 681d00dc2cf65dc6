"""LITv2: Fast Vision Transformers with HiLo Attention.

Paper: Z. Pan, J. Cai, B. Zhuang, "Fast Vision Transformers with HiLo Attention", NeurIPS 2022,
https://arxiv.org/abs/2205.13213

    @inproceedings{pan2022hilo,
      title={Fast Vision Transformers with HiLo Attention},
      author={Pan, Zizheng and Cai, Jianfei and Zhuang, Bohan},
      booktitle={NeurIPS},
      year={2022}
    }

Official code: https://github.com/ziplab/LITv2, matched at commit 7501c8662991cad6db780b61fac0886b56a76588
(classification/models/{litv2,layers,blocks,attentions,patch_embed}.py; padding rules from
detection/mmdet/models/backbones/litv2.py), Apache-2.0.

Structure (tokens kept as (B, H, W, C) maps): a 4x4/s4 conv stem + LayerNorm; four stages (strides 4-32); stages
1-2 are attention-free, each block `x = x + ConvFFN(LN(x))`; stages 3-4 add HiLo attention before it,
`x = x + HiLo(LN(x))`. ConvFFN = fc1 -> depthwise 3x3 conv -> GELU -> fc2 (ratio 4). HiLo (`layers.HiLoAttention`)
gives int(alpha * heads) heads (alpha 0.9) to Lo-Fi attention over 2x2 average-pooled keys/values and the rest to
Hi-Fi attention in 2x2 windows in stage 3; stage 4 (window 1) is plain global attention. Stages 2-4 start with
deformable token merging (`layers.DeformTokenMerge`: a 2x2/s2 deformable conv whose offsets come from a 2x2/s2
conv, BatchNorm, GELU). Head: LayerNorm on every token, global average, Linear. No position embedding at all.
The alpha-ablation models of release v1.1 are registered as `litv2_s_alpha{0,02,04,05,07,1}`.

Measurements (FLOPs against the official `flops()`, kernel speed) and their commands: docs/litv2.md.

Deviations (none changes the function at the trained resolutions):
- timm layout: the official downsample at the end of stage i is `stages.{i+1}.downsample` here, `patch_embed`
  is `stem`, `mlp.dwconv.dwconv` is `mlp.dwconv`, the head Linear is `head.fc`; `checkpoint_filter_fn` maps the
  official keys (wrapped under 'model' in the released files).
- Any input size, as the official detection/segmentation backbone handles it (the classification model asserts
  its constructed square size): the image is zero-padded at the right/bottom to a multiple of 4; HiLo pads each
  map to a multiple of its window and crops (`layers.hilo_attention`); token merging floors odd sides (k2/s2/p0).
  Inputs need at least 29 x 29 px (three merges after the stem). Non-square inputs work.
- Deformable convolution: `torchvision.ops.deform_conv2d` (or our pure-PyTorch reference) instead of the
  repository's CUDA extension, whose kernel computes the same function (same offset layout and border rule).
- HiLo's fast path computes the Hi-Fi q|k|v and the Lo-Fi q in one GEMM and runs both attention cores through
  `scaled_dot_product_attention` (equal to the official matmul/softmax path to float rounding).
- `drop_path_rate` defaults to 0 as in timm; the official training rates (S 0.2, M 0.3, B 0.5) are in the
  recipes (configs/litv2). The official `qk_scale` is None in every release and is not exposed.
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, named_apply, register_model

from layers import DeformTokenMerge, HiLoAttention, set_module_kernel_impl
from ._helpers import (
    build_model_with_cfg, check_input_size, check_state_dict_keys, feature_take_indices, prune_stages,
    remap_state_dict, unwrap_state_dict,
)

__all__ = ['LITv2']


class Stem(nn.Module):
    """Patch embedding: pad to a multiple of the patch size, conv patch x patch / stride patch, LayerNorm.

    (B, C, H, W) -> (B, H / 4, W / 4, C0).
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        pad_r, pad_b = -x.shape[-1] % p, -x.shape[-2] % p
        if pad_r or pad_b:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvFfn(nn.Module):
    """fc1 -> depthwise 3x3 conv (zero padding) -> GELU -> fc2, on (B, H, W, C) maps."""

    def __init__(self, dim: int, hidden_dim: int, act_layer=nn.GELU, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the NHWC map viewed as NCHW is channels_last: the depthwise conv runs without a layout copy
        x = self.dwconv(self.fc1(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.drop2(self.fc2(self.drop1(self.act(x))))


class ConvFfnBlock(nn.Module):
    """Attention-free block of stages 1-2: x + DropPath(ConvFFN(LN(x)))."""

    def __init__(self, dim: int, mlp_ratio: float = 4., proj_drop: float = 0., drop_path: float = 0.):
        super().__init__()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ConvFfn(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class Block(nn.Module):
    """x + DropPath(HiLo(LN(x))), then x + DropPath(ConvFFN(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, window_size: int, alpha: float, mlp_ratio: float = 4.,
                 qkv_bias: bool = True, proj_drop: float = 0., drop_path: float = 0.):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = HiLoAttention(dim, num_heads, window_size, alpha, qkv_bias=qkv_bias)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ConvFfn(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class LITv2Stage(nn.Module):
    """Optional deformable token merging (from the previous stage's width), then blocks; (B, H, W, C) maps."""

    def __init__(self, in_chs: int, dim: int, depth: int, num_heads: int, attention: bool, window_size: int,
                 alpha: float, mlp_ratio: float, qkv_bias: bool, proj_drop: float, drop_path: List[float],
                 downsample: bool):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = DeformTokenMerge(in_chs, dim) if downsample else None
        if attention:
            blocks = [Block(dim, num_heads, window_size, alpha, mlp_ratio, qkv_bias, proj_drop, drop_path[j])
                      for j in range(depth)]
        else:
            blocks = [ConvFfnBlock(dim, mlp_ratio, proj_drop, drop_path[j]) for j in range(depth)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            # contiguous NHWC: a strided map would propagate through the residual adds and cost a copy per op
            x = self.downsample(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class LITv2(nn.Module):
    """LITv2 (HiLo attention) classification backbone."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 96,
            depths: Tuple[int, ...] = (2, 2, 6, 2),
            num_heads: Tuple[int, ...] = (3, 6, 12, 24),
            attn_stages: Tuple[bool, ...] = (False, False, True, True),
            window_sizes: Tuple[int, ...] = (0, 0, 2, 1),
            alpha: float = 0.9,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            patch_size: int = 4,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            kernel_impl: Optional[str] = None,
    ):
        """
        Args:
            in_chans, num_classes, global_pool: as in timm.
            embed_dim: channels of stage 1 (doubled at every stage).
            depths, num_heads: per stage (heads of attention-free stages are unused, as in the official code).
            attn_stages: per stage, HiLo blocks (True) or attention-free ConvFFN blocks (official `has_msa`).
            window_sizes: per stage, HiLo window / pooling size (official `local_ws`; 1 = global attention).
            alpha: fraction of Lo-Fi heads.
            mlp_ratio: ConvFFN hidden width ratio. qkv_bias: bias on the HiLo q/k/v projections.
            patch_size: stem patch size (stride of stage 1).
            drop_rate: dropout before the classifier. proj_drop_rate: dropout inside the ConvFFNs.
            drop_path_rate: stochastic depth, linear over all blocks (attention-free ones included).
            kernel_impl: implementation of HiLo and of the deformable conv (None: process-wide setting).
        """
        super().__init__()
        num_stages = len(depths)
        assert len(num_heads) == len(attn_stages) == len(window_sizes) == num_stages
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.patch_size = patch_size
        dims = [embed_dim * 2 ** i for i in range(num_stages)]
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, embed_dim, patch_size)
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(depths)]
        stages, self.feature_info = [], []
        for i, dim in enumerate(dims):
            stages.append(LITv2Stage(
                dims[i - 1] if i > 0 else dim, dim, depths[i], num_heads[i], attn_stages[i], window_sizes[i], alpha,
                mlp_ratio, qkv_bias, proj_drop_rate, dpr[i], downsample=i > 0))
            self.feature_info.append(dict(num_chs=dim, reduction=patch_size * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        named_apply(_init_weights, self)
        set_module_kernel_impl(self, kernel_impl)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head.reset(num_classes, pool_type=global_pool)

    def _check_input(self, x: torch.Tensor) -> None:
        check_input_size(x, self.in_chans, model_name=type(self).__name__)
        # every token merge needs a map of at least 2 x 2
        min_size = self.patch_size * (2 ** (len(self.stages) - 1) - 1) + 1
        if x.shape[-2] < min_size or x.shape[-1] < min_size:
            raise ValueError(f'{type(self).__name__} needs an input of at least {min_size} x {min_size} px '
                             f'({len(self.stages) - 1} 2x2 token merges after the stem), got {tuple(x.shape[-2:])}')

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (before the next stage's token merging), as NCHW or NHWC maps.

        Not `_helpers.stage_intermediates`, which serves NCHW stages: LITv2's stages run on NHWC tokens.

        Args:
            x: (B, C, H, W) input. indices: None (all), n (last n) or a list of stage indices.
            norm: apply the final LayerNorm to the last stage's output when it is selected.
            stop_early: stop after the last selected stage. output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: return only the intermediates.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f'{type(self).__name__}: output_fmt must be NCHW or NHWC, got {output_fmt!r}')
        self._check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        x = self.stem(x)
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                out = self.norm(x) if norm and i == last else x
                intermediates.append(out.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else out)
        if intermediates_only:
            return intermediates
        return self.norm(x).permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Keep the stages up to the last selected one; optionally drop the final norm and the head."""
        return prune_stages(self, indices, prune_head, prune_norm)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, C4, H / 32, W / 32) LayerNormed last-stage map (NCHW)."""
        self._check_input(x)
        return self.norm(self.stages(self.stem(x))).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module, name: Optional[str] = None) -> None:
    """The official init: trunc-normal(0.02) Linear with zero bias, He-normal depthwise FFN conv with zero bias.

    The stem conv keeps PyTorch's default init and the deformable convs their own (zero offset branch).
    """
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, ConvFfn):
        conv = module.dwconv
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
        nn.init.normal_(conv.weight, 0., (2. / fan_out) ** 0.5)
        nn.init.zeros_(conv.bias)


# Official key -> ours, applied in order to every key.
_KEY_RULES = (
    (r'^patch_embed\.', 'stem.'),
    (r'^layers\.(\d+)\.downsample\.dconv\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.conv.'),
    (r'^layers\.(\d+)\.downsample\.norm_layer\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.norm.'),
    (r'^layers\.(\d+)\.blocks\.', r'stages.\1.blocks.'),
    (r'\.mlp\.dwconv\.dwconv\.', '.mlp.dwconv.'),
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
)


def checkpoint_filter_fn(state_dict: dict, model: LITv2) -> dict:
    """Convert an official LITv2 checkpoint (under 'model', or bare) to this layout; ours pass through."""
    state_dict = unwrap_state_dict(state_dict)
    if 'stem.proj.weight' not in state_dict:
        state_dict = remap_state_dict(state_dict, _KEY_RULES)
    check_state_dict_keys(state_dict, model, source='LITv2 checkpoint')
    return state_dict


def _create_litv2(variant: str, pretrained: bool = False, **kwargs) -> LITv2:
    return build_model_with_cfg(
        LITv2, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.proj', 'classifier': 'head.fc', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2205.13213', 'paper_name': 'Fast Vision Transformers with HiLo Attention',
        'origin_url': 'https://github.com/ziplab/LITv2', **kwargs,
    }


_RELEASE = 'https://github.com/ziplab/LITv2/releases/download'
default_cfgs = generate_default_cfgs({
    'litv2_s.in1k': _cfg(url=f'{_RELEASE}/v1.0/litv2_s.pth'),
    'litv2_s.in1k_alpha_ablation': _cfg(
        url=f'{_RELEASE}/v1.1/alpha_0.9.pth', notes='alpha ablation run (README: 82.03 top-1), same architecture'),
    'litv2_m.in1k': _cfg(url=f'{_RELEASE}/v1.0/litv2_m.pth'),
    'litv2_b.in1k': _cfg(url=f'{_RELEASE}/v1.0/litv2_b.pth'),
    # NOTE: the 384 model is evaluated by resizing straight to 384 x 384 (official TEST.CROP False)
    'litv2_b_384.in1k': _cfg(url=f'{_RELEASE}/v1.0/litv2_b_384.pth', input_size=(3, 384, 384), pool_size=(12, 12),
                             crop_pct=1.0, crop_mode='squash'),
    'litv2_s_alpha0.in1k': _cfg(url=f'{_RELEASE}/v1.1/alpha_0.pth'),
    'litv2_s_alpha02.in1k': _cfg(url=f'{_RELEASE}/v1.1/alpha_0.2.pth'),
    'litv2_s_alpha04.in1k': _cfg(url=f'{_RELEASE}/v1.1/alpha_0.4.pth'),
    'litv2_s_alpha05.in1k': _cfg(url=f'{_RELEASE}/v1.1/alpha_0.5.pth'),
    'litv2_s_alpha07.in1k': _cfg(url=f'{_RELEASE}/v1.1/alpha_0.7.pth'),
    'litv2_s_alpha1.in1k': _cfg(url=f'{_RELEASE}/v1.1/alpha_1.pth'),
})


@register_model
def litv2_s(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), alpha=0.9)
    return _create_litv2('litv2_s', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_m(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), alpha=0.9)
    return _create_litv2('litv2_m', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_b(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), alpha=0.9)
    return _create_litv2('litv2_b', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_b_384(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), alpha=0.9)
    return _create_litv2('litv2_b_384', pretrained=pretrained, **dict(model_args, **kwargs))


# LITv2-S trained with other Lo-Fi fractions (release v1.1, the paper's alpha ablation); alpha 0.9 is litv2_s.
@register_model
def litv2_s_alpha0(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), alpha=0.0)
    return _create_litv2('litv2_s_alpha0', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_s_alpha02(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), alpha=0.2)
    return _create_litv2('litv2_s_alpha02', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_s_alpha04(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), alpha=0.4)
    return _create_litv2('litv2_s_alpha04', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_s_alpha05(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), alpha=0.5)
    return _create_litv2('litv2_s_alpha05', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_s_alpha07(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), alpha=0.7)
    return _create_litv2('litv2_s_alpha07', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_s_alpha1(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), alpha=1.0)
    return _create_litv2('litv2_s_alpha1', pretrained=pretrained, **dict(model_args, **kwargs))
