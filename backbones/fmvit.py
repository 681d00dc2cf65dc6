"""FMViT: a multiple-frequency mixing vision transformer (a reconstruction: no official code or weights exist).

Paper: W. Tan, Y. Geng, X. Xie, "FMViT: A multiple-frequency mixing Vision Transformer", arXiv:2311.05707 (v1,
2023-11-09), https://arxiv.org/abs/2311.05707

    @article{tan2023fmvit,
      title={FMViT: A multiple-frequency mixing Vision Transformer},
      author={Tan, Wei and Geng, Yifeng and Xie, Xuansong},
      journal={arXiv preprint arXiv:2311.05707},
      year={2023}
    }

Official code: none. https://github.com/tany0699/FMViT (newest snapshot 40b6bbf33f8fe44944d41338aed4cf0ab3c47d64,
Apache-2.0) holds a README reading "Code coming soon"; no weights were released. Only the abstract of the paper
could be read here, so THIS FILE IS A RECONSTRUCTION from the abstract, not the authors' network: nothing here was
checked against their model, the parameter counts are our own, and no pretrained weights exist for it.

Structure (what the abstract names, as built here):
- gMLP (`MultiGroupMlp`): a BatchNorm-then-MLP whose two 1x1 projections train as parallel Conv-BN branches of 1,
  2 and 4 groups (`layers.RepConvNorm`) and deploy as one dense 1x1 convolution each.
- RLMHSA (`layers.MultiRateAttention`): 1x1 Conv-BN projections, keys/values from the map average-pooled at two
  rates, one rate per half of the heads.
- CFB, the convolutional block: a multi-head convolutional mixer (grouped 3x3 + grouped 1x1 + identity,
  re-parameterized into one grouped 3x3, ReLU, a 1x1 Conv-BN) and a `MultiGroupMlp`, each residual.
- FMB, the frequency-mixing block (`FrequencyMixingBlock`): after a BatchNorm, the high-frequency path (the CFB
  mixer without its 1x1, on the first (1 - lf_ratio) of the channels) and the low-frequency path (multi-rate
  attention to lf_ratio of them) are concatenated and fused by one 1x1 Conv-BN, residual; then a `MultiGroupMlp`.
- Macro layout: a 3-conv stride-4 stem, four stages at strides 4/8/16/32 with 2x2 average pooling + 1x1 Conv-BN
  downsampling, conv blocks with a mixing block every `fmb_intervals[i]`-th block, final BatchNorm, global average
  pool, linear head. timm's `reparameterize_model(model.eval())` gives the deploy form.

Assumptions with their reasons, variant sizing and measurements: docs/fmvit.md.

Deviations (assumptions, none confirmed by the paper body):
- A1 macro layout after Next-ViT (arXiv:2207.05501), the deployment-benchmarked hybrid the abstract compares with.
- A2 only BatchNorm and ReLU, for TensorRT/CoreML-friendly deployment.
- A3 key/value pooling rates per stage (8, 16) / (4, 8) / (2, 4) / (1, 2); head dim 32 (16 for the tiny model);
  half of a mixing block's channels to the low-frequency path.
- A4 branch sets: gMLP groups (1, 2, 4); conv mixer groups = channels / head_dim, 3x3 + 1x1 + identity.
- A5 sizes: `fmvit_t` and `fmvit_b` are sized to the deployed parameters and MACs of the abstract's two operating
  points (MobileOne-S1, ResNet-101); the published accuracies belong to the authors' unreleased models.
- A6 init: He (fan-out) normal convs, trunc-normal(0.02) classifier, the last BatchNorm of every residual branch
  at zero (each block starts as the identity), stochastic depth linear over all blocks.

Deployment: timm's `reparameterize_model(model.eval())` folds every Conv-BN and merges the re-parameterized branches
and the MLP pre-norms (each block's `fuse()`; eval outputs unchanged to float rounding, tested).
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, get_act_layer, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, named_apply, register_model

from layers import ConvNorm, MultiRateAttention, RepConvNorm, folded_bn, set_module_kernel_impl
from ._helpers import (
    build_model_with_cfg, channels_last_on_cpu, check_input_size, check_state_dict_keys, CheckpointMismatchError,
    prune_stages, stage_intermediates, unwrap_state_dict,
)

__all__ = ['FMViT']


class ConvMixer(nn.Module):
    """Multi-head convolutional mixer: grouped 3x3 + grouped 1x1 + identity (one grouped 3x3 once fused), act,
    and (optionally) a 1x1 Conv-BN fusing the groups."""

    def __init__(self, dim: int, head_dim: int, act_layer, proj: bool = True):
        super().__init__()
        groups = dim // head_dim
        self.conv = RepConvNorm(dim, dim, ((3, groups), (1, groups)), identity=True)
        self.act = act_layer()
        self.proj = ConvNorm(dim, dim, bn_weight_init=0.) if proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.conv(x)))


class MultiGroupMlp(nn.Module):
    """The paper's gMLP as reconstructed: BatchNorm, then a 1x1 MLP whose projections are multi-group
    re-parameterized convolutions (parallel 1x1 Conv-BN branches with `groups`, merged for deployment)."""

    def __init__(self, dim: int, hidden_dim: int, act_layer, groups: Sequence[int] = (1, 2, 4)):
        super().__init__()
        if groups[0] != 1:
            raise ValueError(f'MultiGroupMlp needs a dense (1-group) branch first, got groups {tuple(groups)}')
        branches = tuple((1, g) for g in groups)
        self.norm = nn.BatchNorm2d(dim)
        self.fc1 = RepConvNorm(dim, hidden_dim, branches)
        self.act = act_layer()
        self.fc2 = RepConvNorm(hidden_dim, dim, branches, bn_weight_init=0.)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))

    @torch.no_grad()
    def fuse(self) -> nn.Sequential:
        """One dense 1x1 conv (pre-norm and branches folded), act, one dense 1x1 conv. Eval statistics."""
        fc1 = self.fc1.fuse()  # dense: the 1-group branch makes the merged conv ungrouped
        scale, shift = folded_bn(self.norm)
        fc1.bias.add_(fc1.weight[:, :, 0, 0] @ shift)
        fc1.weight.mul_(scale[None, :, None, None])
        return nn.Sequential(fc1, self.act, self.fc2.fuse())


class ConvFusionBlock(nn.Module):
    """CFB: x + ConvMixer(x), then x + MultiGroupMlp(x)."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float, mlp_groups: Sequence[int], drop_path: float,
                 act_layer):
        super().__init__()
        self.mixer = ConvMixer(dim, head_dim, act_layer)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.mlp = MultiGroupMlp(dim, int(dim * mlp_ratio), act_layer, mlp_groups)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.mixer(x))
        return x + self.drop_path2(self.mlp(x))


class FrequencyMixingBlock(nn.Module):
    """FMB: high-frequency conv path and multi-rate attention path side by side, concatenated and fused by a
    1x1 Conv-BN (residual), then x + MultiGroupMlp(x)."""

    def __init__(self, dim: int, head_dim: int, rates: Sequence[int], lf_ratio: float, mlp_ratio: float,
                 mlp_groups: Sequence[int], drop_path: float, act_layer):
        super().__init__()
        unit = head_dim * len(rates)  # the attention path takes whole heads, as many per rate
        lf_dim = min(max(unit, round(dim * lf_ratio / unit) * unit), dim - head_dim)
        self.hf_dim = dim - lf_dim
        if self.hf_dim % head_dim or lf_dim % unit:
            raise ValueError(f'FrequencyMixingBlock: {dim} channels do not split into whole heads of {head_dim} '
                             f'for rates {tuple(rates)} (low-frequency share {lf_ratio})')
        self.norm = nn.BatchNorm2d(dim)
        self.high = ConvMixer(self.hf_dim, head_dim, act_layer, proj=False)
        self.low = MultiRateAttention(dim, lf_dim, head_dim, rates, proj=False)
        self.fusion = ConvNorm(dim, dim, bn_weight_init=0.)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.mlp = MultiGroupMlp(dim, int(dim * mlp_ratio), act_layer, mlp_groups)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        mixed = torch.cat([self.high(y[:, :self.hf_dim]), self.low(y)], dim=1)
        x = x + self.drop_path1(self.fusion(mixed))
        return x + self.drop_path2(self.mlp(x))


class Downsample(nn.Module):
    """2x2 average pooling (ceil mode: odd maps keep their border) + 1x1 Conv-BN; stride 1: the 1x1 alone."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if stride == 2 else nn.Identity()
        self.conv = ConvNorm(in_chs, out_chs) if stride == 2 or in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class FMViTStage(nn.Module):
    """Downsample, then conv fusion blocks with a frequency-mixing block every `fmb_interval`-th block."""

    def __init__(self, in_chs: int, dim: int, depth: int, stride: int, fmb_interval: int, head_dim: int,
                 rates: Sequence[int], lf_ratio: float, mlp_ratio: float, mlp_groups: Sequence[int],
                 drop_path: List[float], act_layer):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = Downsample(in_chs, dim, stride)
        blocks = []
        for j in range(depth):
            if fmb_interval and (j + 1) % fmb_interval == 0:
                blocks.append(FrequencyMixingBlock(dim, head_dim, rates, lf_ratio, mlp_ratio, mlp_groups,
                                                   drop_path[j], act_layer))
            else:
                blocks.append(ConvFusionBlock(dim, head_dim, mlp_ratio, mlp_groups, drop_path[j], act_layer))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class FMViT(nn.Module):
    """FMViT as reconstructed here (see the module docstring: no official architecture is available)."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            stem_chs: Tuple[int, int] = (32, 64),
            embed_dims: Tuple[int, ...] = (96, 192, 384, 768),
            depths: Tuple[int, ...] = (3, 4, 10, 3),
            fmb_intervals: Tuple[int, ...] = (0, 4, 5, 3),
            kv_rates: Tuple[Tuple[int, ...], ...] = ((8, 16), (4, 8), (2, 4), (1, 2)),
            head_dim: int = 32,
            lf_ratio: float = 0.5,
            mlp_ratios: Tuple[float, ...] = (3, 3, 3, 3),
            mlp_groups: Tuple[int, ...] = (1, 2, 4),
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer: Union[str, type] = 'relu',
            kernel_impl: Optional[str] = None,
    ):
        """
        Args:
            in_chans: input image channels.
            num_classes: classifier outputs (0 for no classifier).
            global_pool: head pooling type ('avg', 'max', ... or '' for none).
            stem_chs: channels of the stem's stride-2 and last convs (stride 4 in total).
            embed_dims: channels of each stage.
            depths: blocks per stage.
            fmb_intervals: every n-th block of a stage is a frequency-mixing block (0: none).
            kv_rates: key/value pooling rates of each stage's attention head groups.
            head_dim: channels per attention head and per conv-mixer group.
            lf_ratio: share of a mixing block's channels given to the low-frequency (attention) path.
            mlp_ratios: MLP hidden width ratio per stage.
            mlp_groups: group counts of the MLP projections' parallel branches.
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth rate, linear over all blocks.
            act_layer: activation.
            kernel_impl: implementation of the re-parameterized convs and the attention core in eval mode (None:
                process-wide setting, see layers.config).
        """
        super().__init__()
        num_stages = len(depths)
        if not (len(embed_dims) == len(fmb_intervals) == len(kv_rates) == len(mlp_ratios) == num_stages):
            raise ValueError('FMViT: embed_dims, depths, fmb_intervals, kv_rates and mlp_ratios need one entry '
                             'per stage')
        act_layer = get_act_layer(act_layer)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False

        self.stem = nn.Sequential(
            ConvNorm(in_chans, stem_chs[0], 3, 2, 1), act_layer(),
            ConvNorm(stem_chs[0], stem_chs[0], 3, 1, 1), act_layer(),
            ConvNorm(stem_chs[0], stem_chs[1], 3, 2, 1), act_layer(),
        )
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(depths)]
        stages = []
        self.feature_info = []
        in_chs, reduction = stem_chs[1], 4
        for i in range(num_stages):
            stride = 1 if i == 0 else 2
            reduction *= stride
            stages.append(FMViTStage(
                in_chs, embed_dims[i], depths[i], stride, fmb_intervals[i], head_dim, kv_rates[i], lf_ratio,
                mlp_ratios[i], mlp_groups, dpr[i], act_layer))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f'stages.{i}'))
            in_chs = embed_dims[i]
        self.stages = nn.Sequential(*stages)
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
                                   final_norm=self.norm, norm=norm)

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last selected one (and the head / final norm): what features_only keeps."""
        return prune_stages(self, indices, prune_head, prune_norm)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.in_chans, model_name=type(self).__name__)
        return self.norm(self.stages(self.stem(channels_last_on_cpu(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module, name: Optional[str] = None) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def checkpoint_filter_fn(state_dict: dict, model: FMViT) -> dict:
    """Our own checkpoints (bare, or under 'model' / 'state_dict') pass through: no official layout exists.

    A deploy-form state dict (saved after `fuse()`) is named as such: it loads into a fused model, not this one.
    """
    state_dict = unwrap_state_dict(state_dict)
    if 'stem.0.weight' in state_dict and 'stem.0.conv.weight' not in state_dict:
        raise CheckpointMismatchError(
            'this FMViT checkpoint is in the fused deploy form (saved after reparameterize_model); build the model, '
            'call timm.utils.reparameterize_model(model.eval()) and load_state_dict(...) on the result instead of '
            'loading it through timm')
    check_state_dict_keys(state_dict, model, source='FMViT checkpoint')
    return state_dict


def _create_fmvit(variant: str, pretrained: bool = False, **kwargs) -> FMViT:
    return build_model_with_cfg(
        FMViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0.conv', 'classifier': 'head.fc', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2311.05707', 'paper_name': 'FMViT: A multiple-frequency mixing Vision Transformer',
        'origin_url': 'https://github.com/tany0699/FMViT',
        'notes': 'reconstruction from the paper abstract: no official code, architecture table or weights exist; '
                 'not the authors\' network, no pretrained weights',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'fmvit_t': _cfg(),
    'fmvit_b': _cfg(),
})


@register_model
def fmvit_t(pretrained: bool = False, **kwargs) -> FMViT:
    model_args = dict(stem_chs=(24, 48), embed_dims=(48, 96, 192, 384), depths=(2, 2, 6, 2),
                      fmb_intervals=(0, 2, 3, 2), head_dim=16, mlp_ratios=(3, 3, 3, 3))
    return _create_fmvit('fmvit_t', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fmvit_b(pretrained: bool = False, **kwargs) -> FMViT:
    model_args = dict(stem_chs=(32, 64), embed_dims=(96, 192, 384, 768), depths=(3, 4, 22, 3),
                      fmb_intervals=(0, 4, 5, 3), head_dim=32, mlp_ratios=(3, 3, 3, 3.5))
    return _create_fmvit('fmvit_b', pretrained=pretrained, **dict(model_args, **kwargs))
