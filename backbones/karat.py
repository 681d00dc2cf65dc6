"""KArAt: Kolmogorov-Arnold attention for vision transformers (Fourier-KArAt, modular low-rank form).

Paper: S. Maity, K. Hitsman, X. Li, A. Dutta, "Kolmogorov-Arnold Attention: Is Learnable Attention Better For
Vision Transformers?", arXiv:2503.10632 (v1 2025-03, v2 2025-05), https://arxiv.org/abs/2503.10632

    @article{maity2025karat,
      title={Kolmogorov-Arnold Attention: Is Learnable Attention Better For Vision Transformers?},
      author={Maity, Subhajit and Hitsman, Killian and Li, Xin and Dutta, Aritra},
      journal={arXiv preprint arXiv:2503.10632},
      year={2025}
    }

Official code: none. https://github.com/MaitySubhajit/KArAt (newest snapshot
39142d6c68b9a742d4577c1425b731c4b37460b3, CC BY-NC-SA 4.0) holds only a README ("Codes - Coming Soon!") and the
project page; no weights are published, so there is no fixture and the cfgs carry no URL. This file is written
from the project page and the published tables.

Structure: a DeiT/timm ViT (16x16 patch embedding, class token, learned position embedding, 12 pre-norm blocks,
LayerNorm eps 1e-6, MLP ratio 4 with GELU, qkv bias, final norm, linear head on the class token) in which the
row softmax of every attention head is replaced by a learnable operator (`layers.kan_attn`): each score row
(length N = 197) goes through a KAN layer N -> r (r = 12) of Fourier units
phi_pq(x) = w_b b(x) + w_s sum_{m=1..G} (a_pqm cos(m x) + b_pqm sin(m x)) with zero base activation b, then
a linear map W (N x r) back to N; the result multiplies v (no normalisation). Sharing:
- blockwise (`..._g{G}b`): every (block, head) has its own operator, `blocks.{j}.attn.act.*`;
- universal (`..._g{G}u`): one operator per head shared by all blocks (both the KAN layer and W), stored once
  as `attn_act.*` and handed to every block.
Variants (the paper's table): ViT-Tiny G3B/G3U, ViT-Small G3B/G3U, ViT-Base G1B/G1U.

Parameter-count derivation, FLOPs against the published counting, speed and their commands: docs/karat.md.

Deviations (assumptions, as nothing official exists to deviate from; reasons in docs/karat.md):
- A1 the operator's input is the scaled score matrix q k^T / sqrt(d_h); A2 it acts on query rows and its output
  row replaces the softmax row.
- A3 the r N (2G + 3) parameters per operator are 2G r N Fourier coefficients, r N base weights w_b, r N unit
  scales w_s and the N x r map W, without bias (the published counts need them). With the zero base activation,
  w_b multiplies zero: it is kept and receives a zero gradient.
- A4 no normalisation after the operator; A5 N = 197 includes the class token.
- A6 init: coefficients N(0, 1 / (N G)), w_s = 1, w_b ~ U(+-1/sqrt(N)), W ~ N(0, 1 / (r N)); other weights as
  timm's ViT (trunc normal 0.02).
- A7 timm ViT defaults elsewhere (qkv bias, LayerNorm eps 1e-6, attention dropout on the N x N weights); A8
  universal mode shares both the KAN layer and W across blocks. Preprocessing is DeiT's (crop 0.875, bicubic).
- The input size is fixed (the operator has units per key position; a clear error names the size); building
  with another `img_size` sizes the operators for its token count.
- `attn_act='softmax'` gives the authors' softmax baseline (timm's ViT) in the same class; checkpoints of a
  plain softmax ViT (timm/DeiT layout) load with the KArAt operators at their init, for fine-tuning.
"""
from typing import List, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import Attention

from layers import FourierKArAt, KArAtAttention, set_module_kernel_impl
from ._helpers import (
    build_model_with_cfg, check_input_size, check_state_dict_keys, feature_take_indices, init_vit_weights,
    prune_stages, token_maps, unwrap_state_dict,
)

__all__ = ['KArAtViT']

ATTN_ACTS = ('fourier_kan', 'softmax')
SHARING = ('blockwise', 'universal')


class Block(nn.Module):
    """Pre-norm ViT block whose attention uses a Fourier-KArAt operator (or softmax, for the baseline)."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int, mlp_ratio: float = 4., qkv_bias: bool = True,
                 attn_act: str = 'fourier_kan', shared: bool = False, rank: int = 12, grid_size: int = 3,
                 base_act: str = 'zero', proj_drop: float = 0., attn_drop: float = 0., drop_path: float = 0.):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if attn_act == 'softmax':
            self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        else:
            self.attn = KArAtAttention(dim, num_heads, num_tokens, rank, grid_size, base_act, shared=shared,
                                       qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, act: Optional[FourierKArAt] = None) -> torch.Tensor:
        """x (B, N, C); `act` is the model's shared operator in universal mode, else None."""
        y = self.norm1(x)
        y = self.attn(y) if isinstance(self.attn, Attention) else self.attn(y, act)
        x = x + self.drop_path1(y)
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class KArAtViT(nn.Module):
    """Vision transformer with Fourier-KArAt attention (blockwise or universal operator sharing)."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 12,
            num_heads: int = 3,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            attn_act: str = 'fourier_kan',
            sharing: str = 'blockwise',
            rank: int = 12,
            grid_size: int = 3,
            base_act: str = 'zero',
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
            attn_act: 'fourier_kan' (KArAt) or 'softmax' (the plain ViT baseline).
            sharing: 'blockwise' (an operator per block and head) or 'universal' (one per head, shared by all
                blocks).
            rank: r, hidden width of the low-rank operator (12 in the paper).
            grid_size: G, Fourier harmonics per unit. base_act: 'zero' (published), 'silu' or 'identity'.
            drop_rate: dropout before the head. proj_drop_rate: projection/MLP/position dropout.
            attn_drop_rate: dropout on the N x N attention weights. drop_path_rate: stochastic depth (linear).
            kernel_impl: Fourier-KArAt implementation (None: process-wide setting, see layers.config).
        """
        super().__init__()
        if global_pool not in ('token', 'avg', ''):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if attn_act not in ATTN_ACTS:
            raise ValueError(f'attn_act must be one of {ATTN_ACTS}, got {attn_act!r}')
        if sharing not in SHARING:
            raise ValueError(f'sharing must be one of {SHARING}, got {sharing!r}')
        self.num_classes, self.global_pool, self.in_chans = num_classes, global_pool, in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.attn_act_type, self.sharing = attn_act, sharing
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.img_size, self.grid_size = self.patch_embed.img_size, self.patch_embed.grid_size
        self.num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(proj_drop_rate)
        universal = attn_act == 'fourier_kan' and sharing == 'universal'
        # universal sharing: the one operator bank lives here, once, and every block is handed it
        self.attn_act = FourierKArAt(num_heads, self.num_tokens, rank, grid_size, base_act) \
            if universal else None
        dpr = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, self.num_tokens, mlp_ratio, qkv_bias, attn_act, universal, rank, grid_size,
                  base_act, proj_drop_rate, attn_drop_rate, dpr[i])
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        r = self.patch_embed.patch_size[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=r, module=f'blocks.{i}') for i in range(depth)]

        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        self.apply(init_vit_weights)  # FourierKArAt initialises its own parameters
        set_module_kernel_impl(self, kernel_impl)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'pos_embed', 'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        # the shared operator serves every block: it goes with the stem (layer-decay group 0)
        return dict(stem=r'^cls_token|pos_embed|patch_embed|attn_act',
                    blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

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

    def _run(self, x: torch.Tensor, last: int, take=()):
        check_input_size(x, self.in_chans, self.img_size, model_name=type(self).__name__)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        intermediates = []
        for i in range(last + 1):
            block = self.blocks[i]
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, self.attn_act, use_reentrant=False)
            else:
                x = block(x, self.attn_act)
            if i in take:
                intermediates.append(x[:, self.num_prefix_tokens:])
        return x, intermediates

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
        x, intermediates = self._run(x, last, take_indices)
        intermediates = token_maps([self.norm(t) for t in intermediates] if norm else intermediates, self.grid_size,
                                   output_fmt)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        return prune_stages(self, indices, prune_head, prune_norm, levels='blocks')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self._run(x, len(self.blocks) - 1)
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


def _is_operator_key(key: str) -> bool:
    return key.startswith('attn_act.') or '.attn.act.' in key


def checkpoint_filter_fn(state_dict: dict, model: KArAtViT) -> dict:
    """Our own checkpoints load as they are (no official ones exist); a plain softmax ViT checkpoint (timm/DeiT
    layout, same width/depth/tokens) loads with every KArAt operator kept at its init, for fine-tuning."""
    state_dict = dict(unwrap_state_dict(state_dict))
    if not any(_is_operator_key(k) for k in state_dict):
        for key, value in model.state_dict().items():
            if _is_operator_key(key):
                state_dict[key] = value.detach().clone()
    check_state_dict_keys(state_dict, model, source='KArAt/ViT checkpoint')
    return state_dict


def _create_karat(variant: str, pretrained: bool = False, **kwargs) -> KArAtViT:
    return build_model_with_cfg(
        KArAtViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(2, 5, 8, 11), feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'fixed_input_size': True,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'cc-by-nc-sa-4.0',
        'paper_ids': 'arXiv:2503.10632',
        'paper_name': 'Kolmogorov-Arnold Attention: Is Learnable Attention Better For Vision Transformers?',
        'origin_url': 'https://github.com/MaitySubhajit/KArAt',
        'notes': 'no official code or weights exist (repository holds only a README); architecture from the paper',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'karat_vit_tiny_g3b': _cfg(),
    'karat_vit_tiny_g3u': _cfg(),
    'karat_vit_small_g3b': _cfg(),
    'karat_vit_small_g3u': _cfg(),
    'karat_vit_base_g1b': _cfg(),
    'karat_vit_base_g1u': _cfg(),
})


@register_model
def karat_vit_tiny_g3b(pretrained: bool = False, **kwargs) -> KArAtViT:
    model_args = dict(embed_dim=192, depth=12, num_heads=3, grid_size=3, sharing='blockwise')
    return _create_karat('karat_vit_tiny_g3b', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def karat_vit_tiny_g3u(pretrained: bool = False, **kwargs) -> KArAtViT:
    model_args = dict(embed_dim=192, depth=12, num_heads=3, grid_size=3, sharing='universal')
    return _create_karat('karat_vit_tiny_g3u', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def karat_vit_small_g3b(pretrained: bool = False, **kwargs) -> KArAtViT:
    model_args = dict(embed_dim=384, depth=12, num_heads=6, grid_size=3, sharing='blockwise')
    return _create_karat('karat_vit_small_g3b', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def karat_vit_small_g3u(pretrained: bool = False, **kwargs) -> KArAtViT:
    model_args = dict(embed_dim=384, depth=12, num_heads=6, grid_size=3, sharing='universal')
    return _create_karat('karat_vit_small_g3u', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def karat_vit_base_g1b(pretrained: bool = False, **kwargs) -> KArAtViT:
    model_args = dict(embed_dim=768, depth=12, num_heads=12, grid_size=1, sharing='blockwise')
    return _create_karat('karat_vit_base_g1b', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def karat_vit_base_g1u(pretrained: bool = False, **kwargs) -> KArAtViT:
    model_args = dict(embed_dim=768, depth=12, num_heads=12, grid_size=1, sharing='universal')
    return _create_karat('karat_vit_base_g1u', pretrained=pretrained, **dict(model_args, **kwargs))
