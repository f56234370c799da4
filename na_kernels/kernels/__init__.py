"""What the Triton kernels share (``_storage``: loads and rounded stores per storage dtype). Each
op's kernels, launchers and adapter are in ``na_kernels/ops/<op>/triton.py`` (imported lazily:
triton is optional)."""
