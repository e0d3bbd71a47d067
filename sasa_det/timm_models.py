"""timm registrations: sasa_resnet{26,38,50,101}[_attnstem] classifiers."""
