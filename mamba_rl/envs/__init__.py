"""The delayed multi-bit memory environment (TorchRL and Gymnasium faces)."""
