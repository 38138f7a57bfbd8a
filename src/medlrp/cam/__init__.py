"""Grad-CAM family (N-d, batched). Registers its methods on import."""
