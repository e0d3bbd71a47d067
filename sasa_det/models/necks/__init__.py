"""mmdet registrations: necks."""
from .sasa_fpn import SASAFPN

__all__ = ['SASAFPN']
