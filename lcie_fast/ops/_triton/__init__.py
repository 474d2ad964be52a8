"""Triton kernels; imported only when a Triton implementation is first used."""
