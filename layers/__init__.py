"""Shared operators of backbone-zoo: each with a plain reference implementation and fast ones.

The package exports the dispatcher API (layers/config.py), each operator's dispatching function (`impl=` picks the
implementation), the modules built on them and the few helpers the models share. The implementations themselves
(`*_reference`, `*_sdpa`, ...) are imported from their operator module, e.g.
`from layers.gpsa import gated_positional_attention_reference`.
"""
from .config import (
    GLOBAL_IMPLS, KernelUnavailableError, NotPreferred, bind_layer_config, export_friendly, get_kernel_impl,
    is_capturing_graph, kernel_impl, resolve_impl, set_kernel_impl, set_module_kernel_impl, traceable_only, untraceable,
    usable_impls,
)
from .attention import softmax_attention
from .conv_norm import ConvNorm, NormLinear, folded_bn
from .deform_conv import DeformConv2dPack, DeformTokenMerge, deform_conv2d
from .dynamic_conv import ContMix, contmix
from .gpsa import GatedPositionalAttention, gated_positional_attention
from .halo_attn import HaloAttention, blocked_attention, halo_attention, halo_attention_core
from .hilo_attn import HiLoAttention, hilo_attention
from .kan_attn import FourierKArAt, KArAtAttention, fourier_kan_attention
from .large_kernel_conv import LargeKernelAttention, dilated_dwconv2d
from .linear_attn import linear_attention, rope_2d
from .ls_conv import LSConv, LargeKernelPerception, ska
from .multi_rate_attn import MultiRateAttention
from .neighborhood_attn import NeighborhoodAttention2d, na2d, na2d_av
from .rep_conv import RepConvNorm, rep_conv2d
from .reversed_attn import dependency_mask, reversed_attention
from .routing_attn import BiLevelRoutingAttention, routed_attention
from .token_prune import (
    AdaptiveThreshold, attention_with_cls_score, gather_tokens, select_tokens_batch_topk, select_tokens_per_image,
)

__all__ = [
    # dispatcher API
    'GLOBAL_IMPLS', 'KernelUnavailableError', 'NotPreferred', 'bind_layer_config', 'export_friendly', 'fvcore_handles',
    'get_kernel_impl', 'is_capturing_graph', 'kernel_impl', 'resolve_impl', 'set_kernel_impl', 'set_module_kernel_impl',
    'traceable_only', 'untraceable', 'usable_impls',
    # operators
    'attention_with_cls_score', 'blocked_attention', 'contmix', 'deform_conv2d', 'dilated_dwconv2d',
    'fourier_kan_attention', 'gated_positional_attention', 'halo_attention', 'halo_attention_core', 'hilo_attention',
    'linear_attention', 'na2d', 'na2d_av', 'rep_conv2d', 'reversed_attention', 'routed_attention', 'ska',
    'softmax_attention',
    # modules
    'AdaptiveThreshold', 'BiLevelRoutingAttention', 'ContMix', 'ConvNorm', 'DeformConv2dPack', 'DeformTokenMerge',
    'FourierKArAt', 'GatedPositionalAttention', 'HaloAttention', 'HiLoAttention', 'KArAtAttention',
    'LargeKernelAttention', 'LargeKernelPerception', 'LSConv', 'MultiRateAttention', 'NeighborhoodAttention2d',
    'NormLinear', 'RepConvNorm',
    # helpers the models share
    'dependency_mask', 'folded_bn', 'gather_tokens', 'rope_2d', 'select_tokens_batch_topk',
    'select_tokens_per_image',
]


def fvcore_handles():
    """fvcore's `{op_name: handle}` for SDPA and our ops: `FlopCountAnalysis(model, x).set_op_handle(**handles)`
    then counts what benchmark.py counts (see layers.flops; imported on first use, fvcore is heavy)."""
    from .flops import fvcore_handles as _handles
    return _handles()
