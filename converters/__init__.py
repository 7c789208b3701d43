"""Importers: exported model files -> bninfer.ir.Graph."""
from .onnx import import_model

__all__ = ["import_model"]
