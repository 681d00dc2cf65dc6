r"""ConViT: Vision Transformers with soft convolutional inductive biases (gated positional self-attention).

Paper: S. d'Ascoli, H. Touvron, M. Leavitt, A. Morcos, G. Biroli, L. Sagun, "ConViT: Improving Vision
Transformers with Soft Convolutional Inductive Biases", ICML 2021, https://arxiv.org/abs/2103.10697

    @inproceedings{dascoli2021convit,
      title={ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases},
      author={d'Ascoli, St{\'e}phane and Touvron, Hugo and Leavitt, Matthew and Morcos, Ari and Biroli, Giulio
              and Sagun, Levent},
      booktitle={ICML},
      year={2021}
    }

Official code: https://github.com/facebookresearch/convit, matched at commit
0a9340aaf50dd101c2d3766e575f24085afc92ed (convit.py, models.py), Apache-2.0 (LICENSE file).

Structure: a DeiT whose first 10 blocks use gated positional self-attention (`layers.gpsa`) over the 196 patch
tokens (learned absolute position embedding, no class token), then the class token is inserted and 2 plain
MHSA blocks follow; final LayerNorm, head on the class token. Widths are 48 per head (Ti/S/B: 4/9/16 heads)
and 64 per head for the "+" variants (the paper's Ti+/S+/B+, built by the same constructors). Names carry the
`zoo_` prefix (timm ships `convit_*`); the state-dict layout is the official one (= timm's).

Measurements and their commands: docs/convit.md.

Deviations (none changes the function):
- The GPSA core runs through `layers.gated_positional_attention` (fused SDPA for content attention by default;
  the reference keeps the official renormalisation).
- The relative-offset table is recomputed per grid size and dtype (the official cached attribute breaks
  float64/half).
- The input size is fixed by the position embedding (a clear error names it); build with another `img_size` and
  checkpoints' position embeddings are resampled on load.
"""
from typing import Final, List, Optional, Tuple, Union

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models.vision_transformer import Attention

from layers import GatedPositionalAttention, set_module_kernel_impl
from ._helpers import (
    build_model_with_cfg, check_input_size, check_state_dict_keys, feature_take_indices, init_vit_weights,
    prune_stages, resample_pos_embed, token_maps, unwrap_state_dict,
)

__all__ = ['ConViT']


class Block(nn.Module):
    """Pre-norm block with GPSA (`use_gpsa`) or plain MHSA."""
    use_gpsa: Final[bool]  # a constant to TorchScript, which then compiles only the attention call this block makes

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = False,
                 proj_drop: float = 0., attn_drop: float = 0., drop_path: float = 0., use_gpsa: bool = True,
                 locality_strength: float = 1.):
        super().__init__()
        self.use_gpsa = use_gpsa
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if use_gpsa:
            self.attn = GatedPositionalAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop, locality_strength)
        else:
            self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.grid_size = None  # set by the model before GPSA blocks run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.use_gpsa:
            y = self.attn(y, self.grid_size)
        else:
            y = self.attn(y)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConViT(nn.Module):
    """ConViT classification model."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 12,
            num_heads: int = 4,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            local_up_to_layer: int = 10,
            locality_strength: float = 1.,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            kernel_impl: Optional[str] = None,
    ):
        """
        Args:
            img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the ViT.
            global_pool: 'token' (class token), 'avg' (mean of patch tokens) or '' (the tokens).
            local_up_to_layer: blocks before this index use GPSA; the class token joins there.
            locality_strength: GPSA's positional init strength.
            drop_rate: dropout before the head. proj_drop_rate: projection/MLP/position dropout.
            attn_drop_rate, drop_path_rate: attention dropout, stochastic depth (linear over blocks).
            kernel_impl: GPSA implementation (None: process-wide setting, see layers.config).
        """
        super().__init__()
        if global_pool not in ('token', 'avg', ''):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        self.num_classes, self.global_pool, self.in_chans = num_classes, global_pool, in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.local_up_to_layer = local_up_to_layer
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.img_size, self.grid_size = self.patch_embed.img_size, self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(proj_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate, dpr[i],
                  use_gpsa=i < local_up_to_layer, locality_strength=locality_strength)
            for i in range(depth)])
        for block in self.blocks:
            block.grid_size = self.grid_size
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        r = self.patch_embed.patch_size[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=r, module=f'blocks.{i}') for i in range(depth)]

        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        self.apply(init_vit_weights)
        for block in self.blocks:
            if block.use_gpsa:
                block.attn.local_init()
        set_module_kernel_impl(self, kernel_impl)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'pos_embed', 'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^cls_token|pos_embed|patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('token', 'avg', ''):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _run(self, x: torch.Tensor, blocks: range, take=()):
        check_input_size(x, self.in_chans, self.img_size, model_name=type(self).__name__)
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        intermediates = []
        for i in blocks:
            if i == self.local_up_to_layer:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            block = self.blocks[i]
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(nn.Sequential(block), x)
            else:
                x = block(x)
            if i in take:
                intermediates.append(x[:, 1:] if i >= self.local_up_to_layer else x)
        return x, intermediates

    def _run_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """`_run` over every block in the form TorchScript compiles (PatchEmbed checks the input size)."""
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        for i, block in enumerate(self.blocks):
            if i == self.local_up_to_layer:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = block(x)
        return x

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs as patch-token maps (the class token stripped).

        Args:
            indices: None (all), n (last n) or a list of block indices. norm: apply the final norm to them.
            stop_early: stop after the last selected block. output_fmt: 'NCHW' or 'NLC'.
        """
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        last = max_index if stop_early else len(self.blocks) - 1
        x, intermediates = self._run(x, range(last + 1), take_indices)
        intermediates = token_maps([self.norm(t) for t in intermediates] if norm else intermediates, self.grid_size,
                                   output_fmt)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        return prune_stages(self, indices, prune_head, prune_norm, levels='blocks')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.norm(self._run_scripted(x))
        x, _ = self._run(x, range(len(self.blocks)))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'token':
            x = x[:, 0]
        elif self.global_pool == 'avg':
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict, model: ConViT) -> dict:
    """Official/timm ConViT checkpoints share our layout: unwrap, resample the position embedding if needed."""
    state_dict = dict(unwrap_state_dict(state_dict))
    resample_pos_embed(state_dict, model, num_prefix_tokens=0)
    check_state_dict_keys(state_dict, model, source='ConViT checkpoint')
    return state_dict


def _create_convit(variant: str, pretrained: bool = False, **kwargs) -> ConViT:
    return build_model_with_cfg(
        ConViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(2, 5, 8, 11), feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'fixed_input_size': True,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2103.10697', 'paper_name': 'ConViT: Improving Vision Transformers with Soft '
                                                      'Convolutional Inductive Biases',
        'origin_url': 'https://github.com/facebookresearch/convit', **kwargs,
    }


_FB = 'https://dl.fbaipublicfiles.com/convit'
default_cfgs = generate_default_cfgs({
    'zoo_convit_tiny.fb_in1k': _cfg(url=f'{_FB}/convit_tiny.pth'),
    'zoo_convit_small.fb_in1k': _cfg(url=f'{_FB}/convit_small.pth'),
    'zoo_convit_base.fb_in1k': _cfg(url=f'{_FB}/convit_base.pth'),
    'zoo_convit_tiny_plus': _cfg(notes='paper variant Ti+ (64 per head): no released weights'),
    'zoo_convit_small_plus': _cfg(notes='paper variant S+ (64 per head): no released weights'),
    'zoo_convit_base_plus': _cfg(notes='paper variant B+ (64 per head): no released weights'),
})


@register_model
def zoo_convit_tiny(pretrained: bool = False, **kwargs) -> ConViT:
    model_args = dict(embed_dim=48 * 4, num_heads=4)
    return _create_convit('zoo_convit_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_convit_small(pretrained: bool = False, **kwargs) -> ConViT:
    model_args = dict(embed_dim=48 * 9, num_heads=9)
    return _create_convit('zoo_convit_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_convit_base(pretrained: bool = False, **kwargs) -> ConViT:
    model_args = dict(embed_dim=48 * 16, num_heads=16)
    return _create_convit('zoo_convit_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_convit_tiny_plus(pretrained: bool = False, **kwargs) -> ConViT:
    model_args = dict(embed_dim=64 * 4, num_heads=4)
    return _create_convit('zoo_convit_tiny_plus', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_convit_small_plus(pretrained: bool = False, **kwargs) -> ConViT:
    model_args = dict(embed_dim=64 * 9, num_heads=9)
    return _create_convit('zoo_convit_small_plus', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_convit_base_plus(pretrained: bool = False, **kwargs) -> ConViT:
    model_args = dict(embed_dim=64 * 16, num_heads=16)
    return _create_convit('zoo_convit_base_plus', pretrained=pretrained, **dict(model_args, **kwargs))
