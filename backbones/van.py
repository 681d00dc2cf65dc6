"""VAN: Visual Attention Network.

Paper: M.-H. Guo, C.-Z. Lu, Z.-N. Liu, M.-M. Cheng, S.-M. Hu, "Visual Attention Network",
Computational Visual Media 2023, https://arxiv.org/abs/2202.09741

    @article{guo2022visual,
      title={Visual Attention Network},
      author={Guo, Meng-Hao and Lu, Cheng-Ze and Liu, Zheng-Ning and Cheng, Ming-Ming and Hu, Shi-Min},
      journal={arXiv preprint arXiv:2202.09741},
      year={2022}
    }

Official code: https://github.com/Visual-Attention-Network/VAN-Classification, matched at commit
e19779b53a1b0828b51ecb4412d577541aee83a7 (models/van.py), Apache-2.0.

Structure: four stages (strides 4, 8, 16, 32). Each stage is an overlapping patch embedding
(conv 7x7/s4 or 3x3/s2, then BatchNorm), blocks, and a LayerNorm over channels (eps 1e-6). A block is
    x = x + ls1 * (proj_2(LKA(GELU(proj_1(BN(x))))) + BN(x))     # NOTE: inner shortcut from the normed x
    x = x + ls2 * fc2(GELU(dwconv3x3(fc1(BN(x)))))
with LKA(u) = u * conv1x1(dwconv7x7_dilation3(dwconv5x5(u))), a plain elementwise gate. The head is a
global average over the normed last-stage tokens and a Linear layer.

Measurements and their commands: docs/van.md.

Deviations (none changes the function):
- Modules are renamed to timm's layout (`stages.i.downsample/blocks/norm`, `ls1.gamma`, `head.fc`);
  `checkpoint_filter_fn` maps the official keys.
- LKA's dilated depthwise conv runs through `layers.dilated_dwconv2d` (exact fast `subgrid` path by default).
- The official bugs in `reset_classifier`/`no_weight_decay` are not reproduced.
- Dropout inside the MLP is `proj_drop_rate` (official `drop_rate`); `drop_rate` is head dropout, as in timm.
- van_b4, van_b5 and van_b6 have no released ImageNet-1k weights; they are registered architecture-only.
"""
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, LayerNorm2d, LayerScale2d, get_act_layer, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, named_apply, register_model

from layers import LargeKernelAttention, set_module_kernel_impl
from ._helpers import (
    build_model_with_cfg, check_input_size, check_state_dict_keys, hf_hub_weights, prune_stages, remap_state_dict,
    stage_intermediates, unwrap_state_dict,
)

__all__ = ['VAN']

class SpatialAttention(nn.Module):
    """proj_1 -> GELU -> LKA -> proj_2, plus a shortcut from its own input (before layer scale)."""

    def __init__(self, dim: int, act_layer=nn.GELU):
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.act = act_layer()
        self.lka = LargeKernelAttention(dim, kernel_size=5, dilated_kernel_size=7, dilation=3)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.proj_2(self.lka(self.act(self.proj_1(x))))
        return x + shortcut


class DwConvMlp(nn.Module):
    """1x1 conv -> depthwise 3x3 conv -> act -> 1x1 conv, on NCHW (the depthwise conv comes before the act)."""

    def __init__(self, dim: int, hidden_dim: int, act_layer=nn.GELU, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.dwconv(self.fc1(x))))
        return self.drop2(self.fc2(x))


class Block(nn.Module):
    """VAN block: BatchNorm -> spatial attention and BatchNorm -> MLP, each with layer scale and drop path."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            ls_init_value: float = 1e-2,
            act_layer=nn.GELU,
    ):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim, act_layer=act_layer)
        self.ls1 = LayerScale2d(dim, ls_init_value)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = DwConvMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale2d(dim, ls_init_value)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class OverlapPatchEmbed(nn.Module):
    """Strided conv with padding kernel // 2 (overlapping patches), then BatchNorm."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class VANStage(nn.Module):
    """Patch embedding, blocks, then LayerNorm over channels."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            first: bool,
            mlp_ratio: float,
            proj_drop: float,
            drop_path: List[float],
            ls_init_value: float,
            act_layer,
            norm_eps: float,
    ):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = OverlapPatchEmbed(in_chs, out_chs, kernel_size=7 if first else 3, stride=4 if first else 2)
        self.blocks = nn.Sequential(*[
            Block(out_chs, mlp_ratio, proj_drop, drop_path[j], ls_init_value, act_layer)
            for j in range(depth)])
        self.norm = LayerNorm2d(out_chs, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class VAN(nn.Module):
    """Visual Attention Network."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Tuple[int, ...] = (64, 128, 320, 512),
            depths: Tuple[int, ...] = (3, 4, 6, 3),
            mlp_ratios: Tuple[float, ...] = (8, 8, 4, 4),
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            ls_init_value: float = 1e-2,
            act_layer: Union[str, type] = 'gelu',
            norm_eps: float = 1e-6,
            kernel_impl: Optional[str] = None,
    ):
        """
        Args:
            in_chans: input image channels.
            num_classes: classifier outputs (0 for no classifier).
            global_pool: head pooling type ('avg', 'max', ... or '' for none).
            embed_dims: channels of each stage.
            depths: blocks per stage.
            mlp_ratios: MLP hidden width ratio per stage.
            drop_rate: dropout before the classifier.
            proj_drop_rate: dropout inside the MLPs.
            drop_path_rate: stochastic depth rate, linear over all blocks.
            ls_init_value: initial layer-scale value.
            act_layer: activation (GELU, exact erf).
            norm_eps: eps of the per-stage LayerNorms.
            kernel_impl: implementation of LKA's dilated conv (None: process-wide setting, see layers.config).
        """
        super().__init__()
        assert len(embed_dims) == len(depths) == len(mlp_ratios)
        act_layer = get_act_layer(act_layer)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False

        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(depths)]
        stages = []
        self.feature_info = []
        in_chs, reduction = in_chans, 2
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            reduction *= 2
            stages.append(VANStage(
                in_chs, dim, depth, first=i == 0, mlp_ratio=mlp_ratios[i], proj_drop=proj_drop_rate,
                drop_path=dpr[i], ls_init_value=ls_init_value, act_layer=act_layer, norm_eps=norm_eps))
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f'stages.{i}'))
            in_chs = dim
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

        named_apply(_init_weights, self)
        set_module_kernel_impl(self, kernel_impl)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^stages\.0\.downsample',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^stages\.(\d+)\.norm', (99999,)),
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
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward returning the outputs of the selected stages (each already LayerNormed, as in VAN).

        Args:
            x: (B, C, H, W) input.
            indices: None for all stages, n for the last n, or a list of stage indices (negatives allowed).
            norm: unused: every stage ends with its own norm.
            stop_early: stop after the last selected stage.
            output_fmt: 'NCHW' only.
            intermediates_only: return only the list of intermediates.
        """
        return stage_intermediates(self, x, lambda t: t, indices, stop_early, output_fmt, intermediates_only)

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last selected one (and the head): what features_only keeps."""
        return prune_stages(self, indices, prune_head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.in_chans, model_name=type(self).__name__)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module, name: Optional[str] = None) -> None:
    """The official init: trunc-normal Linear, fan-out normal (He) convs, unit norms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0., (2. / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# Official key -> ours, applied in order to every key.
_KEY_RULES = (
    (r'^patch_embed(\d+)\.', lambda m: f'stages.{int(m[1]) - 1}.downsample.'),
    (r'^block(\d+)\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.'),
    (r'^norm(\d+)\.', lambda m: f'stages.{int(m[1]) - 1}.norm.'),
    (r'\.attn\.spatial_gating_unit\.', '.attn.lka.'),
    (r'\.mlp\.dwconv\.dwconv\.', '.mlp.dwconv.'),
    (r'\.layer_scale_1$', '.ls1.gamma'),
    (r'\.layer_scale_2$', '.ls2.gamma'),
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
)


def checkpoint_filter_fn(state_dict: dict, model: VAN) -> dict:
    """Convert an official VAN checkpoint (bare, or under 'state_dict') to this layout; ours pass through."""
    state_dict = unwrap_state_dict(state_dict)
    if 'stages.0.downsample.proj.weight' not in state_dict:
        state_dict = remap_state_dict(state_dict, _KEY_RULES)
    check_state_dict_keys(state_dict, model, source='VAN checkpoint')
    return state_dict


def _create_van(variant: str, pretrained: bool = False, **kwargs) -> VAN:
    return build_model_with_cfg(
        VAN, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, **(hf_hub_weights(url) if url else {}),
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.9, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stages.0.downsample.proj', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2202.09741', 'paper_name': 'Visual Attention Network',
        'origin_url': 'https://github.com/Visual-Attention-Network/VAN-Classification', **kwargs,
    }


_HF = 'https://huggingface.co/Visual-Attention-Network'
default_cfgs = generate_default_cfgs({
    'van_b0.in1k': _cfg(url=f'{_HF}/VAN-Tiny-original/resolve/main/van_tiny_754.pth.tar'),
    'van_b1.in1k': _cfg(url=f'{_HF}/VAN-Small-original/resolve/main/van_small_811.pth.tar'),
    'van_b2.in1k': _cfg(url=f'{_HF}/VAN-Base-original/resolve/main/van_base_828.pth.tar'),
    'van_b3.in1k': _cfg(url=f'{_HF}/VAN-Large-original/resolve/main/van_large_839.pth.tar'),
    'van_b4': _cfg(notes='architecture only: no official ImageNet-1k weights'),
    'van_b5': _cfg(notes='architecture only: no official ImageNet-1k weights'),
    'van_b6': _cfg(notes='architecture only: no official ImageNet-1k weights'),
})


@register_model
def van_b0(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b0', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def van_b1(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b1', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def van_b2(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b2', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def van_b3(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 5, 27, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b3', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def van_b4(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b4', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def van_b5(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(96, 192, 480, 768), depths=(3, 3, 24, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b5', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def van_b6(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(96, 192, 384, 768), depths=(6, 6, 90, 6), mlp_ratios=(8, 8, 4, 4))
    return _create_van('van_b6', pretrained=pretrained, **dict(model_args, **kwargs))
