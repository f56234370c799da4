"""Property tests (hypothesis) of both ops against an oracle written independently of
``na_kernels.reference``: ``oracle_*`` modules use numpy, torch and Python only, never na_kernels."""
