"""Model interchange: checkpoints in (warm start from safetensors or a torch state dict,
checked against the job's layout) and released models out (safetensors, ONNX,
TorchScript, each with a model card of its provenance)."""
