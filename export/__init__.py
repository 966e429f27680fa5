"""Checkpoint -> ONNX -> TensorRT export (installed as cream_rt.export; imports torch)."""
