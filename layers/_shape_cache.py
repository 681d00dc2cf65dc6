"""Cache for tensors that depend only on shapes and devices (index tables, offsets, rotary angles)."""
import functools
from typing import Callable

import torch

__all__ = ['shape_cache']


def shape_cache(maxsize: int) -> Callable[[Callable], Callable]:
    """`functools.lru_cache` for a function of shapes, sizes and devices that returns tensors.

    A table first built under `torch.inference_mode()` would be an inference tensor, and a later training forward
    could not save it for backward; the tables are therefore always built outside inference mode. Under
    `torch.compile` the function is traced instead (its shapes are static there, so the table becomes a constant of
    the graph): neither the cache nor the inference-mode query can be traced, and each would break the graph.
    """
    def decorate(fn: Callable) -> Callable:
        @functools.lru_cache(maxsize=maxsize)
        def cached(*args):
            if torch.is_inference_mode_enabled():
                with torch.inference_mode(False):
                    return fn(*args)
            return fn(*args)

        @functools.wraps(fn)
        def cached_or_traced(*args):
            if torch.compiler.is_compiling():
                return fn(*args)
            return cached(*args)
        cached_or_traced.cache_clear = cached.cache_clear
        cached_or_traced.cache_info = cached.cache_info
        return cached_or_traced
    return decorate
