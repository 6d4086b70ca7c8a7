"""Triton kernels (shipped in the wheel as hybridkv.kernels)."""
