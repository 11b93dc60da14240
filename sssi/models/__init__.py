"""Models: tensors in, tensors out (no Lightning, Hydra or file knowledge in the classes).

Encoders are built by name through one registry::

    from sssi.models import build_backbone
    encoder = build_backbone("resnet50", in_channels=4, dilated=True)
    features = encoder(x)  # [stem, layer1, ..., layer4], shallow -> deep

Importing this package registers the built-in backbones; it needs only torch.
"""

from sssi.models import resnet as _resnet  # noqa: F401  (registers the ResNets)
from sssi.models.registry import (
    Encoder,
    adapt_input_conv,
    build_backbone,
    list_backbones,
    load_backbone_state,
    load_backbone_weights,
    register,
)

__all__ = [
    "Encoder",
    "adapt_input_conv",
    "build_backbone",
    "list_backbones",
    "load_backbone_state",
    "load_backbone_weights",
    "register",
]
