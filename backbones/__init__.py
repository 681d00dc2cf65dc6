"""backbone-zoo model families; importing this package registers every model with timm."""
from . import van

__all__ = ['van']
