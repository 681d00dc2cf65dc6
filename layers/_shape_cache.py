"""Cache for tensors that depend only on shapes and devices (index tables, offsets, rotary angles)."""
import functools
from typing import Callable

import torch

__all__ = ['shape_cache']


def shape_cache(maxsize: int) -> Callable[[Callable], Callable]:
    """`functools.lru_cache` for a function of shapes, sizes and devices that returns tensors.

    A table first built under `torch.inference_mode()` would be an inference tensor, and a later training forward
    could not save it for backward; the tables are therefore always built outside inference mode.
    """
    def decorate(fn: Callable) -> Callable:
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(fn)
        def cached(*args):
            if torch.is_inference_mode_enabled():
                with torch.inference_mode(False):
                    return fn(*args)
            return fn(*args)
        return cached
    return decorate
