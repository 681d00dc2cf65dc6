"""backbone-zoo model families; importing this package registers every model with timm."""
from . import asvit, biformer, convit, dependencyvit, fmvit, halonet, karat, litv2, lsnet, mala, overlock, van

__all__ = ['asvit', 'biformer', 'convit', 'dependencyvit', 'fmvit', 'halonet', 'karat', 'litv2', 'lsnet', 'mala',
           'overlock', 'van']
