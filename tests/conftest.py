"""Shared test setup: deterministic seeds, and the list of our registered models split into CI and slow sets."""
import math
import os
from collections import defaultdict
from pathlib import Path

import pytest
import timm
import torch

import backbones  # noqa: F401  (registers every family)

# Two cores: one thread per xdist worker, both threads for a plain run.
torch.set_num_threads(1 if os.environ.get('PYTEST_XDIST_WORKER') else 2)


def our_models():
    """Every model name registered from the `backbones` package (timm keys modules by last component only)."""
    return sorted(n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('backbones.'))


def model_family(name: str) -> str:
    return timm.models.model_entrypoint(name).__module__.rsplit('.', 1)[-1]


def meta_param_count(name: str, **kwargs) -> int:
    with torch.device('meta'):
        model = timm.create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


def _split_models():
    """The smallest variant of each family runs every test in CI; the rest are marked slow."""
    by_family = defaultdict(list)
    for name in our_models():
        by_family[model_family(name)].append(name)
    ci = set()
    for names in by_family.values():
        ci.add(min(names, key=lambda n: (meta_param_count(n), n)))
    return ci


ALL_MODELS = our_models()
CI_MODELS = _split_models()


def model_params():
    """`pytest.param`s over every model, the non-representative ones marked slow."""
    return [pytest.param(n, marks=() if n in CI_MODELS else pytest.mark.slow) for n in ALL_MODELS]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def input_size_for(model, target: int):
    """Input (C, H, W) near `target`, honouring fixed/min sizes of the model's cfg, as timm's tests do."""
    cfg = model.pretrained_cfg
    c, h, w = cfg['input_size']
    if cfg.get('fixed_input_size', False):
        return c, h, w
    min_size = cfg.get('min_input_size')
    if h > target:
        h = w = target
    if min_size is not None:
        h, w = max(h, min_size[1]), max(w, min_size[2])
    return c, h, w


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)


def is_png(path) -> bool:
    """A complete, decodable PNG file (what the scripts' plots must write)."""
    from PIL import Image
    path = Path(path)
    if not path.is_file() or path.read_bytes()[:8] != b'\x89PNG\r\n\x1a\n':
        return False
    with Image.open(path) as image:
        image.verify()
    return True
