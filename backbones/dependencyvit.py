"""DependencyViT: a plain ViT whose attention is reversed, so that a dependency tree emerges.

Paper: M. Ding, Y. Shen, L. Fan, Z. Chen, Z. Chen, P. Luo, J. B. Tenenbaum, C. Gan, "Visual Dependency
Transformers: Dependency Tree Emerges from Reversed Attention", CVPR 2023, https://arxiv.org/abs/2304.03282

    @inproceedings{ding2023visual,
      title={Visual Dependency Transformers: Dependency Tree Emerges from Reversed Attention},
      author={Ding, Mingyu and Shen, Yikang and Fan, Lijie and Chen, Zhenfang and Chen, Zitian and Luo, Ping and
              Tenenbaum, Joshua B. and Gan, Chuang},
      booktitle={CVPR},
      year={2023}
    }

Official repo: https://github.com/dingmyu/DependencyViT (MIT). Its only commit
(3dcf35910bfc9f013f752a09aa99b56f21e2ee78) holds a LICENSE and nothing else: there is no official code and no
weights, hence no fixture. This file is written from the paper's public material (abstract, Fig. 2 caption) and the
configuration of the unofficial timm PR #2062; it is not checked against any official output.

Structure (isometric, patch 16, no class token):
- patch embedding (16x16 conv) + learned absolute position embedding, 12 pre-norm blocks, final LayerNorm;
- each block: x + ls1(ReversedAttention(norm1(x))), then x + ls2(Mlp(norm2(x)));
- reversed attention (layers/reversed_attn.py): the forward attention A_F = softmax_p(q_c k_p / sqrt(d)) is used
  transposed, gated by a per-token head selector P = softmax_h(W_P x / tau) and the cumulative message controller
  M_l = M_{l-1} * sigmoid(MLP(x)) (M_0 = 1): A_R[h, p, c] = A_F[h, c, p] P[c, h] M_l[c], out = A_R v;
  sum_h A_R is the soft dependency mask, its column c the parent weights of child c;
- head: final LayerNorm, tokens multiplied by the final M, mean over tokens, linear classifier;
- Lite (`prune_layers`): after the attention sub-block of the listed blocks the tokens that *receive* the least
  message mass (sum_h sum_c A_R[h, p, c]) are dropped, with their M; the i-th pruning keeps
  floor((1 - i r) / (1 - (i - 1) r) * N) of the N current tokens, r = `prune_ratio` (196 -> 164 -> 132 -> 100 -> 69
  at 224x224 with r = 0.16). Pruning is a top-k with a fixed count, active in training and eval.
- `dependency_tree(x)` returns the parent of every token at every layer (argmax of its mask column).

Which tokens Lite prunes: the abstract prunes "the leaf nodes which rarely send messages". We read "leaf" in the tree
sense: a token no other token chooses as parent, i.e. one that receives (almost) no messages, so the score is the
received mass (as the unofficial PR). The literal alternative, the mass a token sends, is exactly its message
controller M[c] (the head selector sums to one), and would prune tokens that may still be parents of others.
Neither reading is confirmed by the authors; docs/dependencyvit.md has the argument.

Measurements and their commands: docs/dependencyvit.md.

Deviations (assumptions, none verified against the authors; the paper's tables were not available):
- D1 heads: 12 for Tiny and Small (head dim 16 / 32), as the unofficial PR; DeiT-Tiny would use 3.
- D2 head-selector temperature tau = 0.1 (the PR cites the paper's appendix D.1); constructor arg `head_select_temp`.
- D3 no bias in the head selector and the message controller; D4 message controller C -> C/2 -> 1 with GELU.
- D5 M is cumulative over depth (product); the gate of layer l uses M_l (including layer l's own controller).
- D6 M multiplies the tokens after the final norm; plain mean over tokens; no fc_norm.
- D7 no class token. D8 LayerScale in both branches, init 1e-6. qkv without bias, MLP ratio 4, LayerNorm eps 1e-6.
- The head selector and message controller read the normed block input (the attention's input).
- D9 Lite: prune after blocks 2, 5, 8, 11 (1-indexed; `prune_layers=(1, 4, 7, 10)` 0-indexed), r = 0.16, score
  = received message mass, floor rounding; kept tokens stay in their original order (the order does not change
  the logits). Ties in the score are broken by torch.topk.
- D10 no Base variant is registered: no evidence that one was published.
- No attention dropout (the reversed product is computed without ever forming A_R in the fast path).
- The input size is fixed by the position embedding (a clear error names it); build with `img_size` to change it.
- Features (`features_only`, `forward_intermediates`): per block on the full patch grid; in Lite a pruned token
  keeps its value from the last block it went through completely. forward_features returns the tokens as the head
  sees them (normed, times M), (B, N_kept, C).
"""
import math
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from layers import dependency_mask, gather_tokens, reversed_attention, set_module_kernel_impl
from ._helpers import (
    build_model_with_cfg, check_input_size, check_state_dict_keys, feature_take_indices, init_vit_weights,
    prune_stages, resample_pos_embed, token_maps, unwrap_state_dict,
)

__all__ = ['DependencyViT']


class MessageController(nn.Module):
    """Per-token sending gate sigmoid(fc2(GELU(fc1(x)))), (B, N); no biases (assumption D3)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(self.act(self.fc1(x)))).squeeze(-1)


class ReversedAttention(nn.Module):
    """Multi-head reversed attention with head selector and cumulative message controller.

    forward(x, msg) -> (out (B, N, C), new cumulative msg (B, N), received mass (B, N)).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, head_select_temp: float = 0.1,
                 msg_hidden_ratio: float = 0.5, proj_drop: float = 0.):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        if head_select_temp <= 0:
            raise ValueError(f'head_select_temp must be positive, got {head_select_temp}')
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.head_select_temp = head_select_temp
        self.kernel_impl: Optional[str] = None  # the operator's implementation, set by the model
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.head_selector = nn.Linear(dim, num_heads, bias=False)
        self.message_controller = MessageController(dim, int(dim * msg_hidden_ratio))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv_gate(self, x: torch.Tensor, msg: torch.Tensor):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        msg = msg * self.message_controller(x)
        heads = (self.head_selector(x) / self.head_select_temp).softmax(dim=-1)  # (B, N, H)
        gate = heads.transpose(1, 2) * msg[:, None, :]
        return q, k, v, gate, msg

    def forward(self, x: torch.Tensor, msg: torch.Tensor,
                return_mask: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        B, N, C = x.shape
        q, k, v, gate, msg = self._qkv_gate(x, msg)
        out, recv = reversed_attention(q, k, v, gate, self.scale, impl=self.kernel_impl)
        mask = dependency_mask(q, k, gate, self.scale) if return_mask else None
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
        return out, msg, recv, mask


class Block(nn.Module):
    """Pre-norm block with reversed attention; optionally drops the least-receiving tokens after attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = False,
                 head_select_temp: float = 0.1, msg_hidden_ratio: float = 0.5, init_values: Optional[float] = 1e-6,
                 proj_drop: float = 0., drop_path: float = 0., norm_layer=nn.LayerNorm,
                 keep_fraction: Optional[float] = None):
        super().__init__()
        self.keep_fraction = keep_fraction
        self.norm1 = norm_layer(dim)
        self.attn = ReversedAttention(dim, num_heads, qkv_bias, head_select_temp, msg_hidden_ratio, proj_drop)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def num_kept(self, num_tokens: int) -> int:
        """Tokens left after this block's pruning (all of them when it does not prune)."""
        if self.keep_fraction is None:
            return num_tokens
        return max(1, math.floor(self.keep_fraction * num_tokens + 1e-9))

    def forward(self, x: torch.Tensor, msg: torch.Tensor, return_mask: bool = False):
        """Returns (x, msg, kept index (B, K) into the input tokens or None, received mass, mask or None)."""
        out, msg, recv, mask = self.attn(self.norm1(x), msg, return_mask)
        x = x + self.drop_path1(self.ls1(out))
        index = None
        if self.keep_fraction is not None:
            keep = self.num_kept(x.shape[1])
            index = recv.topk(keep, dim=1).indices.sort(dim=1).values
            x, msg = gather_tokens(x, index), gather_tokens(msg, index)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, msg, index, recv, mask


class DependencyViT(nn.Module):
    """DependencyViT (and -Lite with `prune_layers`): see the module docstring."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 192,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            head_select_temp: float = 0.1,
            msg_hidden_ratio: float = 0.5,
            init_values: Optional[float] = 1e-6,
            prune_layers: Sequence[int] = (),
            prune_ratio: float = 0.16,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_eps: float = 1e-6,
            kernel_impl: Optional[str] = None,
    ):
        """
        Args:
            img_size: input size (fixed by the position embedding).
            patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the ViT.
            global_pool: 'avg' (M-weighted tokens averaged) or '' (forward_head returns the tokens).
            head_select_temp: temperature tau of the head selector's softmax over heads.
            msg_hidden_ratio: hidden width of the message controller as a fraction of embed_dim.
            init_values: LayerScale init (None or 0: no LayerScale).
            prune_layers: 0-indexed blocks after whose attention tokens are pruned (Lite); () for none.
            prune_ratio: fraction of the initial token count removed at each pruning.
            drop_rate: dropout before the head. proj_drop_rate: dropout after projections and on the embedding.
            drop_path_rate: stochastic depth, linear over the blocks.
            norm_eps: LayerNorm eps.
            kernel_impl: reversed-attention implementation (None: process-wide setting, see layers.config).
        """
        super().__init__()
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        prune_layers = tuple(sorted(prune_layers))
        if any(not 0 <= i < depth for i in prune_layers) or len(set(prune_layers)) != len(prune_layers):
            raise ValueError(f'prune_layers must be distinct block indices in [0, {depth}), got {prune_layers}')
        if prune_layers and not 0 < prune_ratio * len(prune_layers) < 1:
            raise ValueError(f'{len(prune_layers)} prunings of {prune_ratio} of the tokens must leave some tokens')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0
        self.grad_checkpointing = False
        self.prune_layers, self.prune_ratio = prune_layers, prune_ratio
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.img_size = self.patch_embed.img_size
        self.grid_size = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(proj_drop_rate)
        keep = {}
        for i, layer in enumerate(prune_layers, start=1):
            keep[layer] = (1 - i * prune_ratio) / (1 - (i - 1) * prune_ratio)
        dpr = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, head_select_temp, msg_hidden_ratio, init_values,
                  proj_drop_rate, dpr[i], norm_layer, keep.get(i))
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        reduction = self.patch_embed.patch_size[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f'blocks.{i}') for i in range(depth)]

        trunc_normal_(self.pos_embed, std=.02)
        self.apply(init_vit_weights)
        set_module_kernel_impl(self, kernel_impl)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'pos_embed'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^pos_embed|patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def token_counts(self) -> List[int]:
        """Tokens each block outputs at the model's input size (Lite: 196 -> ... -> 69 at 224x224)."""
        n, counts = self.patch_embed.num_patches, []
        for blk in self.blocks:
            n = blk.num_kept(n)
            counts.append(n)
        return counts

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.in_chans, self.img_size, model_name=type(self).__name__)
        return self.pos_drop(self.patch_embed(x) + self.pos_embed)

    def _run_blocks(self, x: torch.Tensor, blocks: Sequence[int], take: Sequence[int] = (), norm: bool = False,
                    track: bool = False):
        """Run the blocks. Returns (tokens, msg, intermediates on the full grid, per-block trace if `track`)."""
        B, N, C = x.shape
        msg = x.new_ones(B, N)
        position = torch.arange(N, device=x.device).expand(B, -1)  # grid index of each current token
        grid = x if take else None
        intermediates, trace = [], []
        for i in blocks:
            blk = self.blocks[i]
            if self.grad_checkpointing and not torch.jit.is_scripting() and not track:
                x, msg, index, recv, mask = checkpoint(blk, x, msg, use_reentrant=False)
            else:
                x, msg, index, recv, mask = blk(x, msg, return_mask=track)
            before = position
            if index is not None:
                position = gather_tokens(position, index)
            if track:  # recv and mask are over the block's input tokens, msg over the tokens it kept
                trace.append(dict(position=before, mask=mask, recv=recv, msg=msg, kept_position=position))
            if take:
                if x.shape[1] == N:
                    grid = x
                else:
                    grid = grid.scatter(1, position[..., None].expand(-1, -1, C), x)
                if i in take:
                    intermediates.append(self.norm(grid) if norm else grid)
        return x, msg, intermediates, trace

    def _head_tokens(self, x: torch.Tensor, msg: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * msg[..., None]

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs on the full patch grid (Lite: pruned tokens keep their last value).

        Args:
            x: (B, C, H, W) input.
            indices: None for all blocks, n for the last n, or a list of block indices (negatives allowed).
            norm: apply the final norm to the intermediates.
            stop_early: stop after the last selected block.
            output_fmt: 'NCHW' or 'NLC'.
            intermediates_only: return only the intermediates.
        """
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        last = max_index if stop_early else len(self.blocks) - 1
        x, msg, grids, _ = self._run_blocks(self._embed(x), range(last + 1), take=take_indices, norm=norm)
        grids = token_maps(grids, self.grid_size, output_fmt)
        if intermediates_only:
            return grids
        return self._head_tokens(x, msg), grids

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        return prune_stages(self, indices, prune_head, prune_norm, levels='blocks')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens as the head sees them: final norm times the cumulative message M, (B, N_kept, C)."""
        x, msg, _, _ = self._run_blocks(self._embed(x), range(len(self.blocks)))
        return self._head_tokens(x, msg)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def dependency_tree(self, x: torch.Tensor, return_masks: bool = False) -> Dict[str, torch.Tensor]:
        """The dependency tree the reversed attention induces, layer by layer (the paper's parsing output).

        Token t's parent at layer l is argmax_p of its soft-mask column, mask[p, t] = sum_h A_F[h, t, p] P[t, h]
        (the gate's M[t] is a per-child factor and does not move the argmax). Indices are positions on the
        patch grid (row-major, `grid_size`), also after Lite pruning.

        Returns a dict:
            parents (L, B, N) long: parent of each token at each layer, -1 for tokens already pruned;
            message (L, B, N): cumulative message controller M_l of each token after the layer (0 for tokens the
                layer pruned or that were pruned before): how much it still sends;
            received (L, B, N): message mass each token receives (0 once pruned); roots receive most;
            alive (L, B, N) bool: tokens present in the layer (before its own pruning);
            masks (only with return_masks): list of L soft masks (B, N_l, N_l) over the layer's tokens, with
                positions (L entries of (B, N_l)) under 'positions'.
        """
        x, _, _, trace = self._run_blocks(self._embed(x), range(len(self.blocks)), track=True)
        B, N = trace[0]['position'].shape
        parents, message, received, alive = [], [], [], []
        for step in trace:
            position, mask = step['position'], step['mask']
            local_parent = mask.argmax(dim=1)  # (B, N_l): for each child column, its parent row
            parent = position.new_full((B, N), -1).scatter(1, position, position.gather(1, local_parent))
            parents.append(parent)
            message.append(x.new_zeros(B, N).scatter(1, step['kept_position'], step['msg']))
            received.append(x.new_zeros(B, N).scatter(1, position, step['recv']))
            alive.append(torch.zeros(B, N, dtype=torch.bool, device=x.device).scatter(1, position, True))
        tree = dict(parents=torch.stack(parents), message=torch.stack(message), received=torch.stack(received),
                    alive=torch.stack(alive))
        if return_masks:
            tree['masks'] = [step['mask'] for step in trace]
            tree['positions'] = [step['position'] for step in trace]
        return tree


def checkpoint_filter_fn(state_dict: dict, model: DependencyViT) -> dict:
    """Checkpoints in this file's layout (no official layout exists), bare or wrapped in 'model'/'state_dict';
    the position embedding is resampled when the model was built for another image size."""
    state_dict = dict(unwrap_state_dict(state_dict))
    resample_pos_embed(state_dict, model, num_prefix_tokens=0)
    check_state_dict_keys(state_dict, model, source='DependencyViT checkpoint')
    return state_dict


def _create_dependencyvit(variant: str, pretrained: bool = False, **kwargs) -> DependencyViT:
    return build_model_with_cfg(
        DependencyViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(2, 5, 8, 11), feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'fixed_input_size': True,
        'crop_pct': 0.9, 'interpolation': 'bicubic', 'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5),
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'mit',
        'paper_ids': 'arXiv:2304.03282', 'paper_name': 'Visual Dependency Transformers',
        'origin_url': 'https://github.com/dingmyu/DependencyViT',
        'notes': 'architecture only: the authors released no code and no weights', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'dependencyvit_tiny': _cfg(),
    'dependencyvit_small': _cfg(),
    'dependencyvit_lite_tiny': _cfg(),
})


@register_model
def dependencyvit_tiny(pretrained: bool = False, **kwargs) -> DependencyViT:
    model_args = dict(embed_dim=192, depth=12, num_heads=12)
    return _create_dependencyvit('dependencyvit_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dependencyvit_small(pretrained: bool = False, **kwargs) -> DependencyViT:
    model_args = dict(embed_dim=384, depth=12, num_heads=12)
    return _create_dependencyvit('dependencyvit_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dependencyvit_lite_tiny(pretrained: bool = False, **kwargs) -> DependencyViT:
    model_args = dict(embed_dim=192, depth=12, num_heads=12, prune_layers=(1, 4, 7, 10), prune_ratio=0.16)
    return _create_dependencyvit('dependencyvit_lite_tiny', pretrained=pretrained, **dict(model_args, **kwargs))
