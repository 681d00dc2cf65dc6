"""backbone-zoo model families; importing this package registers every model with timm."""
from . import asvit, biformer, convit, lsnet, mala, van

__all__ = ['asvit', 'biformer', 'convit', 'lsnet', 'mala', 'van']
