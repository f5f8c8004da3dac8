"""TorchScript CHGNet, weight loading from ``chgnet`` checkpoints, export, registry."""

from crossfunctional.models.chgnet import CHGNet, Graph, reverse_edges
from crossfunctional.models.loading import (
    DEFAULT_MODEL,
    MODELS,
    ModelError,
    available_models,
    export,
    from_checkpoint,
    load_model,
    model_metadata,
    resolve_device,
)

__all__ = [
    "CHGNet",
    "DEFAULT_MODEL",
    "Graph",
    "MODELS",
    "ModelError",
    "available_models",
    "export",
    "from_checkpoint",
    "load_model",
    "model_metadata",
    "resolve_device",
    "reverse_edges",
]
