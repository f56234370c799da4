"""na_kernels.app: the application built on the library — the ``na-kernels`` command line
(``cli``), the digits demo (``demo``), training and checkpoints (``train``), datasets
(``datasets``, with the bundled digits in ``data/``) and reference architectures (``models``).

Nothing below this package imports it: the kernels and the model layer never depend on the app.
"""
