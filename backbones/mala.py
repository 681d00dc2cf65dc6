"""MAViT: the backbone of MALA, Magnitude-Aware Linear Attention.

Paper: Q. Fan, H. Huang, Y. Ai, R. He, "Rectifying Magnitude Neglect in Linear Attention", ICCV 2025,
https://arxiv.org/abs/2507.00698

    @inproceedings{fan2025rectifying,
      title={Rectifying Magnitude Neglect in Linear Attention},
      author={Fan, Qihang and Huang, Huaibo and Ai, Yuang and He, Ran},
      booktitle={ICCV},
      year={2025}
    }

Official code: https://github.com/qhfan/MALA, matched at commit 7114e6391e16a79e52382cbbcaa7f035705f3449
(classfication_release/model.py, classes MALA_T/S/B/L). The repository has no licence file for this code.

Structure (NCHW throughout, every linear layer a 1x1 conv): a 4-conv stem (stride 4, BatchNorm + GELU),
four stages, a head 1x1 conv -> BatchNorm -> SiLU -> average pool -> linear. A block is
    x = x + dwconv3x3(x)                                               # conditional position encoding
    x = x + ls1 * proj((attn(q, k, v) + dwconv5x5(v)) * o)              # q|k|v|o = qkvo(LN(x)), o a gate
    x = x + ls2 * fc2(h + dwconv3x3(h)), h = GELU(fc1(LN(x)))
Stages 1-2 use magnitude-aware linear attention, stages 3-4 softmax attention, both with 2-D rotary position
embedding on q and k (`layers.linear_attn`). Stage i > 0 starts with a 3x3/2 conv + BatchNorm.

Measurements (incl. the 4.6 vs 4.92 G FLOPs question) and their commands: docs/mala.md.

Deviations (none changes the function):
- timm layout: the official downsample at the end of stage i is `stages.{i+1}.downsample` here, so stage
  features come before downsampling; `gamma_1/2` ([1, C, 1, 1]) are `ls1/2.gamma` ([C]); the classifier is a
  Linear (the official 1x1 conv's weight is reshaped on load); the RoPE angle buffer is recomputed (dropped
  from checkpoints: it depends only on head_dim).
- The official Swish is a custom autograd Function with the same forward as SiLU; SiLU is used.
- `drop_path_rate` defaults to 0 as in timm; the official constructors' training rates (0.1/0.15/0.4/0.55)
  are in the recipes (configs/mala).
"""
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, LayerScale2d, SelectAdaptivePool2d, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, named_apply, register_model

from layers import linear_attention, rope_2d, set_module_kernel_impl, softmax_attention
from ._helpers import (
    build_model_with_cfg, channels_last_on_cpu, check_input_size, check_state_dict_keys, prune_stages, remap_state_dict,
    stage_intermediates, unwrap_state_dict,
)

__all__ = ['MAViT']


class GatedAttention(nn.Module):
    """qkvo 1x1 conv; attention over q, k, v with 2-D RoPE; plus LePE (dw 5x5 on v); gated by o; 1x1 proj.

    `linear=True`: magnitude-aware linear attention; else softmax attention.
    """

    def __init__(self, dim: int, num_heads: int, linear: bool):
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.linear = linear
        self.kernel_impl: Optional[str] = None  # the operator's implementation, set by the model
        self.qkvo = nn.Conv2d(dim, dim * 4, 1)
        self.lepe = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkvo = self.qkvo(x)
        qkv, gate = qkvo[:, :3 * C], qkvo[:, 3 * C:]
        lepe = self.lepe(qkv[:, 2 * C:])
        # channels are (q|k|v, head, d): (B, 3C, H, W) -> 3 x (B, heads, HW, d)
        q, k, v = qkv.reshape(B, 3, self.num_heads, self.head_dim, H * W).permute(1, 0, 2, 4, 3)
        rope = rope_2d(H, W, self.head_dim, device=x.device, dtype=x.dtype)
        if self.linear:
            out = linear_attention(q, k, v, self.scale, rope, magnitude_aware=True, impl=self.kernel_impl)
        else:
            out = softmax_attention(q, k, v, self.scale, rope, impl=self.kernel_impl)
        out = out.transpose(-2, -1).reshape(B, C, H, W)
        return self.proj((out + lepe) * gate)


class ConvFfn(nn.Module):
    """fc1 -> GELU -> h + dwconv3x3(h) -> fc2 (1x1 convs)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        return self.fc2(x + self.dwconv(x))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, linear: bool, drop_path: float = 0.,
                 ls_init_value: float = 1.):
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.attn = GatedAttention(dim, num_heads, linear)
        self.ls1 = LayerScale2d(dim, ls_init_value)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = LayerNorm2d(dim, eps=1e-6)
        self.mlp = ConvFfn(dim, int(mlp_ratio * dim))
        self.ls2 = LayerScale2d(dim, ls_init_value)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class Downsample(nn.Module):
    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class MAViTStage(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, depth: int, num_heads: int, mlp_ratio: float, linear: bool,
                 drop_path: List[float], ls_init_value: float, downsample: bool):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = Downsample(in_chs, out_chs) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            Block(out_chs, num_heads, mlp_ratio, linear, drop_path[j], ls_init_value)
            for j in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class MAViTHead(nn.Module):
    """1x1 conv to `hidden_size` -> BatchNorm -> SiLU -> pool -> Linear."""

    def __init__(self, in_chs: int, hidden_size: int, num_classes: int, pool_type: str = 'avg', drop_rate: float = 0.):
        super().__init__()
        self.proj = nn.Conv2d(in_chs, hidden_size, 1)
        self.norm = nn.BatchNorm2d(hidden_size)
        self.act = nn.SiLU()
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: Optional[str] = None) -> None:
        if pool_type is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.fc = nn.Linear(self.proj.out_channels, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(self.act(self.norm(self.proj(x))))
        if pre_logits or x.ndim == 4:  # no pooling: the unpooled map
            return x
        return self.fc(self.drop(x))


class MAViT(nn.Module):
    """MAViT / MALA classification backbone."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Tuple[int, ...] = (64, 128, 256, 512),
            depths: Tuple[int, ...] = (2, 2, 6, 2),
            num_heads: Tuple[int, ...] = (1, 2, 4, 8),
            mlp_ratio: float = 3.5,
            linear_stages: Tuple[bool, ...] = (True, True, False, False),
            head_hidden_size: int = 2048,
            ls_init_values: Tuple[float, ...] = (1., 1., 1., 1.),
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            kernel_impl: Optional[str] = None,
    ):
        """
        Args:
            in_chans, num_classes, global_pool: as in timm.
            embed_dims, depths, num_heads: per stage.
            mlp_ratio: FFN hidden width ratio.
            linear_stages: per stage, magnitude-aware linear attention (True) or softmax attention (False).
            head_hidden_size: channels of the head's 1x1 projection (official `projection`).
            ls_init_values: per-stage layer-scale init.
            drop_rate: dropout before the classifier. drop_path_rate: stochastic depth, linear over blocks.
            kernel_impl: attention implementation (None: process-wide setting, see layers.config).
        """
        super().__init__()
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = embed_dims[-1]
        self.head_hidden_size = head_hidden_size
        self.grad_checkpointing = False
        stem_chs = embed_dims[0] // 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_chs, 3, 2, 1), nn.BatchNorm2d(stem_chs), nn.GELU(),
            nn.Conv2d(stem_chs, stem_chs, 3, 1, 1), nn.BatchNorm2d(stem_chs), nn.GELU(),
            nn.Conv2d(stem_chs, stem_chs, 3, 1, 1), nn.BatchNorm2d(stem_chs), nn.GELU(),
            nn.Conv2d(stem_chs, embed_dims[0], 3, 2, 1), nn.BatchNorm2d(embed_dims[0]),
        )
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(depths)]
        stages, self.feature_info = [], []
        in_chs, reduction = embed_dims[0], 4
        for i, dim in enumerate(embed_dims):
            if i > 0:
                reduction *= 2
            stages.append(MAViTStage(in_chs, dim, depths[i], num_heads[i], mlp_ratio, linear_stages[i], dpr[i],
                                     ls_init_values[i], i > 0))
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f'stages.{i}'))
            in_chs = dim
        self.stages = nn.Sequential(*stages)
        self.head = MAViTHead(self.num_features, head_hidden_size, num_classes, global_pool, drop_rate)
        named_apply(_init_weights, self)
        set_module_kernel_impl(self, kernel_impl)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^stem', blocks=r'^stages\.(\d+)' if coarse else [
            (r'^stages\.(\d+)\.downsample', (0,)), (r'^stages\.(\d+)\.blocks\.(\d+)', None)])

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
        self.head.reset(num_classes, global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (before the next stage's downsampling).

        Args:
            x: (B, C, H, W) input. indices: None (all), n (last n) or a list of stage indices.
            norm: unused (MAViT has no final norm before the head). stop_early: stop after the last selected.
            output_fmt: 'NCHW' only. intermediates_only: return only the intermediates.
        """
        return stage_intermediates(self, x, self.stem, indices, stop_early, output_fmt, intermediates_only)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        return prune_stages(self, indices, prune_head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.in_chans, model_name=type(self).__name__)
        return self.stages(self.stem(channels_last_on_cpu(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module, name: Optional[str] = None) -> None:
    """The official init: trunc-normal(0.02) convs (and our Linear classifier), zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


_DROP_KEYS = (r'\.RoPE\.angle$',)  # recomputed from head_dim
_KEY_RULES = (
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
    (r'^proj\.', 'head.proj.'),
    (r'^norm\.', 'head.norm.'),
    (r'^patch_embed\.proj\.', 'stem.'),
    (r'^layers\.(\d+)\.downsample\.reduction\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.conv.'),
    (r'^layers\.(\d+)\.downsample\.norm\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.norm.'),
    (r'^layers\.(\d+)\.blocks\.', r'stages.\1.blocks.'),
    (r'\.norm([12])\.norm\.', r'.norm\1.'),
    (r'\.gamma_([12])$', r'.ls\1.gamma'),
    (r'\.ffn\.', '.mlp.'),
)


def checkpoint_filter_fn(state_dict: dict, model: MAViT) -> dict:
    """Convert an official MALA checkpoint (bare, or under 'model') to this layout; ours pass through."""
    state_dict = unwrap_state_dict(state_dict)
    if 'stem.0.weight' not in state_dict:
        state_dict = remap_state_dict(state_dict, _KEY_RULES, drop=_DROP_KEYS)
        for key, value in state_dict.items():
            if key.endswith(('.ls1.gamma', '.ls2.gamma')) or key == 'head.fc.weight':
                state_dict[key] = value.reshape(value.shape[0], -1) if key == 'head.fc.weight' else value.reshape(-1)
    check_state_dict_keys(state_dict, model, source='MALA checkpoint')
    return state_dict


def _create_mavit(variant: str, pretrained: bool = False, **kwargs) -> MAViT:
    return build_model_with_cfg(
        MAViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0', 'classifier': 'head.fc', 'license': 'unknown',
        'paper_ids': 'arXiv:2507.00698', 'paper_name': 'Rectifying Magnitude Neglect in Linear Attention',
        'origin_url': 'https://github.com/qhfan/MALA',
        'notes': 'weights: https://huggingface.co/aldjalkdf/MAViT (file names unverified; wrapper "model")', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'mala_t.in1k': _cfg(),
    'mala_s.in1k': _cfg(),
    'mala_b.in1k': _cfg(),
    'mala_l.in1k': _cfg(),
})


@register_model
def mala_t(pretrained: bool = False, **kwargs) -> MAViT:
    model_args = dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8),
                      head_hidden_size=2048, ls_init_values=(1., 1., 1., 1.))
    return _create_mavit('mala_t', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def mala_s(pretrained: bool = False, **kwargs) -> MAViT:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 5, 9, 3), num_heads=(1, 2, 5, 8),
                      head_hidden_size=2048, ls_init_values=(1., 1., 1., 1.))
    return _create_mavit('mala_s', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def mala_b(pretrained: bool = False, **kwargs) -> MAViT:
    model_args = dict(embed_dims=(96, 192, 384, 512), depths=(4, 6, 12, 6), num_heads=(1, 2, 6, 8),
                      head_hidden_size=2048, ls_init_values=(1., 1., 1e-6, 1e-6))
    return _create_mavit('mala_b', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def mala_l(pretrained: bool = False, **kwargs) -> MAViT:
    model_args = dict(embed_dims=(96, 192, 448, 640), depths=(4, 7, 19, 8), num_heads=(1, 2, 7, 10),
                      head_hidden_size=2560, ls_init_values=(1e-6, 1e-6, 1e-6, 1e-6))
    return _create_mavit('mala_l', pretrained=pretrained, **dict(model_args, **kwargs))
