"""Builds the optional C++ CPU kernels (csrc/) with pybind11 and no torch headers.

The extension is optional: where no compiler (or no OpenMP) is found the package still
installs, and na_kernels falls back to the PyTorch reference on the CPU with a warning.
"""
import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.modified import newer_group
except ImportError:  # setuptools < 69
    from distutils.dep_util import newer_group

try:
    from pybind11.setup_helpers import Pybind11Extension
except ImportError:  # pybind11 missing outside build isolation: install pure Python
    Pybind11Extension = None

# -ffp-contract=off: no fused multiply-add, so every backend rounds exactly like the
# PyTorch reference (bitwise-equal outputs); no -ffast-math for the same reason.
# -fno-trapping-math only lets comparisons become vector blends: results are unchanged.
COMMON_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
OPENMP_FLAGS = ["-fopenmp"]


class OptionalBuildExt(build_ext):
    """Try with OpenMP, then without; on failure warn and install without the extension."""

    def build_extension(self, ext):
        base_compile = list(ext.extra_compile_args or [])
        base_link = list(ext.extra_link_args or [])
        attempts = [(OPENMP_FLAGS, OPENMP_FLAGS), ([], [])]
        if os.environ.get("NA_KERNELS_NO_OPENMP"):
            attempts = attempts[1:]
        last_error = None
        # the compile is silent for about a minute: say so first (pip shows it with -v);
        # nothing when build_ext would skip an up-to-date extension
        if self.force or newer_group(list(ext.sources) + list(ext.depends or []), self.get_ext_fullpath(ext.name)):
            print("na_kernels: building the C++ kernels (about a minute)...", file=sys.stderr, flush=True)
        for compile_flags, link_flags in attempts:
            ext.extra_compile_args = base_compile + compile_flags
            ext.extra_link_args = base_link + link_flags
            try:
                super().build_extension(ext)
                return
            except Exception as error:  # CompileError, LinkError, missing compiler
                last_error = error
        self.warn(
            f"na_kernels: could not build the C++ CPU kernels ({last_error}); "
            "the package will use the PyTorch reference on the CPU."
        )


ext_modules = []
if Pybind11Extension is not None and not os.environ.get("NA_KERNELS_NO_EXTENSION"):
    ext_modules.append(
        Pybind11Extension(
            "na_kernels._C",
            sorted(glob.glob("csrc/**/*.cpp", recursive=True)),
            depends=sorted(glob.glob("csrc/**/*.h", recursive=True)),  # a header edit rebuilds too
            include_dirs=["csrc"],
            extra_compile_args=COMMON_FLAGS,
            cxx_std=17,
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
