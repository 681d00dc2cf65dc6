"""Helpers shared by the family files: model building, checkpoint key remapping and checks, input checks."""
import copy
import functools
import importlib.util
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.models import resolve_pretrained_cfg
from timm.models import build_model_with_cfg as _timm_build_model_with_cfg

from layers import bind_layer_config, is_capturing_graph

__all__ = [
    'CheckpointMismatchError', 'WeightsDownloadError', 'build_model_with_cfg', 'check_input_size',
    'check_state_dict_keys', 'feature_take_indices', 'hf_hub_weights', 'load_url_checkpoint', 'pretrained_file_name',
    'prune_stages', 'remap_state_dict', 'stage_intermediates', 'token_maps', 'unwrap_state_dict',
]

# Replaces the scheme and host of every pretrained URL (paths kept): a mirror of the official files.
WEIGHTS_MIRROR_ENV = 'BACKBONES_WEIGHTS_MIRROR'
_DOWNLOAD_TIMEOUT_S = 60
# timm prefers the HF hub for a cfg with hf_hub_id whenever huggingface_hub is installed
_HAS_HF_HUB = importlib.util.find_spec('huggingface_hub') is not None

# Model classes that compile with torch.jit.script (timm's twins of these script too). Their forwards take a
# scriptable branch where the others call the kernel dispatcher, which TorchScript cannot compile.
SCRIPTABLE_FAMILIES = ('ConViT', 'HaloNet')


def build_model_with_cfg(model_cls, variant: str, pretrained: bool, **kwargs) -> nn.Module:
    """timm's `build_model_with_cfg`, then the model keeps the `exportable`/`scriptable` layer config given to
    `timm.create_model` for its lifetime (`layers.bind_layer_config`; timm applies it only while building), and
    `torch.jit.script` either compiles it (families in `SCRIPTABLE_FAMILIES`) or raises one clear error."""
    checkpoint = _url_checkpoint(variant, kwargs) if pretrained else None
    if checkpoint is not None:
        # timm then loads it through the family's filter exactly as it loads a URL's checkpoint
        kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, state_dict=checkpoint)
    model = _timm_build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    if checkpoint is not None:
        model.pretrained_cfg.pop('state_dict', None)
    hooks = bind_layer_config(model)
    # torch.jit.script calls `__prepare_scriptable__` on the module before compiling it
    model.__prepare_scriptable__ = functools.partial(_prepare_scriptable, model, hooks)
    return model


class WeightsDownloadError(RuntimeError):
    """Pretrained weights could not be downloaded intact; nothing was cached."""


def pretrained_file_name(url: Union[str, Tuple[str, str]]) -> str:
    """The cache file name of a pretrained cfg's `url`: the given name of a `(url, file_name)` pair (for URLs whose
    last path segment is shared, such as OneDrive's `.../root/content`), else the URL's last path segment."""
    if isinstance(url, (tuple, list)):
        return url[1]
    return os.path.basename(urllib.parse.urlparse(url).path)


def hf_hub_weights(url: str) -> Dict[str, str]:
    """`hf_hub_id` and `hf_hub_filename` of official weights published on the Hugging Face hub, from their
    `https://huggingface.co/<org>/<repo>/resolve/main/<file>` URL (timm prefers the hub when it can reach it)."""
    match = re.fullmatch(r'https://huggingface\.co/([^/]+/[^/]+)/resolve/main/(.+)', url)
    if match is None:
        raise ValueError(f'{url} is not a Hugging Face hub file URL (.../<org>/<repo>/resolve/main/<file>)')
    return dict(hf_hub_id=match.group(1), hf_hub_filename=match.group(2))


def _url_checkpoint(variant: str, kwargs: Dict[str, Any]) -> Optional[Dict]:
    """The checkpoint of a pretrained cfg that timm would download from its `url`, loaded by us (own cache file per
    tag, hash and length checks); None when timm loads from elsewhere (file, state dict, HF hub, local dir)."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    if cfg.source or cfg.state_dict or cfg.file or not cfg.url or (cfg.hf_hub_id and _HAS_HF_HUB):
        return None
    return load_url_checkpoint(cfg.url)


def load_url_checkpoint(url: Union[str, Tuple[str, str]], progress: bool = False) -> Dict:
    """Load a checkpoint from `url` (or a `(url, file_name)` pair) through torch.hub's cache directory.

    The file is cached as `pretrained_file_name(url)`, and only once it is complete: its length equals the
    server's Content-Length, its sha256 starts with the hash in the file name where the name has one (torch.hub's
    `name-<sha256 prefix>.ext`), and it loads. Otherwise `WeightsDownloadError` names the problem and nothing is
    cached. `$BACKBONES_WEIGHTS_MIRROR` (e.g. `http://mirror.local:8000`) replaces the URL's scheme and host.
    """
    file_name = pretrained_file_name(url)
    url = url[0] if isinstance(url, (tuple, list)) else url
    mirror = os.environ.get(WEIGHTS_MIRROR_ENV)
    if mirror:
        parts = urllib.parse.urlparse(url)
        url = mirror.rstrip('/') + urllib.parse.urlunparse(parts._replace(scheme='', netloc=''))
    cache_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
    path = os.path.join(cache_dir, file_name)
    if not os.path.isfile(path):
        os.makedirs(cache_dir, exist_ok=True)
        _download(url, path, progress)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        os.remove(path)
        raise WeightsDownloadError(f'Cached weights {path} (from {url}) do not load ({type(e).__name__}: {e}); '
                                   f'the file was removed, loading again downloads it anew') from e


def _download(url: str, path: str, progress: bool) -> None:
    partial = f'{path}.{uuid.uuid4().hex}.partial'
    match = torch.hub.HASH_REGEX.search(os.path.basename(path))
    hash_prefix = match.group(1) if match else None
    sha256, received = hashlib.sha256(), 0
    try:
        request = urllib.request.Request(url, headers={'User-Agent': 'backbone-zoo'})
        with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(partial, 'wb') as f:
            expected = response.headers.get('Content-Length')
            while chunk := response.read(1 << 20):
                f.write(chunk)
                sha256.update(chunk)
                received += len(chunk)
        if expected is not None and received != int(expected):
            raise WeightsDownloadError(f'Download of {url} was truncated: received {received} of {expected} bytes; '
                                       f'nothing was cached, try again')
        if hash_prefix and not sha256.hexdigest().startswith(hash_prefix):
            raise WeightsDownloadError(f'Download of {url} has sha256 {sha256.hexdigest()[:16]}..., not the published '
                                       f'{hash_prefix} of {os.path.basename(path)}; nothing was cached')
        # torch.load checks the file before it enters the cache (a server may send no Content-Length)
        torch.load(partial, map_location='cpu', weights_only=True)
        os.replace(partial, path)
    except WeightsDownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise WeightsDownloadError(f'Cannot download {url}: {e}; nothing was cached') from e
    except Exception as e:
        raise WeightsDownloadError(f'Download of {url} is not a loadable checkpoint ({type(e).__name__}: {e}); '
                                   f'nothing was cached, try again') from e
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _prepare_scriptable(model: nn.Module, hooks) -> nn.Module:
    name = type(model).__name__
    if name not in SCRIPTABLE_FAMILIES:
        raise RuntimeError(
            f'{name} does not support TorchScript (torch.jit.script): its forward uses Python features that '
            f'TorchScript cannot compile (the kernel dispatcher picks operator implementations at call time); '
            f'export it with torch.export.export(model, (x,)) or torch.onnx.export(model, (x,), dynamo=True) instead')
    # TorchScript compiles the module's hooks and cannot compile these Python ones (the scripted forward fixes its
    # kernels itself): it compiles a shallow copy without them, and the eager model keeps them
    scripted = copy.copy(model)
    ids = {hook.id for hook in hooks}
    for table in ('_forward_pre_hooks', '_forward_pre_hooks_with_kwargs', '_forward_hooks',
                  '_forward_hooks_with_kwargs', '_forward_hooks_always_called'):
        setattr(scripted, table, OrderedDict((k, v) for k, v in getattr(model, table).items() if k not in ids))
    del scripted.__prepare_scriptable__
    return scripted

Replacement = Union[str, Callable[[re.Match], str]]


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys do not match the model's, after conversion to our layout."""


def unwrap_state_dict(checkpoint: Dict, ema: str = 'skip') -> Dict[str, torch.Tensor]:
    """Return the state dict inside a checkpoint file's wrapper, without DataParallel's 'module.' prefix.

    Args:
        checkpoint: a bare state dict, or a dict wrapping one under 'model' or 'state_dict' (official releases,
            train.py's files) and possibly 'state_dict_ema' (train.py with --model-ema, some official releases).
        ema: 'skip' ignores 'state_dict_ema'; 'prefer' takes it when present; 'require' takes it or raises.
    """
    if ema not in ('skip', 'prefer', 'require'):
        raise ValueError(f"ema must be 'skip', 'prefer' or 'require', got {ema!r}")
    wrappers = ('model', 'state_dict') if ema == 'skip' else ('state_dict_ema',) + (
        ('model', 'state_dict') if ema == 'prefer' else ())
    for wrapper in wrappers:
        if isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    else:
        if ema == 'require':
            raise ValueError('the checkpoint holds no EMA weights (no state_dict_ema)')
    prefix = 'module.'
    if any(isinstance(k, str) and k.startswith(prefix) for k in checkpoint):
        checkpoint = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in checkpoint.items()}
    return checkpoint


def feature_take_indices(num_levels: int, indices: Optional[Union[int, Sequence[int]]] = None) -> Tuple[List[int], int]:
    """Resolve `forward_intermediates` indices: None (every level), n (the last n) or level indices (negatives count
    from the end). Returns (sorted-as-given level indices, the largest). timm's equivalent is not public API."""
    if indices is None:
        indices = num_levels
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f'indices={indices} asks for the last {indices} of {num_levels} feature levels')
        take = list(range(num_levels - indices, num_levels))
    else:
        take = []
        for i in indices:
            level = num_levels + i if i < 0 else i
            if not 0 <= level < num_levels:
                raise ValueError(f'feature index {i} is out of range for {num_levels} feature levels')
            take.append(level)
        if not take:
            raise ValueError('indices selects no feature level')
    return take, max(take)


def remap_state_dict(
        state_dict: Dict[str, torch.Tensor],
        rules: Sequence[Tuple[str, Replacement]],
        drop: Iterable[str] = (),
) -> Dict[str, torch.Tensor]:
    """Rename every key by applying `rules` (regex, replacement) in order; drop keys matching `drop`."""
    drop_patterns = [re.compile(p) for p in drop]
    compiled = [(re.compile(p), r) for p, r in rules]
    out = {}
    for key, value in state_dict.items():
        if any(p.search(key) for p in drop_patterns):
            continue
        for pattern, replacement in compiled:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


def check_state_dict_keys(state_dict: Dict[str, torch.Tensor], model: nn.Module, source: str = 'checkpoint') -> None:
    """Raise `CheckpointMismatchError` naming every missing and unexpected key.

    Shapes are left to timm's loader, which adapts the classifier and first conv to num_classes/in_chans.
    """
    expected = set(model.state_dict().keys())
    given = set(state_dict.keys())
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        def _list(keys):
            shown = ', '.join(keys[:20])
            return shown + (f', ... ({len(keys) - 20} more)' if len(keys) > 20 else '')
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing key(s): {_list(missing)}')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected key(s): {_list(unexpected)}')
        raise CheckpointMismatchError(
            f'{source} does not match {type(model).__name__} after conversion to this layout: ' + '; '.join(parts)
            + '. Is it a checkpoint of a different variant or family?')


def check_input_size(x: torch.Tensor, in_chans: int, img_size=None, model_name: str = 'model',
                     min_size=None) -> None:
    """Raise a ValueError naming the expected and given input shape.

    Args:
        x: input batch, (B, C, H, W).
        in_chans: channels the model was built for.
        img_size: (H, W) for fixed-size models, None for models that take any size.
        min_size: (H, W), the smallest input the model takes, or None.
    """
    if x.ndim != 4:
        raise ValueError(f'{model_name} expects a batch of images (B, C, H, W), got a tensor of shape {tuple(x.shape)}')
    if x.shape[1] != in_chans:
        raise ValueError(f'{model_name} was built for {in_chans} input channels, got {x.shape[1]} (input {tuple(x.shape)})')
    if img_size is not None and tuple(x.shape[-2:]) != tuple(img_size):
        raise ValueError(
            f'{model_name} has a fixed input size {tuple(img_size)}, got {tuple(x.shape[-2:])}; '
            f'resize the input or build the model with img_size={tuple(x.shape[-2:])}')
    if min_size is not None and (x.shape[-2] < min_size[0] or x.shape[-1] < min_size[1]):
        raise ValueError(f'{model_name} needs inputs of at least {min_size[0]}x{min_size[1]}, '
                         f'got {x.shape[-2]}x{x.shape[-1]}; resize the input')


def channels_last_on_cpu(x: torch.Tensor) -> torch.Tensor:
    """`x` in channels-last memory when it is a CPU image batch, else `x` itself.

    Convolution-heavy families call this once on the input of `forward_features`: oneDNN's CPU convolutions run
    faster on NHWC memory (every later map inherits the layout), while the values are the same. Skipped while a graph
    is captured (memory format is not part of an exported graph).
    """
    if x.device.type == 'cpu' and x.ndim == 4 and not is_capturing_graph():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def init_vit_weights(module: nn.Module) -> None:
    """The DeiT/timm ViT init, applied with `model.apply`: trunc-normal(0.02) Linear weights, zero biases, unit
    LayerNorms. Other modules (patch-embedding convs, our operators) keep their own init."""
    from timm.layers import trunc_normal_
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def stage_intermediates(model: nn.Module, x: torch.Tensor, stem: Callable[[torch.Tensor], torch.Tensor],
                        indices=None, stop_early: bool = False, output_fmt: str = 'NCHW',
                        intermediates_only: bool = False, final_norm: Optional[Callable] = None, norm: bool = False,
                        min_size=None):
    """`forward_intermediates` of a stem + `model.stages` network whose stage outputs are the features.

    `final_norm` (the model's norm after the last stage) is applied to the final output when every stage ran, and
    to the last stage's intermediate when `norm`. `min_size`: the smallest input (H, W), checked with the channels.
    Returns the selected stage outputs (NCHW), or (final output, outputs) unless `intermediates_only`.
    """
    name = type(model).__name__
    if output_fmt != 'NCHW':
        raise ValueError(f'{name} produces NCHW features, output_fmt={output_fmt!r} is not supported')
    check_input_size(x, model.in_chans, model_name=name, min_size=min_size)
    take_indices, max_index = feature_take_indices(len(model.stages), indices)
    last_index = len(model.stages) - 1
    x = stem(x)
    stages = model.stages if torch.jit.is_scripting() or not stop_early else model.stages[:max_index + 1]
    intermediates = []
    for i, stage in enumerate(stages):
        x = stage(x)
        if i in take_indices:
            intermediates.append(final_norm(x) if norm and final_norm is not None and i == last_index else x)
    if intermediates_only:
        return intermediates
    if final_norm is not None and len(stages) == len(model.stages):
        x = final_norm(x)
    return x, intermediates


def prune_stages(model: nn.Module, indices=1, prune_head: bool = True, prune_norm: bool = False,
                 levels: str = 'stages'):
    """`prune_intermediate_layers` of a network whose feature levels are `model.<levels>` (its stages, or a ViT's
    blocks): keep the levels up to the last selected one (and drop the final `model.norm` with `prune_norm`)."""
    take_indices, max_index = feature_take_indices(len(getattr(model, levels)), indices)
    setattr(model, levels, getattr(model, levels)[:max_index + 1])
    if prune_norm:
        model.norm = nn.Identity()
    if prune_head:
        model.reset_classifier(0, '')
    return take_indices


def token_maps(tokens: Sequence[torch.Tensor], grid_size: Tuple[int, int], output_fmt: str) -> List[torch.Tensor]:
    """A ViT's per-block patch tokens (B, N, C) as `forward_intermediates` returns them: 'NLC' as they are, 'NCHW'
    as (B, C, H, W) maps on the patch grid."""
    if output_fmt not in ('NCHW', 'NLC'):
        raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
    if output_fmt == 'NLC':
        return list(tokens)
    h, w = grid_size
    return [t.transpose(1, 2).reshape(t.shape[0], -1, h, w) for t in tokens]


def resample_pos_embed(state_dict: Dict[str, torch.Tensor], model: nn.Module, num_prefix_tokens: int) -> None:
    """Resize a checkpoint's square absolute `pos_embed` to the model's patch grid, in place (bicubic)."""
    from timm.layers import resample_abs_pos_embed
    pos_embed = state_dict.get('pos_embed')
    if pos_embed is None or pos_embed.shape == model.pos_embed.shape:
        return
    old = int(round((pos_embed.shape[1] - num_prefix_tokens) ** 0.5))
    state_dict['pos_embed'] = resample_abs_pos_embed(pos_embed, list(model.grid_size), [old, old],
                                                     num_prefix_tokens=num_prefix_tokens)
