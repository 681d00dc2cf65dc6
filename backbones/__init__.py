"""backbone-zoo model families; importing this package registers every model with timm."""
from . import asvit, van

__all__ = ['asvit', 'van']
