"""backbone-zoo model families; importing this package registers every model with timm."""
from . import asvit, convit, lsnet, mala, overlock, van

__all__ = ['asvit', 'convit', 'lsnet', 'mala', 'overlock', 'van']
