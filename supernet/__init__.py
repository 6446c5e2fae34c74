"""Model code: EfficientViT blocks, `build_model(spec)`, and (later) the supernet of MetaPaths."""

from supernet.model import BLOCKS, EfficientViT, build_model

__all__ = ["BLOCKS", "EfficientViT", "build_model"]
