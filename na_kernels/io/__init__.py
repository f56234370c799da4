"""na_kernels.io: file formats for converted networks.

``serialize`` (save_snn, load_snn: na_kernels' own format, tensors and plain data only) and
``nir_export`` (to_nir, from_nir: the Neuromorphic Intermediate Representation). Everything here
is re-exported by ``na_kernels.nn``. ``neurobench`` (neurobench_model: a SpikingNetwork as a
NeuroBench 2.x model that counts correctly) needs neurobench and snntorch, and is imported by name.
"""

from .._lazy import lazy_exports

_LAZY = {
    **dict.fromkeys(("SerializationError", "load_snn", "save_snn"), "na_kernels.io.serialize"),
    **dict.fromkeys(("NIRExportError", "to_nir"), "na_kernels.io.nir_export"),
    **dict.fromkeys(("NIRImportError", "from_nir"), "na_kernels.io.nir_import"),
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = sorted(_LAZY)
