"""Numba kernels: arrays in, arrays out, one op family per file. Nothing of ONNX here."""
