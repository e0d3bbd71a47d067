"""mmdet registrations: backbones."""
from .sasa_resnet import SASABasicBlock, SASAResNet

__all__ = ['SASAResNet', 'SASABasicBlock']
