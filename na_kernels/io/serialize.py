"""Save and load a converted ``SpikingNetwork`` as a ``.snn`` file: data only, never code.

The format itself (what the file holds, the closed tables of what it may name, every check
made before anything is built) is ``na_kernels.snn.record``, below ``SpikingNetwork`` so that
``snn.save(path)`` can write it; this module reads a file back into a ``SpikingNetwork``.
"""

from typing import Optional

import torch

from ..snn.network import SpikingNetwork
from ..snn.record import (
    DEFAULT_MAX_BYTES,
    FORMAT,
    FORMAT_VERSION,
    FUNCTIONS,
    GETATTR,
    METHODS,
    MODULE_TYPES,
    SerializationError,
    network_from_bytes,
    pack,
    read_file,
    save_snn,
    snn_header,
    snn_to_bytes,
)

__all__ = [
    "save_snn",
    "load_snn",
    "snn_from_bytes",
    "snn_to_bytes",
    "snn_header",
    "pack",
    "SerializationError",
    "FORMAT",
    "FORMAT_VERSION",
    "DEFAULT_MAX_BYTES",
    "MODULE_TYPES",
    "FUNCTIONS",
    "METHODS",
    "GETATTR",
]


def snn_from_bytes(data, where: str = "the data", map_location: Optional[object] = None) -> SpikingNetwork:
    """Rebuild the ``SpikingNetwork`` of a ``.snn`` file's bytes (see ``load_snn``)."""
    return network_from_bytes(data, SpikingNetwork, where, map_location)


def load_snn(path, map_location: Optional[object] = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> SpikingNetwork:
    """Load a ``SpikingNetwork`` written by ``save_snn`` / ``snn.save``: ``[B, ...] -> [T, B, ...]``
    as before saving, bit for bit, in eval mode; T, chunk, thresholds, amplitudes (calibrated
    ones included) and statistics counters are those saved. Tensors load on the CPU unless
    ``map_location`` (a device) says otherwise.

    ``path``: a file name or a binary file object. ``max_bytes``: the largest file accepted
    (default 1 GiB); the tensors it holds are at most that size, and nothing larger is
    allocated for them. Raises ``SerializationError`` (a ValueError) for anything that is not
    a valid file of this format version, naming what is wrong; nothing in the file is run.
    A file that cannot be opened raises the OSError of ``open`` (FileNotFoundError, ...)."""
    if map_location is not None and not isinstance(map_location, (str, torch.device)):
        raise TypeError(f"map_location must be a device (str or torch.device), got {type(map_location).__name__}")
    data, where = read_file(path, max_bytes)
    return snn_from_bytes(data, where, map_location)
