"""The PyTorch reference, the spec every backend meets: one module per op (the formula in plain
PyTorch, then the op's ``forward`` / ``backward`` adapter), and ``philox``, the noise stream."""
