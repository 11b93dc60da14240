"""sssi: self-supervised semantic-aware inpainting for aerial image segmentation."""

__version__ = "0.1.0"
