"""The Triton backend: one module per op with its kernels, their launchers and the op's
``forward`` / ``backward`` adapter (imported lazily: triton is optional)."""
