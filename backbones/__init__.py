"""backbone-zoo model families; importing this package registers every model with timm."""
from . import asvit, mala, van

__all__ = ['asvit', 'mala', 'van']
