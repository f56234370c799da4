"""Triton kernels and their launchers, one file per op (imported lazily: triton is optional)."""
