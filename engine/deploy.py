"""The deployment form of a model: one call that makes an inference copy as fast as this machine allows.

`deploy(model)` returns an eval-mode copy in which
1. every module with `fuse()` / `reparameterize()` / `switch_to_deploy()` has taken its deployment form (timm's
   `reparameterize_model`: re-parameterized branches merged, the families' own Conv-BN folds);
2. every remaining BatchNorm that directly follows a convolution or a linear layer (or directly precedes a
   padding-free 1x1 convolution) is folded into it (`fold_batchnorms`), whatever family the model is from;
3. optionally the weights are channels-last (only where a measurement showed the model's convolutions gain);
4. the forward runs under autocast in the machine's native low-precision dtype (`native_low_precision`): bfloat16 on
   CPUs with AVX512-BF16 or AMX and on GPUs that support it, float16 on older GPUs, and nothing (float32) elsewhere.
   Without those units PyTorch emulates bfloat16 and runs it far slower than float32 (oneDNN is bypassed for
   convolutions), so 'auto' never picks it there.

`keep_freed_memory()` is the other CPU lever: glibc gives every freed block above its mmap threshold (at most 32 MiB)
back to the OS, so at batch 16 and above each large activation is freshly mapped and page-faulted on every forward.
"""
import contextlib
import ctypes
import ctypes.util
import functools
from typing import Optional, Union

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from timm.layers import BatchNormAct2d, ConvNormAct
from timm.utils import reparameterize_model

__all__ = ['native_low_precision', 'resolve_amp_dtype', 'amp_autocast_context', 'fold_batchnorms', 'reparameterize',
           'keep_freed_memory', 'deploy', 'DeployedModel']

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return frozenset(line.split(':', 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_low_precision(device: Union[str, torch.device] = 'cpu') -> Optional[torch.dtype]:
    """The autocast dtype this device computes natively and faster than float32, or None if it has none.

    CPU: bfloat16 with AVX512-BF16 or AMX-BF16 (from /proc/cpuinfo, or PyTorch's own capability report where that
    file is missing); CUDA: bfloat16 where supported, else float16.
    """
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != 'cpu':
        return None
    flags = _cpu_flags()
    if flags:
        return torch.bfloat16 if {'avx512_bf16', 'amx_bf16'} & flags else None
    return torch.bfloat16 if torch.backends.cpu.get_cpu_capability() == 'AMX' else None


def _fold_input_batchnorm(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> Optional[nn.Conv2d]:
    """conv(bn(x)) as one conv, exact only for a padding-free 1x1 convolution with one group."""
    if conv.kernel_size != (1, 1) or conv.padding != (0, 0) or conv.groups != 1 or not bn.track_running_stats:
        return None
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) * torch.rsqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=conv.stride, bias=True,
                      device=conv.weight.device, dtype=conv.weight.dtype).train(conv.training)
    weight = conv.weight.detach()
    with torch.no_grad():
        fused.weight.copy_(weight * scale.detach()[None, :, None, None])
        bias = weight.flatten(1) @ shift.detach()
        fused.bias.copy_(bias if conv.bias is None else bias + conv.bias.detach())
    return fused


def _foldable(bn: nn.Module) -> bool:
    return isinstance(bn, _BATCHNORMS) and bn.track_running_stats and bn.running_mean is not None


def fold_batchnorms(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a Conv2d/Linear, or directly precedes a padding-free 1x1
    Conv2d, inside an `nn.Sequential` or a timm `ConvNormAct`, into that layer (in place). Returns how many folded.

    Only structural adjacency is used (a Sequential's consecutive children, ConvNormAct's conv -> bn), so a BatchNorm
    whose output is also used elsewhere is never folded.
    """
    if model.training:
        raise ValueError('fold_batchnorms needs an eval-mode model (call model.eval() first): '
                         'folding uses the running statistics')
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, ConvNormAct) and isinstance(module.conv, nn.Conv2d) \
                and isinstance(module.bn, BatchNormAct2d) and _foldable(module.bn):
            bn = module.bn
            module.conv = fuse_conv_bn_eval(module.conv, bn)
            module.bn = nn.Sequential(bn.drop, bn.act)
            folded += 1
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first_name, second_name in zip(names, names[1:]):
            first, second = module._modules[first_name], module._modules[second_name]
            fused = None
            if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d) and _foldable(second):
                fused = fuse_conv_bn_eval(first, second)
                module._modules[first_name], module._modules[second_name] = fused, nn.Identity()
            elif isinstance(first, nn.Linear) and isinstance(second, nn.BatchNorm1d) and _foldable(second):
                fused = fuse_linear_bn_eval(first, second)
                module._modules[first_name], module._modules[second_name] = fused, nn.Identity()
            elif isinstance(first, nn.BatchNorm2d) and isinstance(second, nn.Conv2d) and _foldable(first):
                fused = _fold_input_batchnorm(first, second)
                if fused is not None:
                    module._modules[first_name], module._modules[second_name] = nn.Identity(), fused
            folded += fused is not None
    return folded


def reparameterize(model: nn.Module) -> nn.Module:
    """An eval-mode copy in its deployment structure: timm's `reparameterize_model`, then `fold_batchnorms`."""
    deployed = reparameterize_model(model.eval())  # a deep copy
    fold_batchnorms(deployed)
    return deployed


def resolve_amp_dtype(requested: torch.dtype, device: Union[str, torch.device]) -> Optional[torch.dtype]:
    """The autocast dtype to use for `--amp`: `requested` where the device computes it natively, else None (float32)
    with one warning line saying why (emulated bfloat16 on a CPU without AVX512-BF16/AMX is far slower than float32).
    """
    device = torch.device(device)
    native = native_low_precision(device)
    if device.type == 'cuda' or native == requested:
        return requested
    print(f'warning: --amp ignored: this {device.type.upper()} has no native {str(requested).replace("torch.", "")} '
          '(needs AVX512-BF16 or AMX on a CPU); emulated it runs slower than float32, so float32 is used', flush=True)
    return None


def amp_autocast_context(amp: bool, amp_dtype: str, device: Union[str, torch.device]):
    """`--amp`/`--amp-dtype` as train.py and eval.py take them -> (autocast context factory, dtype or None).

    The factory is `torch.autocast` bound to the device and dtype, or `contextlib.nullcontext` where `--amp` is off or
    the device has no native `amp_dtype` (`resolve_amp_dtype` says why, once).
    """
    device = torch.device(device)
    dtype = resolve_amp_dtype(torch.bfloat16 if amp_dtype == 'bfloat16' else torch.float16, device) if amp else None
    if dtype is None:
        return contextlib.nullcontext, None
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype), dtype


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process (no mmap per large block, no trimming). Returns True if set.

    Large activations (above glibc's mmap threshold, 32 MiB at most) are otherwise mapped fresh and page-faulted on
    every forward: VAN-B0 at batch 16 spends over half its time there. The process keeps its peak footprint instead.
    A no-op returning False where the C library is not glibc.
    """
    name = ctypes.util.find_library('c')
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))


class DeployedModel(nn.Module):
    """A deployed model: its forward converts the input's memory format and runs under the chosen autocast."""

    def __init__(self, model: nn.Module, autocast_dtype: Optional[torch.dtype], channels_last: bool,
                 device_type: str):
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.device_type = device_type

    @property
    def pretrained_cfg(self):
        return self.model.pretrained_cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device_type, dtype=self.autocast_dtype) if self.autocast_dtype is not None \
            else contextlib.nullcontext()
        with autocast:
            out = self.model(x)
        return out.float() if self.autocast_dtype is not None and torch.is_tensor(out) else out

    def extra_repr(self) -> str:
        return f'autocast_dtype={self.autocast_dtype}, channels_last={self.channels_last}'


def deploy(model: nn.Module, device: Union[str, torch.device, None] = None,
           dtype: Union[str, torch.dtype, None] = 'auto', channels_last: bool = False) -> DeployedModel:
    """The deployment form of `model` (a copy; the model itself is left as it is), see the module docstring.

    Args:
        model: any model of the zoo (or any timm model).
        device: where it will run (default: where its parameters are).
        dtype: 'auto' (the device's native low precision, or float32 if none), None / torch.float32 (float32), or an
            explicit torch.bfloat16 / torch.float16 (used as given, even where it is emulated).
        channels_last: convert the weights and the input to channels-last.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device('cpu')
    device = torch.device(device)
    if isinstance(dtype, str):
        if dtype != 'auto':
            raise ValueError(f"dtype must be 'auto', None or a torch dtype, not {dtype!r}")
        dtype = native_low_precision(device)
    if dtype == torch.float32:
        dtype = None
    deployed = reparameterize(model)
    if channels_last:
        deployed = deployed.to(memory_format=torch.channels_last)
    return DeployedModel(deployed.to(device).eval(), dtype, channels_last, device.type).eval()
