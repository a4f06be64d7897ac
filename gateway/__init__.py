"""A serving-first Open Inference Protocol gateway for ONNX models."""

__version__ = "0.1.0"
