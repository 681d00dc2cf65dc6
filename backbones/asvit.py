"""Adaptive Sparse ViT (AS-ViT): learnable adaptive token pruning on DeiT and LV-ViT.

Paper: X. Liu, T. Wu, G. Guo, "Adaptive Sparse ViT: Towards Learnable Adaptive Token Pruning by Fully
Exploiting Self-Attention", IJCAI 2023, https://arxiv.org/abs/2209.13802

    @inproceedings{liu2023adaptive,
      title={Adaptive Sparse ViT: Towards Learnable Adaptive Token Pruning by Fully Exploiting Self-Attention},
      author={Liu, Xiangcheng and Wu, Tianyi and Guo, Guodong},
      booktitle={IJCAI},
      year={2023}
    }

Official code: https://github.com/Cydia2018/AS-ViT, matched at commit ea7ccdbca85bd0e41db1e818ad8c28b870125234
(vit.py: VisionTransformerDiffPruning; losses.py: DistillDiffPruningFLOPsLoss). No licence file; no AS-ViT weights
are released (fine-tuning starts from the DeiT / TokenLabeling checkpoints).

Structure: a plain DeiT (or LV-ViT) whose every attention also yields a score per patch token: its class-token
attention weighted by token-level head importance (`layers.token_prune`). Before the pruning blocks (4, 7, 10 for
DeiT-Tiny/Small; 3, 6, 9 for the 256-wide DeiT) the score of the previous block is compared with a learnable scalar
threshold per stage:
- eval: tokens with score > threshold are removed for good (pruning is cumulative);
- training: nothing is removed; a straight-through hard mask hard(sigmoid((s - thr) / 1e-4)) enters every
  following attention as a key mask, and each block reports its FLOPs for the kept-token count, so the budget loss
  |mean FLOPs - keep_ratio x dense FLOPs| trains the thresholds.
Eval pruning modes (`prune_mode`): 'per_image' (default; the official batch-size-1 result at any batch size, the
padding of images that keep fewer tokens masked out of attention), 'batch_topk' (the official batched rule, whose
logits depend on the batch), 'none' (plain DeiT).

Measurements, the pruning-gain investigation and their commands: docs/asvit.md.

Deviations:
- The pruning score always comes from the block just before a pruning block (the official `target_index` gives
  the same for every published variant); the `accu`/`ema_accu` options (off in the released recipes) are not
  implemented.
- The official batch-size-1 path crashes when one or no token survives a stage; ours keeps working (a stage may
  keep zero patch tokens; LV-ViT's auxiliary head then uses the class token).
- Training returns plain logits (the timm contract); the budget term of the last training forward comes from
  `training_losses()` (the hook protocol, engine/hooks.py), which train.py adds. With distilled training an LV-ViT
  also hands its kept tokens' logits to the token-level KL (`distill_targets`, `distill_losses`). The distillation term is train.py's soft distillation in additive mode (`distill_weighting: add`), as losses.py
  computes it: CE + 2.0 * budget + 0.5 * KL(student || teacher). The official DeiT training path returns an
  undefined `flops_1stage` and cannot run as released; the budget loss follows losses.py.
- Features (`features_only`, `forward_intermediates`) are per block on the 14x14 grid: a pruned token keeps the
  value it had when it was pruned, kept tokens are scattered back to their positions.
- The input size is fixed by the position embedding (a clear error names it); build with another `img_size` and
  checkpoints are resampled on load.
- MixToken and token labels (TokenLabeling's pre-training) are not part of AS-ViT's fine-tuning forward and are
  not implemented.
"""
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, PatchEmbed, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from layers import (
    AdaptiveThreshold, attention_with_cls_score, gather_tokens, select_tokens_batch_topk, set_module_kernel_impl)
from layers import is_capturing_graph, select_tokens_per_image, traceable_only
from ._helpers import (
    build_model_with_cfg, check_input_size, check_state_dict_keys, feature_take_indices, init_vit_weights,
    prune_stages, remap_state_dict, resample_pos_embed, token_maps, unwrap_state_dict,
)

__all__ = ['AdaptiveSparseViT']

PRUNE_MODES = ('per_image', 'batch_topk', 'none')


class Attention(nn.Module):
    """Multi-head self-attention that also returns the pruning score of every patch token."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0., proj_drop: float = 0.):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.kernel_impl: Optional[str] = None  # the operator's implementation, set by the model
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)  # NOTE: kept for the official layout; the official code never applies it
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
                policy: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out, score = attention_with_cls_score(q, k, v, self.scale, key_mask, policy, impl=self.kernel_impl)
        x = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
        return x, score


class Block(nn.Module):
    """Pre-norm transformer block whose attention returns token scores.

    LV-ViT divides both residual branches by `skip_lam` (2) and counts FLOPs in more detail (`lvvit_flops`).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = True, proj_drop: float = 0.,
                 attn_drop: float = 0., drop_path: float = 0., norm_layer=None, skip_lam: float = 1.,
                 lvvit_flops: bool = False):
        super().__init__()
        self.dim, self.mlp_dim, self.num_heads = dim, int(dim * mlp_ratio), num_heads
        self.skip_lam, self.lvvit_flops = skip_lam, lvvit_flops
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, self.mlp_dim, act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
                policy: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        attn_out, score = self.attn(self.norm1(x), key_mask, policy)
        if self.skip_lam == 1.:
            x = x + self.drop_path(attn_out)
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        else:
            x = x + self.drop_path(attn_out) / self.skip_lam
            x = x + self.drop_path(self.mlp(self.norm2(x))) / self.skip_lam
        return x, score

    def flops(self, num_tokens: torch.Tensor) -> torch.Tensor:
        """GFLOPs of the block for `num_tokens` tokens, the official analytic count used by the budget loss."""
        dim, mlp_dim, n = self.dim, self.mlp_dim, num_tokens
        flops = 4 * dim * dim * n + 2 * dim * n * n + 2 * dim * mlp_dim * n
        if self.lvvit_flops:
            # lvvit.py also counts softmax (5 per score), scaling, biases, residuals, norms (5) and GELU (8)
            flops = flops + (5 + 1) * n * n * self.num_heads + dim * n * (1 + 1 + 5 + 1 + 1 + 5) \
                + mlp_dim * n * (8 + 1)
        return flops / 1e9


class ConvPatchEmbed(nn.Module):
    """LV-ViT's patch embedding: conv 7x7/2 -> 3x3 -> 3x3 (each BN + ReLU, 64 channels), then a (p/2) x (p/2)
    strided projection; tokens (B, N, C)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384,
                 stem_chs: int = 64):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.stem_chs = stem_chs
        self.conv1 = nn.Conv2d(in_chans, stem_chs, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.conv2 = nn.Conv2d(stem_chs, stem_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem_chs)
        self.conv3 = nn.Conv2d(stem_chs, stem_chs, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(stem_chs)
        self.act = nn.ReLU()
        self.proj = nn.Conv2d(stem_chs, embed_dim, patch_size // 2, stride=patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.act(self.bn3(self.conv3(x)))
        return self.proj(x).flatten(2).transpose(1, 2)

    def flops(self, in_chans: int, embed_dim: int) -> float:
        """lvvit.py's analytic count (its projection term is counted at the half-resolution grid)."""
        half = (self.img_size[0] / 2) * (self.img_size[1] / 2)
        c = self.stem_chs
        return half * (in_chans * c * 49 + 2 * c * c * 9 + c * embed_dim) / 1e9


class AdaptiveSparseViT(nn.Module):
    """DeiT or LV-ViT with AS-ViT's learnable-threshold token pruning."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 6,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            pruning_loc: Sequence[int] = (4, 7, 10),
            threshold_init: Sequence[float] = (0.001, 0.002, 0.003),
            prune_mode: str = 'per_image',
            keep_ratio: float = 0.7,
            budget_weight: float = 2.0,
            lvvit: bool = False,
            skip_lam: float = 1.,
            norm_eps: float = 1e-6,
            kernel_impl: Optional[str] = None,
    ):
        """
        Args:
            img_size: input size (fixed by the position embedding).
            patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the DeiT.
            global_pool: 'token' (class token) or '' (no pooling: forward_head returns the tokens).
            drop_rate: dropout before the head. proj_drop_rate: dropout after attention/MLP projections and on
                the embedded tokens (the official `drop_rate`). attn_drop_rate: unused by the official forward.
            drop_path_rate: stochastic depth, linear over the blocks.
            pruning_loc: block indices before which tokens are pruned.
            threshold_init: initial keep thresholds, one per pruning stage.
            prune_mode: eval pruning: 'per_image', 'batch_topk' (official batched rule) or 'none'.
            keep_ratio: training FLOPs budget as a fraction of the dense model's FLOPs (official base_rate).
            budget_weight: weight of the budget term of `training_losses()` (official ratio_weight).
            lvvit: LV-ViT structure: convolutional patch embedding, auxiliary token head (eval output
                head(cls) + 0.5 * max over the kept tokens of aux_head(token)), detailed FLOP count.
            skip_lam: residual branches are divided by it (LV-ViT: 2).
            norm_eps: LayerNorm eps (DeiT 1e-6, LV-ViT 1e-5).
            kernel_impl: attention implementation (None: process-wide setting, see layers.config).
        """
        super().__init__()
        if prune_mode not in PRUNE_MODES:
            raise ValueError(f'prune_mode must be one of {PRUNE_MODES}, got {prune_mode!r}')
        if len(threshold_init) != len(pruning_loc):
            raise ValueError(f'{len(pruning_loc)} pruning stages need as many thresholds, got {threshold_init}')
        if global_pool not in ('token', ''):
            raise ValueError(f"global_pool must be 'token' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        self.pruning_loc = tuple(pruning_loc)
        self.prune_mode = prune_mode
        self.keep_ratio, self.budget_weight = keep_ratio, budget_weight
        self.distilled_training = False
        self._budget_loss = None  # of the last training forward
        self._train_keep = None
        self._train_token_logits = None
        self.lvvit = lvvit
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)

        if lvvit:
            self.patch_embed = ConvPatchEmbed(img_size, patch_size, in_chans, embed_dim)
        else:
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.img_size = self.patch_embed.img_size
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(proj_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate, dpr[i], norm_layer,
                  skip_lam, lvvit)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.aux_head = (nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()) if lvvit else None
        self.token_pruners = nn.ModuleList([AdaptiveThreshold(t) for t in threshold_init])
        reduction = self.patch_embed.patch_size[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f'blocks.{i}') for i in range(depth)]

        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        self.apply(init_vit_weights)
        set_module_kernel_impl(self, kernel_impl)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'pos_embed', 'cls_token'} | {f'token_pruners.{i}.keep_threshold' for i in range(len(self.pruning_loc))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^cls_token|pos_embed|patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,)),
                                                                      (r'^token_pruners', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """LV-ViT distillation (train.py turns it on): the training forward returns the class-token logits and
        keeps the aux head's token logits, so that `distill_losses` can add the token-level KL over kept tokens."""
        self.distilled_training = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('token', ''):
                raise ValueError(f"global_pool must be 'token' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if self.aux_head is not None:
            self.aux_head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def dense_flops(self) -> float:
        """GFLOPs of the unpruned model by the official analytic count (the budget loss's reference)."""
        n = self.patch_embed.num_patches
        return self._patch_embed_flops() + sum(float(blk.flops(n)) for blk in self.blocks)

    def _patch_embed_flops(self) -> float:
        if self.lvvit:
            return self.patch_embed.flops(self.in_chans, self.embed_dim)
        p = self.patch_embed.patch_size[0]
        return self.patch_embed.num_patches * self.embed_dim * self.in_chans * p * p / 1e9

    @torch.no_grad()
    def calibrate_thresholds(self, x: torch.Tensor, keep_ratios: Sequence[float] = (0.7, 0.49, 0.343)) -> List[float]:
        """Set the keep thresholds so that, over the batch `x`, each stage keeps `keep_ratios` of all patch tokens
        (cumulative, as the official token_ratio [r, r^2, r^3]). A starting point for fine-tuning at a budget, and
        how benchmarks put an untrained model at the paper's operating point. Returns the thresholds."""
        was_training, mode = self.training, self.prune_mode
        self.eval()
        self.prune_mode = 'per_image'
        thresholds = []
        try:
            for stage, loc in enumerate(self.pruning_loc):
                captured = []
                hook = self.blocks[loc - 1].register_forward_hook(lambda m, args, out: captured.append(out[1]))
                try:
                    self.forward_features(x)
                finally:
                    hook.remove()
                scores = captured[0][torch.isfinite(captured[0])].flatten().sort(descending=True).values
                k = min(max(int(round(keep_ratios[stage] * self.patch_embed.num_patches * x.shape[0])), 1),
                        scores.numel())
                below = scores[k] if k < scores.numel() else scores[-1] - 1
                value = float((scores[k - 1] + below) / 2)
                self.token_pruners[stage].keep_threshold.fill_(value)
                thresholds.append(value)
        finally:
            self.prune_mode = mode
            self.train(was_training)
        return thresholds

    @torch.jit.ignore
    def training_losses(self, criterion: nn.Module, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Budget term of the last training forward: weight * |mean per-image GFLOPs - keep_ratio * dense|."""
        if self._budget_loss is None:
            raise RuntimeError('training_losses() needs a training-mode forward first')
        budget, self._budget_loss = self._budget_loss, None  # read once: a kept graph would block deepcopy
        return dict(flops_budget=self.budget_weight * budget)

    @property
    def distill_targets(self) -> Tuple[str, ...]:
        """The teacher targets the last training forward distils from: LV-ViT's token logits when distilling."""
        return ('token_logits',) if self._train_token_logits is not None else ()

    @torch.jit.ignore
    def distill_losses(self, teacher_targets: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Token-level KL(student || teacher) over the tokens the last training forward kept (LV-ViT)."""
        if self._train_token_logits is None:
            return {}
        token_logits, self._train_token_logits = self._train_token_logits, None  # read once, as training_losses
        return dict(token_kl=_token_kl(token_logits, teacher_targets['token_logits'], self._train_keep))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.in_chans, self.img_size, model_name=type(self).__name__)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def _run_blocks(self, x: torch.Tensor, blocks: Sequence[int], take: Sequence[int] = (), norm: bool = False,
                    keep_log: Optional[List[torch.Tensor]] = None):
        """Run blocks[...] with pruning. Returns (tokens, key_mask, intermediates on the full patch grid).

        `keep_log` (inference only), if a list, receives each pruning stage's kept patch tokens, (B, N) bool."""
        B, N = x.shape[0], x.shape[1] - 1
        track = bool(take) or keep_log is not None
        training = self.training
        score, key_mask, policy = None, None, None
        position = None  # (B, K): grid index of each current patch token; N marks padding
        grid = x[:, 1:] if take else None  # full-grid buffer: a pruned token keeps its last value
        intermediates = []
        export_form = not training and self.prune_mode == 'per_image' and traceable_only()
        if training:
            policy = x.new_ones(B, N + 1)
            flops = self._patch_embed_flops() + x.new_zeros(B)
        stage = 0
        for i in blocks:
            if i in self.pruning_loc and self.prune_mode != 'none':
                threshold = self.token_pruners[stage].keep_threshold
                if training:
                    policy = torch.cat([policy[:, :1], self.token_pruners[stage](score)], dim=1)
                elif export_form:
                    # Export form: the same pruning as a key mask over the full token set (the score of a masked
                    # token is -inf, so pruning stays cumulative); pruned tokens are still computed but no kept token
                    # sees them. Shapes no longer depend on the data, so the graph traces exactly.
                    alive = score > threshold
                    key_mask = torch.cat([alive.new_ones(B, 1), alive], dim=1)
                else:
                    if self.prune_mode == 'per_image':
                        index, valid = select_tokens_per_image(score, threshold)
                        key_mask = torch.cat([valid.new_ones(B, 1), valid], dim=1)
                    else:
                        if is_capturing_graph():
                            raise RuntimeError(
                                "AS-ViT prune_mode='batch_topk' cannot be exported: its token count depends on the "
                                "whole batch's scores; export with prune_mode='per_image' (the default) or 'none'")
                        index, valid = select_tokens_batch_topk(score, threshold), None
                    x = torch.cat([x[:, :1], gather_tokens(x[:, 1:], index)], dim=1)
                    if track:
                        position = index if position is None else gather_tokens(position, index)
                        if valid is not None:
                            position = position.masked_fill(~valid, N)
                    if keep_log is not None:
                        kept = torch.zeros(B, N + 1, dtype=torch.bool, device=x.device).scatter(1, position, True)
                        keep_log.append(kept[:, :N])
                stage += 1
            blk = self.blocks[i]
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, score = checkpoint(blk, x, key_mask, policy, use_reentrant=False)
            else:
                x, score = blk(x, key_mask, policy)
            if training:
                flops = flops + blk.flops(policy.sum(dim=1))
            if i in take:
                tokens = self.norm(x) if norm else x
                if export_form and key_mask is not None:  # a pruned token keeps its last value
                    grid = torch.where(key_mask[:, 1:, None], tokens[:, 1:], grid)
                elif position is None:
                    grid = tokens[:, 1:]
                else:
                    grid = torch.cat([grid, grid.new_zeros(B, 1, grid.shape[-1])], dim=1)
                    grid = grid.scatter(1, position[..., None].expand(-1, -1, grid.shape[-1]), tokens[:, 1:])[:, :N]
                intermediates.append(grid)
        if training:
            self._budget_loss = (flops.mean() - self.dense_flops() * self.keep_ratio).abs()
            self._train_keep = policy[:, 1:].detach()
        if key_mask is not None and x.shape[1] > 1:
            # Padding rows become copies of the image's first kept patch token (its class token if it kept none),
            # so that per-token maxima (LV-ViT's aux head) and any later token reduction see only real tokens.
            # (the first kept patch token sits at index 1, or in the export form at the first unmasked position)
            has_tokens = key_mask[:, 1:].to(torch.uint8).argmax(dim=1, keepdim=True) + 1
            has_tokens = has_tokens.masked_fill(~key_mask[:, 1:].any(dim=1, keepdim=True), 0)
            fill = torch.arange(x.shape[1], device=x.device).expand(B, -1)
            fill = torch.where(key_mask, fill, has_tokens.expand_as(fill))
            x = gather_tokens(x, fill)
        return x, intermediates

    @torch.no_grad()
    def kept_token_masks(self, x: torch.Tensor) -> torch.Tensor:
        """The patch tokens each pruning stage keeps at inference, read from the forward's own selection.

        Returns (stages, B, N) bool over the patch grid (row-major, `grid_size`); no stages with prune_mode 'none'.
        """
        if self.training:
            raise RuntimeError('kept_token_masks reads the inference-time selection: call model.eval() first')
        keep_log = []
        self._run_blocks(self._embed(x), range(len(self.blocks)), keep_log=keep_log)
        if not keep_log:
            return torch.zeros(0, x.shape[0], self.patch_embed.num_patches, dtype=torch.bool, device=x.device)
        return torch.stack(keep_log)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs on the full patch grid (pruned tokens keep their last value).

        Args:
            x: (B, C, H, W) input.
            indices: None for all blocks, n for the last n, or a list of block indices (negatives allowed).
            norm: apply the final norm to the intermediates.
            stop_early: stop after the last selected block.
            output_fmt: 'NCHW' or 'NLC' (patch tokens only).
            intermediates_only: return only the intermediates.
        """
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        last = max_index if stop_early else len(self.blocks) - 1
        x, grids = self._run_blocks(self._embed(x), range(last + 1), take=take_indices, norm=norm)
        grids = token_maps(grids, self.grid_size, output_fmt)
        if intermediates_only:
            return grids
        return self.norm(x), grids

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        return prune_stages(self, indices, prune_head, prune_norm, levels='blocks')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self._run_blocks(self._embed(x), range(len(self.blocks)))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        tokens = x
        if self.global_pool == 'token':
            x = x[:, 0]
        x = self.head_drop(x)
        if pre_logits:
            return x
        logits = self.head(x)
        if self.aux_head is not None and self.global_pool == 'token' and self.num_classes > 0:
            # an image that kept no patch token has only its class token here: it then stands in for them
            patch = tokens[:, 1:] if tokens.shape[1] > 1 else tokens
            logits = logits + 0.5 * self.aux_head(patch).amax(dim=1)
        return logits

    @torch.jit.ignore
    def forward_distill_targets(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """As a teacher: class-token logits (B, classes) and, for LV-ViT, per-token aux logits (B, N, classes)."""
        x = self.forward_features(x)
        targets = dict(logits=self.head(x[:, 0]))
        if self.aux_head is not None:
            targets['token_logits'] = self.aux_head(x[:, 1:])
        return targets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        self._train_token_logits = None
        if self.training and self.distilled_training and self.aux_head is not None:
            self._train_token_logits = self.aux_head(x[:, 1:])
            return self.head(self.head_drop(x[:, 0]))
        return self.forward_head(x)


def _token_kl(student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher) per token over the tokens the student kept (keep > 0.5), as AS-ViT/DynamicViT."""
    kept = keep.reshape(-1) > 0.5
    if not kept.any():
        return student.new_zeros(())
    student = student.reshape(-1, student.shape[-1])[kept]
    teacher = teacher.reshape(-1, teacher.shape[-1])[kept]
    return F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), reduction='batchmean',
                    log_target=True)


_KEY_RULES = ((r'^score_predictor\.(\d+)\.keep_threshold$', r'token_pruners.\1.keep_threshold'),)


def checkpoint_filter_fn(state_dict: dict, model: AdaptiveSparseViT) -> dict:
    """Load AS-ViT checkpoints ({'model': ...}) and plain DeiT/timm ViT checkpoints (thresholds keep their init).

    The position embedding is resampled when the model was built for another image size.
    """
    state_dict = remap_state_dict(unwrap_state_dict(state_dict), _KEY_RULES)
    if not any(k.startswith('token_pruners.') for k in state_dict):
        for name, value in model.state_dict().items():
            if name.startswith('token_pruners.'):
                state_dict[name] = value.detach().clone()
    resample_pos_embed(state_dict, model, num_prefix_tokens=1)
    check_state_dict_keys(state_dict, model, source='AS-ViT/DeiT checkpoint')
    return state_dict


def _create_asvit(variant: str, pretrained: bool = False, **kwargs) -> AdaptiveSparseViT:
    return build_model_with_cfg(
        AdaptiveSparseViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(2, 5, 8, 11), feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'fixed_input_size': True,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'other',
        'paper_ids': 'arXiv:2209.13802', 'paper_name': 'Adaptive Sparse ViT',
        'origin_url': 'https://github.com/Cydia2018/AS-ViT', **kwargs,
    }


_LVVIT_NOTE = 'LV-ViT (TokenLabeling) base weights, Apache-2.0, to fine-tune from; AS-ViT releases no weights'
_TOKEN_LABELING = 'https://github.com/zihangJiang/TokenLabeling/releases/download/1.0'
_BASE_NOTE = 'DeiT base weights (Apache-2.0) to fine-tune from; AS-ViT releases no weights; thresholds keep their init'
default_cfgs = generate_default_cfgs({
    'asvit_deit_tiny.deit_in1k': _cfg(
        url='https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth', notes=_BASE_NOTE),
    'asvit_deit_small.deit_in1k': _cfg(
        url='https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth', notes=_BASE_NOTE),
    'asvit_deit_256': _cfg(notes='architecture only (infer.py deit_256): no weights exist'),
    'asvit_lvvit_s.token_labeling_in1k': _cfg(
        url=f'{_TOKEN_LABELING}/lvvit_s-26M-224-83.3.pth.tar', crop_pct=0.9, first_conv='patch_embed.conv1',
        notes=_LVVIT_NOTE),
    'asvit_lvvit_m.token_labeling_in1k': _cfg(
        url=f'{_TOKEN_LABELING}/lvvit_m-56M-224-84.0.pth.tar', crop_pct=0.9, first_conv='patch_embed.conv1',
        notes=_LVVIT_NOTE),
})


@register_model
def asvit_deit_tiny(pretrained: bool = False, **kwargs) -> AdaptiveSparseViT:
    model_args = dict(embed_dim=192, depth=12, num_heads=3, pruning_loc=(4, 7, 10))
    return _create_asvit('asvit_deit_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def asvit_deit_small(pretrained: bool = False, **kwargs) -> AdaptiveSparseViT:
    model_args = dict(embed_dim=384, depth=12, num_heads=6, pruning_loc=(4, 7, 10))
    return _create_asvit('asvit_deit_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def asvit_deit_256(pretrained: bool = False, **kwargs) -> AdaptiveSparseViT:
    model_args = dict(embed_dim=256, depth=12, num_heads=4, pruning_loc=(3, 6, 9))
    return _create_asvit('asvit_deit_256', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def asvit_lvvit_s(pretrained: bool = False, **kwargs) -> AdaptiveSparseViT:
    model_args = dict(embed_dim=384, depth=16, num_heads=6, mlp_ratio=3., qkv_bias=False, pruning_loc=(5, 9, 13),
                      lvvit=True, skip_lam=2., norm_eps=1e-5)
    return _create_asvit('asvit_lvvit_s', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def asvit_lvvit_m(pretrained: bool = False, **kwargs) -> AdaptiveSparseViT:
    model_args = dict(embed_dim=512, depth=20, num_heads=8, mlp_ratio=3., qkv_bias=False, pruning_loc=(6, 11, 16),
                      lvvit=True, skip_lam=2., norm_eps=1e-5)
    return _create_asvit('asvit_lvvit_m', pretrained=pretrained, **dict(model_args, **kwargs))
