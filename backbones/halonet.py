"""HaloNet: blocked local self-attention with halos.

Paper: A. Vaswani, P. Ramachandran, A. Srinivas, N. Parmar, B. Hechtman, J. Shlens, "Scaling Local Self-Attention for
Parameter Efficient Visual Backbones", CVPR 2021, https://arxiv.org/abs/2103.12731

    @inproceedings{vaswani2021scaling,
      title={Scaling Local Self-Attention for Parameter Efficient Visual Backbones},
      author={Vaswani, Ashish and Ramachandran, Prajit and Srinivas, Aravind and Parmar, Niki and Hechtman, Blake
              and Shlens, Jonathon},
      booktitle={CVPR}, year={2021}
    }

Official code: none, and no official weights. The reference implementation is timm's (`timm/layers/halo_attn.py`,
`timm/models/byobnet.py`, the configs in `timm/models/byoanet.py`, timm 1.0.31, Apache-2.0), whose ResNet-style
hybrids carry the only trained HaloNet weights. The networks here are timm's `ByobNet` (the state-dict layout is
timm's, so timm's checkpoints load unchanged) with our `layers.HaloAttention` as the self-attention layer. All names
carry the `zoo_` prefix so that importing `backbones` never replaces timm's own registrations.

Structure of the paper's H0-H7 (all-attention HaloNets): a 7x7/s2 conv stem (64) + 3x3/s2 max-pool, four stages
of [3, 3, l3, 3] self-attention bottleneck blocks (1x1 conv -> halo attention (stride 2 in the first block of
stages 2-4) -> BN-act -> 1x1 conv, residual), an optional 1x1 conv to df features, average pool, classifier.
Stage i has base width w_i = 64 * 2^i; the paper's columns are the block size b, halo h, the bottleneck output
multiplier rb (block output channels rb * w_i) and the value multiplier rv. Queries and keys are w_i wide (heads of
w_i / 8 channels), values rv * w_i; the post-attention BatchNorm and the closing 1x1 conv work on rv * w_i channels
(the reading that reproduces the paper's parameter counts; the derivation is in docs/halonet.md).

Measurements, the speed investigation and their commands: docs/halonet.md.

Deviations from timm (none changes a result timm computes):
- Feature maps not divisible by the halo block size (timm raises) are zero-padded to whole blocks inside the
  attention, so any input size runs, including H7's published 600 x 600 (its 75 x 75 stage-3 map is not divisible
  by b = 10).
- halo2botnet50ts / lamhalobotnet50ts use timm's bottleneck (BoT) and lambda layers as they are; only their halo
  layers are ours. The BoT layer needs the fixed 256 x 256 input, as in timm.
- H0-H7 (not in timm beyond H1) follow timm's `halonet_h1` choices: 8 heads in every stage, ReLU, BN eps 1e-5,
  unmasked zero-padded halos, strided queries for stride-2 blocks, crop_pct 0.95, bicubic; each network's input
  resolution is the paper's s.
"""
from functools import partial
from typing import Optional, Tuple

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, make_divisible, to_2tuple
from timm.models import generate_default_cfgs, register_model
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg, LayerFn, create_shortcut, interleave_blocks

from layers import HaloAttention, set_module_kernel_impl
from ._helpers import (
    build_model_with_cfg, channels_last_on_cpu, check_input_size, check_state_dict_keys, unwrap_state_dict,
)

__all__ = ['HaloNet', 'ValueExpandedSelfAttnBlock']


class ValueExpandedSelfAttnBlock(nn.Module):
    """Bottleneck self-attention block whose attention values are `value_ratio` times wider than queries/keys.

    1x1 conv (in -> mid) -> halo attention (q, k: mid; v: value_ratio * mid) -> BN-act -> 1x1 conv -> + shortcut ->
    act. With value_ratio 1 this is timm's `SelfAttnBlock` (same module names, so timm checkpoints load).
    Takes timm's ByobNet block arguments.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 3,
            stride: int = 1,
            dilation: Tuple[int, int] = (1, 1),
            bottle_ratio: float = 1.,
            group_size: Optional[int] = None,
            downsample: str = 'avg',
            value_ratio: float = 1.,
            layers: LayerFn = None,
            drop_block=None,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
            **kwargs,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        mid_chs = make_divisible(out_chs * bottle_ratio)
        value_chs = make_divisible(mid_chs * value_ratio)
        self.shortcut = create_shortcut(downsample, in_chs, out_chs, stride=stride, dilation=dilation,
                                        apply_act=False, layers=layers, **dd)
        self.conv1_1x1 = layers.conv_norm_act(in_chs, mid_chs, 1, **dd)
        self.conv2_kxk = nn.Identity()
        attn_kwargs = {} if value_ratio == 1 else dict(dim_out=value_chs, qk_ratio=mid_chs / value_chs)
        self.self_attn = layers.self_attn(mid_chs, stride=stride, **attn_kwargs, **dd)
        self.post_attn = layers.norm_act(value_chs, **dd)
        self.conv3_1x1 = layers.conv_norm_act(value_chs, out_chs, 1, apply_act=False, **dd)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()
        self.act = layers.act(inplace=True)

    def init_weights(self, zero_init_last: bool = False):
        if zero_init_last and self.shortcut is not None and getattr(self.conv3_1x1.bn, 'weight', None) is not None:
            nn.init.zeros_(self.conv3_1x1.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv3_1x1(self.post_attn(self.self_attn(self.conv1_1x1(x))))
        x = self.drop_path(x)
        if self.shortcut is not None:
            x = x + self.shortcut(shortcut)
        return self.act(x)


class HaloNet(ByobNet):
    """timm's ByobNet (bring-your-own-blocks network) with our halo attention, input checks and kernel selection.

    Args:
        cfg: the architecture (a timm `ByoModelCfg`).
        kernel_impl: implementation of the halo attention core (None: process-wide setting, see layers.config).
        img_size: input size, required by the fixed-size variants (BoT layers); other arguments as ByobNet's.
    """

    def __init__(self, cfg: ByoModelCfg, kernel_impl: Optional[str] = None, img_size=None, **kwargs):
        super().__init__(cfg, img_size=img_size, **kwargs)
        self.fixed_input_size = tuple(to_2tuple(img_size)) if cfg.fixed_input_size else None
        set_module_kernel_impl(self, kernel_impl)

    def _check_input(self, x: torch.Tensor) -> None:
        check_input_size(x, self.in_chans, img_size=self.fixed_input_size, model_name=type(self).__name__)

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        self._check_input(x)
        return super().forward_intermediates(x, *args, **kwargs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check_input(x)
            return super().forward_features(channels_last_on_cpu(x))
        # ByobNet's forward_features without checkpointing (TorchScript compiles no super() call)
        return self.final_conv(self.stages(self.stem(x)))


# The paper's table: block b, halo h, value multiplier rv, output multiplier rb, stage-3 depth l3, final conv df,
# resolution s.
_PAPER_HALONETS = {
    'h0': dict(b=8, h=3, rv=1.0, rb=0.5, l3=7, df=0, s=256),
    'h1': dict(b=8, h=3, rv=1.0, rb=1.0, l3=10, df=0, s=256),
    'h2': dict(b=8, h=3, rv=1.0, rb=1.25, l3=11, df=0, s=256),
    'h3': dict(b=10, h=3, rv=1.0, rb=1.5, l3=12, df=1024, s=320),
    'h4': dict(b=12, h=2, rv=1.0, rb=3.0, l3=12, df=1280, s=384),
    'h5': dict(b=14, h=2, rv=2.5, rb=2.0, l3=23, df=1536, s=448),
    'h6': dict(b=8, h=4, rv=3.0, rb=2.75, l3=24, df=1536, s=512),
    'h7': dict(b=10, h=3, rv=4.0, rb=3.5, l3=26, df=2048, s=600),
}


def _paper_cfg(b: int, h: int, rv: float, rb: float, l3: int, df: int, s: int) -> ByoModelCfg:
    block = partial(ValueExpandedSelfAttnBlock, value_ratio=rv)
    return ByoModelCfg(
        blocks=tuple(ByoBlockCfg(type=block, d=d, c=int(64 * 2 ** i * rb), s=1 if i == 0 else 2, gs=0, br=1 / rb)
                     for i, d in enumerate((3, 3, l3, 3))),
        stem_chs=64,
        stem_type='7x7',
        stem_pool='maxpool',
        num_features=df,
        self_attn_layer=HaloAttention,
        self_attn_kwargs=dict(block_size=b, halo_size=h),
    )


model_cfgs = {f'halonet_{name}': _paper_cfg(**cfg) for name, cfg in _PAPER_HALONETS.items()}
# timm's trained HaloNet-style hybrids (timm/models/byoanet.py), with our halo layer.
model_cfgs.update(
    halonet26t=ByoModelCfg(
        blocks=(
            ByoBlockCfg(type='bottle', d=2, c=256, s=1, gs=0, br=0.25),
            ByoBlockCfg(type='bottle', d=2, c=512, s=2, gs=0, br=0.25),
            interleave_blocks(types=('bottle', 'self_attn'), d=2, c=1024, s=2, gs=0, br=0.25),
            ByoBlockCfg(type='self_attn', d=2, c=2048, s=2, gs=0, br=0.25),
        ),
        stem_chs=64, stem_type='tiered', stem_pool='maxpool',
        self_attn_layer=HaloAttention, self_attn_kwargs=dict(block_size=8, halo_size=2),
    ),
    sehalonet33ts=ByoModelCfg(
        blocks=(
            ByoBlockCfg(type='bottle', d=2, c=256, s=1, gs=0, br=0.25),
            interleave_blocks(types=('bottle', 'self_attn'), every=[2], d=3, c=512, s=2, gs=0, br=0.25),
            interleave_blocks(types=('bottle', 'self_attn'), every=[2], d=3, c=1024, s=2, gs=0, br=0.25),
            ByoBlockCfg('self_attn', d=2, c=1536, s=2, gs=0, br=0.333),
        ),
        stem_chs=64, stem_type='tiered', stem_pool='', act_layer='silu', num_features=1280, attn_layer='se',
        self_attn_layer=HaloAttention, self_attn_kwargs=dict(block_size=8, halo_size=3),
    ),
    halonet50ts=ByoModelCfg(
        blocks=(
            ByoBlockCfg(type='bottle', d=3, c=256, s=1, gs=0, br=0.25),
            interleave_blocks(
                types=('bottle', 'self_attn'), every=4, d=4, c=512, s=2, gs=0, br=0.25,
                self_attn_layer=HaloAttention, self_attn_kwargs=dict(block_size=8, halo_size=3, num_heads=4)),
            interleave_blocks(types=('bottle', 'self_attn'), d=6, c=1024, s=2, gs=0, br=0.25),
            interleave_blocks(types=('bottle', 'self_attn'), d=3, c=2048, s=2, gs=0, br=0.25),
        ),
        stem_chs=64, stem_type='tiered', stem_pool='maxpool', act_layer='silu',
        self_attn_layer=HaloAttention, self_attn_kwargs=dict(block_size=8, halo_size=3),
    ),
    eca_halonext26ts=ByoModelCfg(
        blocks=(
            ByoBlockCfg(type='bottle', d=2, c=256, s=1, gs=16, br=0.25),
            ByoBlockCfg(type='bottle', d=2, c=512, s=2, gs=16, br=0.25),
            interleave_blocks(types=('bottle', 'self_attn'), d=2, c=1024, s=2, gs=16, br=0.25),
            ByoBlockCfg(type='self_attn', d=2, c=2048, s=2, gs=16, br=0.25),
        ),
        stem_chs=64, stem_type='tiered', stem_pool='maxpool', act_layer='silu', attn_layer='eca',
        self_attn_layer=HaloAttention, self_attn_kwargs=dict(block_size=8, halo_size=2, dim_head=16),
    ),
    haloregnetz_b=ByoModelCfg(
        blocks=(
            ByoBlockCfg(type='bottle', d=2, c=48, s=2, gs=16, br=3),
            ByoBlockCfg(type='bottle', d=6, c=96, s=2, gs=16, br=3),
            interleave_blocks(types=('bottle', 'self_attn'), every=3, d=12, c=192, s=2, gs=16, br=3),
            ByoBlockCfg('self_attn', d=2, c=288, s=2, gs=16, br=3),
        ),
        stem_chs=32, stem_pool='', downsample='', num_features=1536, act_layer='silu',
        attn_layer='se', attn_kwargs=dict(rd_ratio=0.25), block_kwargs=dict(bottle_in=True, linear_out=True),
        self_attn_layer=HaloAttention, self_attn_kwargs=dict(block_size=7, halo_size=2, qk_ratio=0.33),
    ),
    lamhalobotnet50ts=ByoModelCfg(
        blocks=(
            ByoBlockCfg(type='bottle', d=3, c=256, s=1, gs=0, br=0.25),
            interleave_blocks(
                types=('bottle', 'self_attn'), d=4, c=512, s=2, gs=0, br=0.25,
                self_attn_layer='lambda', self_attn_kwargs=dict(r=13)),
            interleave_blocks(
                types=('bottle', 'self_attn'), d=6, c=1024, s=2, gs=0, br=0.25,
                self_attn_layer=HaloAttention, self_attn_kwargs=dict(halo_size=3)),
            interleave_blocks(
                types=('bottle', 'self_attn'), d=3, c=2048, s=2, gs=0, br=0.25,
                self_attn_layer='bottleneck', self_attn_kwargs=dict()),
        ),
        stem_chs=64, stem_type='tiered', stem_pool='', act_layer='silu',
        fixed_input_size=True,  # the BoT layer's position embedding is sized for one input
    ),
    halo2botnet50ts=ByoModelCfg(
        blocks=(
            ByoBlockCfg(type='bottle', d=3, c=256, s=1, gs=0, br=0.25),
            interleave_blocks(
                types=('bottle', 'self_attn'), d=4, c=512, s=2, gs=0, br=0.25,
                self_attn_layer=HaloAttention, self_attn_kwargs=dict(halo_size=3)),
            interleave_blocks(
                types=('bottle', 'self_attn'), d=6, c=1024, s=2, gs=0, br=0.25,
                self_attn_layer=HaloAttention, self_attn_kwargs=dict(halo_size=3)),
            interleave_blocks(
                types=('bottle', 'self_attn'), d=3, c=2048, s=2, gs=0, br=0.25,
                self_attn_layer='bottleneck', self_attn_kwargs=dict()),
        ),
        stem_chs=64, stem_type='tiered', stem_pool='', act_layer='silu',
        fixed_input_size=True,  # the BoT layer's position embedding is sized for one input
    ),
)


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """timm's HaloNet checkpoints (bare state dicts, or under 'state_dict'/'model') load as they are; the filter
    unwraps them and names every missing or unexpected key."""
    state_dict = unwrap_state_dict(state_dict)
    check_state_dict_keys(state_dict, model, source='HaloNet checkpoint')
    return state_dict


def _create_halonet(variant: str, cfg_variant: Optional[str] = None, pretrained: bool = False,
                    **kwargs) -> HaloNet:
    return build_model_with_cfg(
        HaloNet, variant, pretrained,
        model_cfg=model_cfgs[cfg_variant or variant.replace('zoo_', '')],
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 256, 256), 'pool_size': (8, 8),
        'crop_pct': 0.95, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1.conv', 'classifier': 'head.fc', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2103.12731',
        'paper_name': 'Scaling Local Self-Attention for Parameter Efficient Visual Backbones',
        'origin_url': 'https://github.com/huggingface/pytorch-image-models', **kwargs,
    }


def _paper_model_cfg(name: str) -> dict:
    s = _PAPER_HALONETS[name]['s']
    return _cfg(input_size=(3, s, s), pool_size=(-(-s // 32),) * 2,
                origin_url='https://arxiv.org/abs/2103.12731',
                notes=('HaloNet-' + name.upper() + ' as built from the paper\'s table; no weights exist.',))


_TIMM_WEIGHTS = 'https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-attn-weights/'
default_cfgs = generate_default_cfgs({
    **{f'zoo_halonet_{name}.untrained': _paper_model_cfg(name) for name in _PAPER_HALONETS},
    'zoo_halonet26t.a1h_in1k': _cfg(url=_TIMM_WEIGHTS + 'halonet26t_a1h_256-3083328c.pth',
                                    hf_hub_id='timm/halonet26t.a1h_in1k'),
    'zoo_sehalonet33ts.ra2_in1k': _cfg(url=_TIMM_WEIGHTS + 'sehalonet33ts_256-87e053f9.pth', crop_pct=0.94,
                                       hf_hub_id='timm/sehalonet33ts.ra2_in1k'),
    'zoo_halonet50ts.a1h_in1k': _cfg(url=_TIMM_WEIGHTS + 'halonet50ts_a1h2_256-f3a3daee.pth', crop_pct=0.94,
                                     hf_hub_id='timm/halonet50ts.a1h_in1k'),
    'zoo_eca_halonext26ts.c1_in1k': _cfg(url=_TIMM_WEIGHTS + 'eca_halonext26ts_c_256-06906299.pth', crop_pct=0.94,
                                         hf_hub_id='timm/eca_halonext26ts.c1_in1k'),
    'zoo_haloregnetz_b.ra3_in1k': _cfg(
        url=_TIMM_WEIGHTS + 'haloregnetz_c_raa_256-c8ad7616.pth', hf_hub_id='timm/haloregnetz_b.ra3_in1k',
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), first_conv='stem.conv', input_size=(3, 224, 224),
        pool_size=(7, 7), crop_pct=0.94),
    'zoo_lamhalobotnet50ts_256.a1h_in1k': _cfg(
        url=_TIMM_WEIGHTS + 'lamhalobotnet50ts_a1h2_256-fe3d9445.pth', hf_hub_id='timm/lamhalobotnet50ts_256.a1h_in1k',
        fixed_input_size=True),
    'zoo_halo2botnet50ts_256.a1h_in1k': _cfg(
        url=_TIMM_WEIGHTS + 'halo2botnet50ts_a1h2_256-fd9c11a3.pth', hf_hub_id='timm/halo2botnet50ts_256.a1h_in1k',
        fixed_input_size=True),
})


@register_model
def zoo_halonet_h0(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_halonet_h0', pretrained=pretrained, **kwargs)


@register_model
def zoo_halonet_h1(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_halonet_h1', pretrained=pretrained, **kwargs)


@register_model
def zoo_halonet_h2(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_halonet_h2', pretrained=pretrained, **kwargs)


@register_model
def zoo_halonet_h3(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_halonet_h3', pretrained=pretrained, **kwargs)


@register_model
def zoo_halonet_h4(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_halonet_h4', pretrained=pretrained, **kwargs)


@register_model
def zoo_halonet_h5(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_halonet_h5', pretrained=pretrained, **kwargs)


@register_model
def zoo_halonet_h6(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_halonet_h6', pretrained=pretrained, **kwargs)


@register_model
def zoo_halonet_h7(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_halonet_h7', pretrained=pretrained, **kwargs)


@register_model
def zoo_halonet26t(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_halonet26t', pretrained=pretrained, **kwargs)


@register_model
def zoo_sehalonet33ts(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_sehalonet33ts', pretrained=pretrained, **kwargs)


@register_model
def zoo_halonet50ts(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_halonet50ts', pretrained=pretrained, **kwargs)


@register_model
def zoo_eca_halonext26ts(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_eca_halonext26ts', pretrained=pretrained, **kwargs)


@register_model
def zoo_haloregnetz_b(pretrained: bool = False, **kwargs) -> HaloNet:
    return _create_halonet('zoo_haloregnetz_b', pretrained=pretrained, **kwargs)


@register_model
def zoo_lamhalobotnet50ts_256(pretrained: bool = False, **kwargs) -> HaloNet:
    kwargs.setdefault('img_size', 256)
    return _create_halonet('zoo_lamhalobotnet50ts_256', 'lamhalobotnet50ts', pretrained=pretrained, **kwargs)


@register_model
def zoo_halo2botnet50ts_256(pretrained: bool = False, **kwargs) -> HaloNet:
    kwargs.setdefault('img_size', 256)
    return _create_halonet('zoo_halo2botnet50ts_256', 'halo2botnet50ts', pretrained=pretrained, **kwargs)
