"""Export a checkpoint for use without segdemo: ONNX or TorchScript, meta.json, a standalone predict script
(scripts/), README and requirements (exporter.py)."""
