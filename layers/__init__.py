"""Shared operators of backbone-zoo: each with a plain reference implementation and fast ones."""
from .config import (
    GLOBAL_IMPLS, KernelUnavailableError, NotPreferred, OpCase, get_kernel_impl, kernel_impl, resolve_impl,
    set_kernel_impl, usable_impls,
)
from .large_kernel_conv import (
    LargeKernelAttention, dilated_dwconv2d, dilated_dwconv2d_reference, dilated_dwconv2d_subgrid,
)
from .token_prune import (
    AdaptiveThreshold, attention_with_cls_score, attention_with_cls_score_reference, attention_with_cls_score_sdpa,
    gather_tokens, select_tokens_batch_topk, select_tokens_per_image, straight_through_keep,
)
from .linear_attn import (
    apply_rope, linear_attention, linear_attention_linear, linear_attention_reference, rope_2d, softmax_attention,
    softmax_attention_reference, softmax_attention_sdpa,
)
from .conv_norm import ConvNorm, NormLinear, folded_bn, reparameterize
from .ls_conv import LSConv, LargeKernelPerception, ska, ska_reference, ska_shift
from .gpsa import (
    GatedPositionalAttention, gated_positional_attention, gated_positional_attention_reference,
    gated_positional_attention_sdpa, relative_offsets_2d,
)
from .halo_attn import (
    HaloAttention, blocked_attention, blocked_attention_reference, blocked_attention_sdpa, halo_attention,
    halo_attention_core, relative_logits_2d,
)
from .routing_attn import (
    BiLevelRoutingAttention, region_partition, region_reverse, region_route, routed_attention,
    routed_attention_masked, routed_attention_reference, routed_attention_sdpa,
)
from .kan_attn import (
    FourierKArAt, KArAtAttention, fourier_kan_attention, fourier_kan_attention_dense, fourier_kan_attention_reference,
    fourier_kan_attention_vectorized,
)
from .hilo_attn import HiLoAttention, hilo_attention, hilo_attention_reference, hilo_attention_sdpa, hilo_head_split
from .deform_conv import (
    DeformConv2dPack, DeformTokenMerge, deform_conv2d, deform_conv2d_reference, deform_conv2d_torchvision,
)
from . import deform_conv as _deform_conv
from .neighborhood_attn import (
    NeighborhoodAttention2d, na2d, na2d_av, na2d_av_blocked, na2d_av_reference, na2d_blocked, na2d_reference,
    na_rpb_bias, na_window_start,
)
from .dynamic_conv import ContMix, contmix, contmix_blocked, contmix_reference
from . import dynamic_conv as _dynamic_conv
from .reversed_attn import (
    dependency_mask, reversed_attention, reversed_attention_folded, reversed_attention_reference,
)
from .rep_conv import RepConvNorm, merge_branch_kernels, rep_conv2d, rep_conv2d_merged, rep_conv2d_reference
from .multi_rate_attn import MultiRateAttention, pool_tokens
from . import gpsa as _gpsa
from . import halo_attn as _halo_attn
from . import kan_attn as _kan_attn
from . import hilo_attn as _hilo_attn
from . import large_kernel_conv as _large_kernel_conv
from . import ls_conv as _ls_conv
from . import linear_attn as _linear_attn
from . import multi_rate_attn as _multi_rate_attn
from . import rep_conv as _rep_conv
from . import reversed_attn as _reversed_attn
from . import routing_attn as _routing_attn
from . import neighborhood_attn as _neighborhood_attn
from . import token_prune as _token_prune

__all__ = [
    'GLOBAL_IMPLS', 'KernelUnavailableError', 'NotPreferred', 'OpCase', 'get_kernel_impl', 'kernel_impl',
    'resolve_impl', 'set_kernel_impl', 'usable_impls',
    'LargeKernelAttention', 'dilated_dwconv2d', 'dilated_dwconv2d_reference', 'dilated_dwconv2d_subgrid',
    'AdaptiveThreshold', 'attention_with_cls_score', 'attention_with_cls_score_reference',
    'attention_with_cls_score_sdpa', 'gather_tokens', 'select_tokens_batch_topk', 'select_tokens_per_image',
    'straight_through_keep',
    'apply_rope', 'linear_attention', 'linear_attention_linear', 'linear_attention_reference', 'rope_2d',
    'softmax_attention', 'softmax_attention_reference', 'softmax_attention_sdpa',
    'ConvNorm', 'NormLinear', 'folded_bn', 'reparameterize', 'LSConv', 'LargeKernelPerception', 'ska', 'ska_reference',
    'ska_shift',
    'GatedPositionalAttention', 'gated_positional_attention', 'gated_positional_attention_reference',
    'gated_positional_attention_sdpa', 'relative_offsets_2d',
    'HaloAttention', 'blocked_attention', 'blocked_attention_reference', 'blocked_attention_sdpa',
    'halo_attention', 'halo_attention_core', 'relative_logits_2d',
    'BiLevelRoutingAttention', 'region_partition', 'region_reverse', 'region_route', 'routed_attention',
    'routed_attention_masked', 'routed_attention_reference', 'routed_attention_sdpa',
    'FourierKArAt', 'KArAtAttention', 'fourier_kan_attention', 'fourier_kan_attention_dense',
    'fourier_kan_attention_reference', 'fourier_kan_attention_vectorized',
    'DeformConv2dPack', 'DeformTokenMerge', 'deform_conv2d', 'deform_conv2d_reference', 'deform_conv2d_torchvision',
    'HiLoAttention', 'hilo_attention', 'hilo_attention_reference', 'hilo_attention_sdpa', 'hilo_head_split',
    'NeighborhoodAttention2d', 'na2d', 'na2d_av', 'na2d_av_blocked', 'na2d_av_reference', 'na2d_blocked',
    'na2d_reference', 'na_rpb_bias', 'na_window_start',
    'ContMix', 'contmix', 'contmix_blocked', 'contmix_reference',
    'dependency_mask', 'reversed_attention', 'reversed_attention_folded', 'reversed_attention_reference',
    'MultiRateAttention', 'RepConvNorm', 'merge_branch_kernels', 'pool_tokens', 'rep_conv2d', 'rep_conv2d_merged',
    'rep_conv2d_reference',
    'benchmark_cases',
]

# Operator modules contributing `benchmark.py --ops` cases; a new operator file adds itself here.
_OP_MODULES = (_deform_conv, _dynamic_conv, _gpsa, _halo_attn, _hilo_attn, _kan_attn, _large_kernel_conv,
               _linear_attn, _ls_conv, _multi_rate_attn, _neighborhood_attn, _rep_conv, _reversed_attn, _routing_attn,
               _token_prune)


def benchmark_cases(batch_size: int = 8):
    """Every operator's benchmark cases at backbone-stage shapes (see `OpCase`)."""
    return [case for module in _OP_MODULES for case in module.benchmark_cases(batch_size)]
