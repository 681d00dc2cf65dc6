"""LSNet: See Large, Focus Small.

Paper: A. Wang, H. Chen, Z. Lin, J. Han, G. Ding, "LSNet: See Large, Focus Small", CVPR 2025,
https://arxiv.org/abs/2503.23135

    @inproceedings{wang2025lsnet,
      title={LSNet: See Large, Focus Small},
      author={Wang, Ao and Chen, Hui and Lin, Zijia and Han, Jungong and Ding, Guiguang},
      booktitle={CVPR},
      year={2025}
    }

Official code: https://github.com/THU-MIG/lsnet, matched at commit cbe737c92b7c43ecf02d08545a07f03f1010177c
(model/lsnet.py, model/ska.py). No licence file in the repository.

Structure: a 3-conv stem (stride 8), four stages (stages 1-3 start with a dw 3x3/2 conv + 1x1 conv, both
Conv-BN), global average pool, BatchNorm1d + Linear head (distilled variants: a second head, averaged at eval).
Blocks alternate: even blocks mix with RepVGG-style dw 3x3 + dw 1x1 + identity then squeeze-excite; odd blocks
use LS convolution (`layers.LSConv`) in stages 0-2 and LeViT-style attention (dw conv on q, relative-offset
bias) in stage 3; every block ends with a Conv-BN FFN (ratio 2) residual. `fuse()` folds every Conv-BN, the
RepVGG branches and the BatchNorm1d heads (the official `replace_batchnorm`).

Measurements (FLOPs vs the paper's rounding, fused and kernel speed) and their commands: docs/lsnet.md.

Deviations:
- timm layout: `stages.i.downsample.{0,1}` / `stages.i.blocks.j` (the official downsample convs are the first
  two entries of the next `blocksN` Sequential), Conv-BN `.c` -> `.conv`, heads `head.{bn,l}` ->
  `head.{norm,fc}`, the `Residual` wrappers are folded into the blocks; `checkpoint_filter_fn` maps the keys.
- The attention bias is gathered from `attention_biases` on every forward (no eval cache), so weights loaded
  after `.eval()` are never stale (the official cache is).
- Any input size works (the official classifier only runs when the last map is 4 x 4, i.e. 193-256 px inputs).
  Assumption: for smaller maps the learned bias of each (|dy|, |dx|) offset is used as is; for larger maps the
  4 x 4 offset table is resized bicubically (align_corners=True, so the learned offsets keep their values at the
  table's corners), as Swin-style models resample tables.
- `drop_path_rate` (default 0; the official model has no stochastic depth) applies to the FFN residuals.
- SKA runs through `layers.ska` (CPU-friendly `shift` path by default); no Triton.
- timm's `reparameterize_model(model.eval())` folds every Conv-BN, the RepVGG branches and the BatchNorm1d heads
  (each module's `fuse()`; the official `replace_batchnorm`); the fused modules keep the model's dtype (the
  official ones are float32).
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SqueezeExcite
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from layers import ConvNorm, LSConv, NormLinear, set_module_kernel_impl
from ._helpers import (
    build_model_with_cfg, channels_last_on_cpu, check_input_size, check_state_dict_keys, hf_hub_weights, prune_stages,
    remap_state_dict, stage_intermediates, unwrap_state_dict,
)

__all__ = ['LSNet']


class RepVggDw(nn.Module):
    """dw 3x3 Conv-BN + dw 1x1 Conv-BN + identity; `fuse()` gives one dw 3x3 conv."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = ConvNorm(dim, dim, 3, padding=1, groups=dim)
        self.conv1 = ConvNorm(dim, dim, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x) + x

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        conv, conv1 = self.conv.fuse(), self.conv1.fuse()
        identity = torch.zeros_like(conv.weight)
        identity[:, :, 1, 1] = 1
        conv.weight.add_(F.pad(conv1.weight, (1, 1, 1, 1)) + identity)
        conv.bias.add_(conv1.bias)
        return conv


class Attention(nn.Module):
    """LeViT-style attention on the last stage with a residual; bias indexed by (|dy|, |dx|)."""

    def __init__(self, dim: int, key_dim: int = 16, num_heads: int = 4, resolution: int = 4):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.scale = key_dim ** -0.5
        self.val_dim = int(dim / (key_dim * num_heads) * key_dim)
        self.resolution = resolution
        qk_chs = key_dim * num_heads
        self.qkv = ConvNorm(dim, 2 * qk_chs + self.val_dim * num_heads)
        self.dw = ConvNorm(qk_chs, qk_chs, 3, padding=1, groups=qk_chs)
        self.proj = nn.Sequential(nn.ReLU(), ConvNorm(self.val_dim * num_heads, dim, bn_weight_init=0.))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))

    def _bias(self, h: int, w: int) -> torch.Tensor:
        r = self.resolution
        table = self.attention_biases.view(self.num_heads, r, r)
        if h > r or w > r:
            table = F.interpolate(table[None], size=(max(h, r), max(w, r)), mode='bicubic', align_corners=True)[0]
        ys, xs = torch.meshgrid(torch.arange(h, device=table.device), torch.arange(w, device=table.device),
                                indexing='ij')
        ys, xs = ys.flatten(), xs.flatten()
        dy, dx = (ys[:, None] - ys[None, :]).abs(), (xs[:, None] - xs[None, :]).abs()
        return table[:, dy, dx]  # (heads, N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qk_chs = self.key_dim * self.num_heads
        q, k, v = self.qkv(x).split([qk_chs, qk_chs, self.val_dim * self.num_heads], dim=1)
        q = self.dw(q)
        q, k, v = (t.reshape(B, self.num_heads, -1, H * W) for t in (q, k, v))
        attn = (q.transpose(-2, -1) @ k) * self.scale + self._bias(H, W)
        out = (v @ attn.softmax(dim=-1).transpose(-2, -1)).reshape(B, -1, H, W)
        return x + self.proj(out)


class Ffn(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.pw1 = ConvNorm(dim, hidden_dim)
        self.act = nn.ReLU()
        self.pw2 = ConvNorm(hidden_dim, dim, bn_weight_init=0.)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


class Block(nn.Module):
    """out = y + FFN(y), y = se(mixer(x)); the mixers include their own residual."""

    def __init__(self, dim: int, index: int, attention: bool, drop_path: float = 0.):
        super().__init__()
        if index % 2 == 0:
            self.mixer = RepVggDw(dim)
            self.se = SqueezeExcite(dim, rd_ratio=0.25)
        else:
            self.mixer = Attention(dim) if attention else LSConv(dim)
            self.se = nn.Identity()
        self.ffn = Ffn(dim, 2 * dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.mixer(x))
        return x + self.drop_path(self.ffn(x))


class LSNetStage(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, depth: int, attention: bool, downsample: bool,
                 drop_path: List[float]):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = nn.Sequential(
            ConvNorm(in_chs, in_chs, 3, stride=2, padding=1, groups=in_chs), ConvNorm(in_chs, out_chs),
        ) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[Block(out_chs, j, attention, drop_path[j]) for j in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and len(self.blocks) and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class LSNet(nn.Module):
    """LSNet classification backbone."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Tuple[int, ...] = (64, 128, 256, 384),
            depths: Tuple[int, ...] = (0, 2, 8, 10),
            distilled: bool = False,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            kernel_impl: Optional[str] = None,
    ):
        """
        Args:
            in_chans, num_classes: as in timm. global_pool: 'avg' or '' (no pooling).
            embed_dims, depths: per stage (the last stage uses attention in its odd blocks).
            distilled: add the distillation head (`head_dist`); eval averages the two heads.
            drop_rate: dropout before the heads (the official model has none).
            drop_path_rate: stochastic depth on the FFN residuals, linear over blocks (the official model has none).
            kernel_impl: SKA implementation (None: process-wide setting, see layers.config).
        """
        super().__init__()
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.distilled = distilled
        self.distilled_training = False
        self.grad_checkpointing = False
        c = embed_dims[0]
        self.stem = nn.Sequential(
            ConvNorm(in_chans, c // 4, 3, 2, 1), nn.ReLU(), ConvNorm(c // 4, c // 2, 3, 2, 1), nn.ReLU(),
            ConvNorm(c // 2, c, 3, 2, 1))
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(depths)]
        stages, self.feature_info = [], []
        in_chs, reduction = c, 8
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            if i > 0:
                reduction *= 2
            stages.append(LSNetStage(in_chs, dim, depth, attention=i == len(depths) - 1, downsample=i > 0,
                                     drop_path=dpr[i]))
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f'stages.{i}'))
            in_chs = dim
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = NormLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if distilled:
            self.head_dist = NormLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        set_module_kernel_impl(self, kernel_impl)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {n for n, _ in self.named_parameters() if n.endswith('attention_biases')}

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
    def set_distilled_training(self, enable: bool = True) -> None:
        """Training forward returns (head, head_dist) logits for DeiT-style distillation (distilled variants)."""
        self.distilled_training = enable and self.distilled

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc if isinstance(self.head, NormLinear) else self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = NormLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)
        if self.distilled:
            self.head_dist = NormLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
            self.head_dist.train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs. indices: None (all), n (last n) or a list of stage indices; norm is unused."""
        return stage_intermediates(self, x, self.stem, indices, stop_early, output_fmt, intermediates_only)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        return prune_stages(self, indices, prune_head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.in_chans, model_name=type(self).__name__)
        return self.stages(self.stem(channels_last_on_cpu(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        if self.global_pool == 'avg':
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        if pre_logits or x.ndim == 4:
            return x
        if not self.distilled:
            return self.head(x)
        logits, logits_dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return logits, logits_dist
        return (logits + logits_dist) / 2

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))


def _stage_key(match) -> str:
    stage, index = int(match[1]) - 1, int(match[2])
    if stage > 0 and index < 2:
        return f'stages.{stage}.downsample.{index}.'
    return f'stages.{stage}.blocks.{index - 2 if stage > 0 else index}.'


_DROP_KEYS = (r'attention_bias_idxs$',)  # recomputed
_KEY_RULES = (
    (r'^patch_embed\.', 'stem.'),
    (r'^blocks(\d+)\.(\d+)\.', _stage_key),
    (r'\.mixer\.m\.', '.mixer.'),
    (r'\.ffn\.m\.', '.ffn.'),
    (r'\.c\.(weight|bias)$', r'.conv.\1'),
    (r'^(head|head_dist)\.bn\.', r'\1.norm.'),
    (r'^(head|head_dist)\.l\.', r'\1.fc.'),
)


def checkpoint_filter_fn(state_dict: dict, model: LSNet) -> dict:
    """Convert an official LSNet checkpoint (bare, or under 'model'/'state_dict') to this layout."""
    state_dict = unwrap_state_dict(state_dict)
    if 'stem.0.conv.weight' not in state_dict:
        state_dict = remap_state_dict(state_dict, _KEY_RULES, drop=_DROP_KEYS)
    check_state_dict_keys(state_dict, model, source='LSNet checkpoint')
    return state_dict


def _create_lsnet(variant: str, pretrained: bool = False, **kwargs) -> LSNet:
    return build_model_with_cfg(
        LSNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, **(hf_hub_weights(url) if url else {}),
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (4, 4),
        'crop_pct': 0.9, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0.conv', 'classifier': 'head.fc', 'license': 'unknown',
        'paper_ids': 'arXiv:2503.23135', 'paper_name': 'LSNet: See Large, Focus Small',
        'origin_url': 'https://github.com/THU-MIG/lsnet', **kwargs,
    }


_HF = 'https://huggingface.co/jameslahm/lsnet/resolve/main'
default_cfgs = generate_default_cfgs({
    'lsnet_t.in1k': _cfg(url=f'{_HF}/lsnet_t.pth'),
    'lsnet_s.in1k': _cfg(url=f'{_HF}/lsnet_s.pth'),
    'lsnet_b.in1k': _cfg(url=f'{_HF}/lsnet_b.pth'),
    'lsnet_t_distill.in1k': _cfg(url=f'{_HF}/lsnet_t_distill.pth', classifier=('head.fc', 'head_dist.fc')),
    'lsnet_s_distill.in1k': _cfg(url=f'{_HF}/lsnet_s_distill.pth', classifier=('head.fc', 'head_dist.fc')),
    'lsnet_b_distill.in1k': _cfg(url=f'{_HF}/lsnet_b_distill.pth', classifier=('head.fc', 'head_dist.fc')),
})


@register_model
def lsnet_t(pretrained: bool = False, **kwargs) -> LSNet:
    model_args = dict(embed_dims=(64, 128, 256, 384), depths=(0, 2, 8, 10))
    return _create_lsnet('lsnet_t', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lsnet_s(pretrained: bool = False, **kwargs) -> LSNet:
    model_args = dict(embed_dims=(96, 192, 320, 448), depths=(1, 2, 8, 10))
    return _create_lsnet('lsnet_s', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lsnet_b(pretrained: bool = False, **kwargs) -> LSNet:
    model_args = dict(embed_dims=(128, 256, 384, 512), depths=(4, 6, 8, 10))
    return _create_lsnet('lsnet_b', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lsnet_t_distill(pretrained: bool = False, **kwargs) -> LSNet:
    model_args = dict(embed_dims=(64, 128, 256, 384), depths=(0, 2, 8, 10), distilled=True)
    return _create_lsnet('lsnet_t_distill', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lsnet_s_distill(pretrained: bool = False, **kwargs) -> LSNet:
    model_args = dict(embed_dims=(96, 192, 320, 448), depths=(1, 2, 8, 10), distilled=True)
    return _create_lsnet('lsnet_s_distill', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lsnet_b_distill(pretrained: bool = False, **kwargs) -> LSNet:
    model_args = dict(embed_dims=(128, 256, 384, 512), depths=(4, 6, 8, 10), distilled=True)
    return _create_lsnet('lsnet_b_distill', pretrained=pretrained, **dict(model_args, **kwargs))
