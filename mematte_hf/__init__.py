"""MEMatte for Hugging Face: `import mematte_hf` registers the "mematte" model type with the Auto classes."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageMatting

from .configuration_mematte import MEMatteConfig
from .image_processing_mematte import MEMatteImageProcessor
from .modeling_mematte import MEMatteForImageMatting, MEMatteImageMattingOutput, MEMattePreTrainedModel

__version__ = "0.1.0"


def register_auto_classes() -> None:
    """Register MEMatte with AutoConfig / AutoModel / AutoModelForImageMatting / AutoImageProcessor (idempotent),
    and mark the classes so that `save_pretrained` copies their code for `trust_remote_code=True` users."""
    AutoConfig.register(MEMatteConfig.model_type, MEMatteConfig, exist_ok=True)
    AutoModel.register(MEMatteConfig, MEMatteForImageMatting, exist_ok=True)
    AutoModelForImageMatting.register(MEMatteConfig, MEMatteForImageMatting, exist_ok=True)
    MEMatteConfig.register_for_auto_class()
    MEMatteForImageMatting.register_for_auto_class("AutoModelForImageMatting")
    AutoImageProcessor.register(MEMatteConfig, image_processor_classes={"pil": MEMatteImageProcessor}, exist_ok=True)
    MEMatteImageProcessor.register_for_auto_class("AutoImageProcessor")


register_auto_classes()

__all__ = [
    "MEMatteConfig",
    "MEMatteForImageMatting",
    "MEMatteImageProcessor",
    "MEMatteImageMattingOutput",
    "MEMattePreTrainedModel",
    "register_auto_classes",
]
