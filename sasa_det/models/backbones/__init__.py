"""mmdet registrations: backbones."""
from .sasa_resnet import SASABasicBlock, SASABottleneck, SASAResNet

__all__ = ['SASAResNet', 'SASABottleneck', 'SASABasicBlock']
