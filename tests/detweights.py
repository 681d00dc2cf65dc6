"""Our implementation of the reference fixtures' deterministic fill rule (`detweights/1`).

For each key, a generator seeded with crc32(key) draws the value: running_var ~ 0.5 + U[0, 1); tensors of
2+ dims ~ N(0, 1) / sqrt(fan_in); 1-d weight/gamma/scale ~ 1 + 0.1 N(0, 1); anything else ~ 0.1 N(0, 1).
"""
import math
import zlib
from typing import Dict, Iterable, Sequence

import torch

FILL_RULE = 'detweights/1'


def fill_tensor(key: str, shape: Sequence[int]) -> torch.Tensor:
    """The float64 value the rule assigns to `key` with `shape`."""
    shape = tuple(int(s) for s in shape)
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    leaf = key.rsplit('.', 1)[-1]
    if leaf == 'running_var':
        return 0.5 + torch.rand(shape, generator=generator, dtype=torch.float64)
    z = torch.randn(shape, generator=generator, dtype=torch.float64)
    if len(shape) >= 2:
        return z / math.sqrt(math.prod(shape[1:]))
    if leaf in ('weight', 'gamma', 'scale'):
        return 1.0 + 0.1 * z
    return 0.1 * z


def build_state_dict(entries: Iterable[Sequence], overrides: Dict[str, object] = None) -> Dict[str, torch.Tensor]:
    """Official-layout state dict from a fixture's `state_dict` entries `[key, shape, kind, dtype]`.

    Filled values are rounded to float32 as official checkpoint files hold them; `buffer` entries are zeros
    of the recorded dtype (the official code computes them itself).
    """
    state_dict = {}
    for key, shape, kind, dtype in entries:
        if kind in ('param', 'stat'):
            state_dict[key] = fill_tensor(key, shape).float()
        elif kind == 'buffer':
            state_dict[key] = torch.zeros(tuple(shape), dtype=getattr(torch, dtype))
        else:
            raise ValueError(f'unknown fixture entry kind {kind!r} for {key}')
    for key, value in (overrides or {}).items():
        state_dict[key] = torch.as_tensor(value, dtype=torch.float64).float()
    return state_dict


def fixture_input(seed: int, shape: Sequence[int]) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
