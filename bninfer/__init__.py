"""bninfer: a batch-1 CPU inference engine for ONNX models, a drop-in for onnxruntime's session API."""
from . import kernel_cache  # noqa: F401  (first: kernels must be cached under bninfer's own stamp)
from . import vector_width  # noqa: F401  (before any kernel compiles: the 512-bit preference)
from .errors import (BninferError, InputError, InputTypeError, ModelError, TrainingModeError,
                     UnsupportedOperatorError)
from .session import (ExecutionMode, GraphOptimizationLevel, InferenceSession, NodeArg, RunOptions,
                      SessionOptions)

__version__ = "0.1.0"


def get_available_providers() -> list[str]:
    return ["CPUExecutionProvider"]


def get_device() -> str:
    return "CPU"


__all__ = ["InferenceSession", "SessionOptions", "RunOptions", "GraphOptimizationLevel", "ExecutionMode",
           "NodeArg", "BninferError", "UnsupportedOperatorError", "ModelError", "InputError",
           "InputTypeError", "TrainingModeError", "get_available_providers", "get_device"]
