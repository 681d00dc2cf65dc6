"""backbone-zoo model families; importing this package registers every model with timm."""
import importlib
from typing import Callable, Dict, Optional

from timm.models import model_entrypoint

from ._helpers import unwrap_state_dict
from . import asvit, biformer, convit, dependencyvit, fmvit, halonet, karat, litv2, lsnet, mala, overlock, van

__all__ = ['asvit', 'biformer', 'convit', 'dependencyvit', 'fmvit', 'get_checkpoint_filter', 'halonet', 'karat',
           'litv2', 'lsnet', 'mala', 'overlock', 'unwrap_state_dict', 'van']


def get_checkpoint_filter(model_name: str) -> Optional[Callable[[Dict, object], Dict]]:
    """The `checkpoint_filter_fn(state_dict, model)` of a registered model's family (None if it has none): it
    converts the family's official checkpoint layouts to ours and leaves ours unchanged."""
    module = importlib.import_module(model_entrypoint(model_name.split('.')[0]).__module__)
    return getattr(module, 'checkpoint_filter_fn', None)
