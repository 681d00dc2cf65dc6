"""BiFormer: Vision Transformer with Bi-Level Routing Attention.

Paper: L. Zhu, X. Wang, Z. Ke, W. Zhang, R. Lau, "BiFormer: Vision Transformer with Bi-Level Routing Attention",
CVPR 2023, https://arxiv.org/abs/2303.08810

    @inproceedings{zhu2023biformer,
      title={BiFormer: Vision Transformer with Bi-Level Routing Attention},
      author={Zhu, Lei and Wang, Xinjiang and Ke, Zhanghan and Zhang, Wayne and Lau, Rynson},
      booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
      year={2023}
    }

Official code: https://github.com/rayleizhu/BiFormer, matched at commit 1697bbbeafb8680524898f1dcaac10defd0604be
(models/biformer.py, models/biformer_stl.py, models/_common.py, ops/bra_legacy.py), MIT licence.

Structure (T/S/B): a stem of two 3x3/s2 convs (BatchNorm, GELU between them), then four stages at strides 4, 8, 16,
32, stages 2-4 opening with a 3x3/s2 conv + BatchNorm. A block is
    x = x + dwconv3x3(x)                                  # conditional position embedding, NCHW
    x = x + attn(LN(x));  x = x + mlp(LN(x))              # NHWC, LayerNorm eps 1e-6, MLP ratio 3
where attn is bi-level routing attention (layers.routing_attn: 7 x 7 regions, top-k 1/4/16 routed regions in stages
1-3, so 64 keys per query at 224; scale qk_dim ** -0.5 with the whole width) and, in stage 4, plain global attention
with 8 heads, no qkv bias, and a depthwise 5x5 conv of the attention *input* added before the output projection.
The head is a final BatchNorm, a global average and a Linear layer. BiFormer-STL (the paper's ablation model in the
Swin-T layout) uses a 4x4/s4 patch stem + BatchNorm, BatchNorm + 2x2/s2 conv downsampling, no position-embedding
conv, MLP ratio 4. `biformer_stl_nchw` is the official NCHW refactor (ops/bra_nchw.py, models/biformer_stl_nchw.py):
`bra_mode='nchw'` (regions of floor(H / 7) tokens, zero-padding after the projection, unscaled routing) and
`global_lepe_on='v'`.

Measurements, the routing-kernel investigation and their commands: docs/biformer.md.

Deviations (none changes the function at the sizes the official models accept):
- Modules are renamed to timm's layout (`stem`, `stages.i.downsample/blocks`, `attn.proj`, `mlp.fc1/fc2`,
  `head.fc`); `checkpoint_filter_fn` maps the official keys. STL-nchw's 1x1 convs are our Linear layers (the filter
  flattens the weights) and its LayerNorm2d our channels-last LayerNorm.
- `auto_pad=True` by default: maps not divisible by the 7 x 7 region grid are zero-padded before the qkv projection,
  exactly as the official BRA does with `auto_pad=True` (its detection/segmentation setting). The official
  classification constructors leave it off and assert divisibility; at those sizes padding is a no-op.
  `auto_pad=False` restores the restriction (as a ValueError). STL-nchw, like the official model, accepts any input
  whose stage-3 map is at least 7 x 7 (inputs of 112 and up).
- The routing-attention core runs through `layers.routed_attention` (fast `masked`/`sdpa` paths by default, same
  selected regions and the same result as the official gather); stage 4 through `layers.softmax_attention`.
- The blocks keep activations in channels_last memory, so the NCHW <-> NHWC permutes of the official block are free.
- `drop_rate` is dropout before the classifier (the official models accept and ignore it; default 0). The official
  `reset_classifier` bug (Linear over a list of widths) is not reproduced.
- Not registered: the token-labelling S*/B* models (no released code or weights) and `maxvit_stl` (an ablation
  baseline, not a BiFormer, no weights).
"""
from collections import OrderedDict
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, named_apply, register_model

from layers import BiLevelRoutingAttention, GLOBAL_IMPLS, set_module_kernel_impl, softmax_attention
from ._helpers import (
    build_model_with_cfg, check_input_size, check_state_dict_keys, prune_stages, remap_state_dict,
    stage_intermediates, unwrap_state_dict,
)

__all__ = ['BiFormer']


def _global_attention_impl(kernel_impl: Optional[str]) -> Optional[str]:
    """The stage-4 attention takes the global settings and 'sdpa'; routing-only names ('masked') leave it on auto."""
    return kernel_impl if kernel_impl is None or kernel_impl in GLOBAL_IMPLS or kernel_impl == 'sdpa' else 'auto'


class GlobalAttentionLePE(nn.Module):
    """Global multi-head attention plus a depthwise conv of its input (the official `AttentionLePE`), NHWC.

    out = proj(attention(x) + lepe(x)); qkv has no bias; heads are 8 whatever the width (the official blocks never
    pass num_heads), so the scale is (dim / 8) ** -0.5. `lepe_on='v'` is the NCHW refactor's `nchwAttentionLePE`
    (BiFormer-STL-nchw), whose LePE conv reads the values instead of the attention input.
    """

    def __init__(self, dim: int, num_heads: int = 8, side_dwconv: int = 5, lepe_on: str = 'x'):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        if lepe_on not in ('x', 'v'):
            raise ValueError(f"lepe_on must be 'x' or 'v', got {lepe_on!r}")
        self.lepe_on = lepe_on
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.kernel_impl: Optional[str] = None  # the operator's implementation, set by the model
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, C) -> (N, H, W, C)."""
        N, H, W, C = x.shape
        qkv = self.qkv(x).reshape(N, H * W, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = softmax_attention(qkv[0], qkv[1], qkv[2], self.scale, impl=_global_attention_impl(self.kernel_impl))
        out = out.transpose(1, 2).reshape(N, H, W, C)
        lepe_in = x if self.lepe_on == 'x' else qkv[2].transpose(1, 2).reshape(N, H, W, C)
        out = out + self.lepe(lepe_in.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out)


class Block(nn.Module):
    """[x + dwconv3x3(x)] -> x + attn(LN(x)) -> x + mlp(LN(x)); NCHW in and out (channels_last memory)."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            topk: int,
            n_win: int = 7,
            mlp_ratio: float = 3.,
            qk_dim: Optional[int] = None,
            side_dwconv: int = 5,
            pos_embed_kernel: int = 3,
            global_heads: int = 8,
            drop_path: float = 0.,
            auto_pad: bool = True,
            bra_mode: str = 'legacy',
            global_lepe_on: str = 'x',
    ):
        super().__init__()
        # NOTE: the official conv has padding=1 whatever its kernel (3 in every released model)
        self.pos_embed = nn.Conv2d(dim, dim, pos_embed_kernel, padding=1, groups=dim) if pos_embed_kernel else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if topk > 0:
            self.attn = BiLevelRoutingAttention(dim, num_heads, n_win=n_win, topk=topk, qk_dim=qk_dim,
                                                side_dwconv=side_dwconv, auto_pad=auto_pad, mode=bra_mode)
        elif topk == -2:
            self.attn = GlobalAttentionLePE(dim, global_heads, side_dwconv, lepe_on=global_lepe_on)
        else:
            raise ValueError(f'topk must be > 0 (routing attention) or -2 (global attention + LePE), got {topk}')
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:
            x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


def _conv_stem(in_chs: int, out_chs: int) -> nn.Sequential:
    """T/S/B stem: 3x3/s2 conv, BN, GELU, 3x3/s2 conv, BN."""
    return nn.Sequential(OrderedDict([
        ('conv1', nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1)),
        ('norm1', nn.BatchNorm2d(out_chs // 2)),
        ('act', nn.GELU()),
        ('conv2', nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1)),
        ('norm2', nn.BatchNorm2d(out_chs)),
    ]))


def _patch_stem(in_chs: int, out_chs: int) -> nn.Sequential:
    """STL stem: 4x4/s4 conv, BN."""
    return nn.Sequential(OrderedDict([
        ('conv', nn.Conv2d(in_chs, out_chs, 4, stride=4)),
        ('norm', nn.BatchNorm2d(out_chs)),
    ]))


class Stage(nn.Module):
    """Downsample (conv 3x3/s2 + BN, or BN + conv 2x2/s2 for STL; none in stage 1), then blocks."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, downsample: Optional[str], drop_path: List[float],
                 **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        if downsample is None:
            self.downsample = nn.Identity()
        elif downsample == 'conv_norm':
            self.downsample = nn.Sequential(OrderedDict([
                ('conv', nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1)), ('norm', nn.BatchNorm2d(out_chs))]))
        elif downsample == 'norm_conv':
            self.downsample = nn.Sequential(OrderedDict([
                ('norm', nn.BatchNorm2d(in_chs)), ('conv', nn.Conv2d(in_chs, out_chs, 2, stride=2))]))
        else:
            raise ValueError(f'unknown downsample {downsample!r}')
        self.blocks = nn.Sequential(*[Block(out_chs, drop_path=drop_path[j], **block_kwargs) for j in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x).contiguous(memory_format=torch.channels_last)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class BiFormer(nn.Module):
    """BiFormer (bi-level routing attention vision transformer)."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Tuple[int, ...] = (2, 2, 8, 2),
            embed_dims: Tuple[int, ...] = (64, 128, 256, 512),
            qk_dims: Optional[Tuple[int, ...]] = None,
            head_dim: int = 32,
            global_heads: int = 8,
            topks: Tuple[int, ...] = (1, 4, 16, -2),
            n_win: int = 7,
            mlp_ratios: Tuple[float, ...] = (3, 3, 3, 3),
            side_dwconv: int = 5,
            pos_embed_kernel: int = 3,
            stem_type: str = 'conv',
            downsample_type: str = 'conv_norm',
            auto_pad: bool = True,
            bra_mode: str = 'legacy',
            global_lepe_on: str = 'x',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            kernel_impl: Optional[str] = None,
    ):
        """
        Args:
            in_chans: input image channels.
            num_classes: classifier outputs (0 for no classifier).
            global_pool: head pooling type ('avg', ... or '' for none).
            depths: blocks per stage.
            embed_dims: channels per stage.
            qk_dims: query/key width per stage (default embed_dims).
            head_dim: head width of the routing-attention stages (heads = qk_dim // head_dim).
            global_heads: heads of the global-attention stage (topk -2); the official blocks always use 8.
            topks: routed regions per query region for each stage; -2 = global attention with LePE.
            n_win: regions per side (S; S x S regions).
            mlp_ratios: MLP hidden width ratio per stage.
            side_dwconv: kernel of the local-context (LePE/LCE) depthwise conv.
            pos_embed_kernel: kernel of the conditional position-embedding conv (0: none, as in STL).
            stem_type: 'conv' (two 3x3/s2 convs) or 'patch' (one 4x4/s4 conv, STL).
            downsample_type: 'conv_norm' (3x3/s2 conv + BN) or 'norm_conv' (BN + 2x2/s2 conv, STL).
            auto_pad: pad maps not divisible by the region grid (see the module docstring); False raises instead.
            bra_mode: 'legacy' (ops/bra_legacy.py) or 'nchw' (ops/bra_nchw.py, STL-nchw); see
                layers.BiLevelRoutingAttention. They differ only on maps not divisible by the region grid.
            global_lepe_on: the global-attention stage's LePE input, 'x' (legacy) or 'v' (STL-nchw).
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth rate, linear over all blocks.
            kernel_impl: attention implementation (None: process-wide setting, see layers.config).
        """
        super().__init__()
        assert len(depths) == len(embed_dims) == len(topks) == len(mlp_ratios)
        qk_dims = qk_dims or embed_dims
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False

        if stem_type == 'conv':
            self.stem = _conv_stem(in_chans, embed_dims[0])
        elif stem_type == 'patch':
            self.stem = _patch_stem(in_chans, embed_dims[0])
        else:
            raise ValueError(f'unknown stem_type {stem_type!r}')
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(depths)]
        stages = []
        self.feature_info = []
        reduction = 4
        for i, depth in enumerate(depths):
            stages.append(Stage(
                embed_dims[i - 1] if i else embed_dims[0], embed_dims[i], depth,
                downsample=downsample_type if i else None, drop_path=dpr[i],
                num_heads=qk_dims[i] // head_dim, topk=topks[i], n_win=n_win, mlp_ratio=mlp_ratios[i],
                qk_dim=qk_dims[i], side_dwconv=side_dwconv, pos_embed_kernel=pos_embed_kernel,
                global_heads=global_heads, auto_pad=auto_pad, bra_mode=bra_mode, global_lepe_on=global_lepe_on))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f'stages.{i}'))
            reduction *= 2
        self.stages = nn.Sequential(*stages)
        self.min_input_size = _min_input_side(stem_type, downsample_type, topks, n_win) if bra_mode == 'nchw' else None
        self.norm = nn.BatchNorm2d(self.num_features)
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

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward returning the outputs of the selected stages.

        Args:
            x: (B, C, H, W) input.
            indices: None for all stages, n for the last n, or a list of stage indices (negatives allowed).
            norm: apply the final BatchNorm to the last stage's intermediate.
            stop_early: stop after the last selected stage.
            output_fmt: 'NCHW' only.
            intermediates_only: return only the list of intermediates.
        """
        return stage_intermediates(self, x, self.stem, indices, stop_early, output_fmt, intermediates_only,
                                   final_norm=self.norm, norm=norm, min_size=self.min_input_size)

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last selected one (and the final norm / head): what features_only keeps."""
        return prune_stages(self, indices, prune_head, prune_norm)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.in_chans, model_name=type(self).__name__, min_size=self.min_input_size)
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _min_input_side(stem_type: str, downsample_type: str, topks: Tuple[int, ...], n_win: int) -> Tuple[int, int]:
    """Smallest input whose routing-attention stages all have maps of at least n_win per side (the 'nchw' operator
    cuts regions of floor(side / n_win) tokens, so a smaller map has none)."""
    def stage_sides(side: int) -> List[int]:
        side = -(-side // 4) if stem_type == 'conv' else side // 4  # two 3x3/s2/p1 convs, or one 4x4/s4 conv
        sides = [side]
        for _ in topks[1:]:
            side = -(-side // 2) if downsample_type == 'conv_norm' else side // 2
            sides.append(side)
        return sides
    side = 1
    while any(s < n_win for s, topk in zip(stage_sides(side), topks) if topk > 0):
        side += 1
    return side, side


def _init_weights(module: nn.Module, name: Optional[str] = None) -> None:
    """The official init: trunc-normal(0.02) Linear weights, zero biases; convs and norms keep PyTorch's defaults."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# Official key -> ours, applied in order to every key (T/S/B: models/biformer.py; STL: models/biformer_stl.py).
_KEY_RULES = (
    (r'^downsample_layers\.0\.0\.', 'stem.conv1.'),
    (r'^downsample_layers\.0\.1\.', 'stem.norm1.'),
    (r'^downsample_layers\.0\.3\.', 'stem.conv2.'),
    (r'^downsample_layers\.0\.4\.', 'stem.norm2.'),
    (r'^downsample_layers\.([1-3])\.0\.', r'stages.\1.downsample.conv.'),
    (r'^downsample_layers\.([1-3])\.1\.', r'stages.\1.downsample.norm.'),
    (r'^stages\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.'),
    (r'\.attn\.qkv\.qkv\.', '.attn.qkv.'),
    (r'\.attn\.wo\.', '.attn.proj.'),
    (r'\.mlp\.0\.', '.mlp.fc1.'),
    (r'\.mlp\.3\.', '.mlp.fc2.'),
    (r'^head\.', 'head.fc.'),
)
_STL_KEY_RULES = (
    (r'^downsample_layers\.0\.0\.', 'stem.conv.'),
    (r'^downsample_layers\.0\.1\.', 'stem.norm.'),
    (r'^downsample_layers\.([1-3])\.0\.', r'stages.\1.downsample.norm.'),
    (r'^downsample_layers\.([1-3])\.1\.', r'stages.\1.downsample.conv.'),
    (r'\.attn\.qkv\.qkv\.', '.attn.qkv.'),
    (r'\.attn\.wo\.', '.attn.proj.'),
    (r'\.attn\.qkv_linear\.', '.attn.qkv.'),  # STL-nchw: 1x1 convs where we have Linear layers
    (r'\.attn\.output_linear\.', '.attn.proj.'),
    (r'\.mlp\.0\.', '.mlp.fc1.'),
    (r'\.mlp\.2\.', '.mlp.fc2.'),
    (r'^head\.', 'head.fc.'),
)
# Official checkpoint entries we recompute rather than load: none (BiFormer stores no index tables or masks).
_DROP_KEYS = ()


def checkpoint_filter_fn(state_dict: dict, model: BiFormer) -> dict:
    """Convert an official BiFormer checkpoint (under 'model', or bare) to this layout; ours pass through.

    T/S/B (models/biformer.py), STL (models/biformer_stl.py) and STL-nchw (models/biformer_stl_nchw.py, whose 1x1
    convs become our Linear weights) are told apart by the model's stem.
    """
    state_dict = unwrap_state_dict(state_dict)
    if not any(k.startswith('stem.') for k in state_dict):
        rules = _STL_KEY_RULES if hasattr(model.stem, 'conv') else _KEY_RULES  # STL: one patch conv in the stem
        state_dict = remap_state_dict(state_dict, rules, drop=_DROP_KEYS)
        params = model.state_dict()
        state_dict = {k: v.flatten(1) if v.ndim == 4 and k in params and params[k].ndim == 2 else v
                      for k, v in state_dict.items()}
    check_state_dict_keys(state_dict, model, source='BiFormer checkpoint')
    return state_dict


def _create_biformer(variant: str, pretrained: bool = False, **kwargs) -> BiFormer:
    return build_model_with_cfg(
        BiFormer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1', 'classifier': 'head.fc',
        'license': 'mit', 'paper_ids': 'arXiv:2303.08810',
        'paper_name': 'BiFormer: Vision Transformer with Bi-Level Routing Attention',
        'origin_url': 'https://github.com/rayleizhu/BiFormer', **kwargs,
    }


def _onedrive(share_id: str, tag: str) -> Tuple[str, str]:
    # every OneDrive API URL ends in /root/content: name the cache file after the tag, or all five would share one
    return f'https://api.onedrive.com/v1.0/shares/{share_id}/root/content', f'{tag}.pth'


default_cfgs = generate_default_cfgs({
    'biformer_tiny.in1k': _cfg(url=_onedrive('s!AkBbczdRlZvChHEOoGkgwgQzEDlM', 'biformer_tiny.in1k')),
    'biformer_small.in1k': _cfg(url=_onedrive('s!AkBbczdRlZvChHDyM-x9KWRBZ832', 'biformer_small.in1k')),
    'biformer_base.in1k': _cfg(url=_onedrive('s!AkBbczdRlZvChHI_XPhoadjaNxtO', 'biformer_base.in1k')),
    'biformer_stl.in1k': _cfg(url=_onedrive('s!AkBbczdRlZvChSf-m7ujkvx9lIQ1', 'biformer_stl.in1k'),
                              first_conv='stem.conv'),
    'biformer_stl_nchw.in1k': _cfg(url=_onedrive('s!AkBbczdRlZvChWYrKbWbMgqd2Ai0', 'biformer_stl_nchw.in1k'),
                                   first_conv='stem.conv', min_input_size=(3, 112, 112)),
})


@register_model
def biformer_tiny(pretrained: bool = False, **kwargs) -> BiFormer:
    model_args = dict(depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512))
    return _create_biformer('biformer_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def biformer_small(pretrained: bool = False, **kwargs) -> BiFormer:
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512))
    return _create_biformer('biformer_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def biformer_base(pretrained: bool = False, **kwargs) -> BiFormer:
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768))
    return _create_biformer('biformer_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def biformer_stl(pretrained: bool = False, **kwargs) -> BiFormer:
    model_args = dict(depths=(2, 2, 6, 2), embed_dims=(96, 192, 384, 768), mlp_ratios=(4, 4, 4, 4),
                      pos_embed_kernel=0, stem_type='patch', downsample_type='norm_conv')
    return _create_biformer('biformer_stl', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def biformer_stl_nchw(pretrained: bool = False, **kwargs) -> BiFormer:
    model_args = dict(depths=(2, 2, 6, 2), embed_dims=(96, 192, 384, 768), mlp_ratios=(4, 4, 4, 4),
                      pos_embed_kernel=0, stem_type='patch', downsample_type='norm_conv', bra_mode='nchw',
                      global_lepe_on='v')
    return _create_biformer('biformer_stl_nchw', pretrained=pretrained, **dict(model_args, **kwargs))
