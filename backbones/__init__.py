"""backbone-zoo model families; importing this package registers every model with timm."""
from . import asvit, convit, karat, lsnet, mala, van

__all__ = ['asvit', 'convit', 'karat', 'lsnet', 'mala', 'van']
