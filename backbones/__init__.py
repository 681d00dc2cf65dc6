"""backbone-zoo model families; importing this package registers every model with timm."""
from . import asvit, convit, litv2, lsnet, mala, van

__all__ = ['asvit', 'convit', 'litv2', 'lsnet', 'mala', 'van']
