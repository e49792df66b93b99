"""lrtransfer: learning-rate transfer studies, Hugging Face-native."""

from lrtransfer.modeling import MODEL_FAMILIES, get_family, register_auto_classes

register_auto_classes()

__version__ = "0.1.0"
__all__ = ["MODEL_FAMILIES", "get_family", "register_auto_classes", "__version__"]
