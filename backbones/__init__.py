"""backbone-zoo model families; importing this package registers every model with timm."""
from . import asvit, lsnet, mala, van

__all__ = ['asvit', 'lsnet', 'mala', 'van']
