"""Gradient methods: gradient, input-x-gradient, integrated gradients, SmoothGrad, occlusion."""
