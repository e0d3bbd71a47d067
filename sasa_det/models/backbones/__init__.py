"""mmdet registrations: backbones."""
