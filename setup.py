"""Builds the optional C++ CPU kernels (csrc/) with pybind11 and no torch headers.

The extension is optional: where no compiler (or no OpenMP) is found the package still
installs, and na_kernels falls back to the PyTorch reference on the CPU with a warning.
"""

import glob
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

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


def build_jobs(requested=None):
    """How many translation units compile at once: build_ext's --parallel, else
    NA_KERNELS_BUILD_JOBS, else the CPUs this process may run on."""
    if requested:
        return int(requested)
    if os.environ.get("NA_KERNELS_BUILD_JOBS"):
        return max(1, int(os.environ["NA_KERNELS_BUILD_JOBS"]))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def compile_in_parallel(compiler, jobs):
    """Make ``compiler.compile`` build its translation units ``jobs`` at a time (distutils builds
    them one after the other), each reported on stderr when done (``pip install -v`` shows it).
    A compiler without distutils' per-file ``_compile`` (MSVC) is left as it is."""
    if jobs < 2 or not all(hasattr(compiler, name) for name in ("_setup_compile", "_get_cc_args", "_compile")):
        return

    def compile(
        sources,
        output_dir=None,
        macros=None,
        include_dirs=None,
        debug=False,
        extra_preargs=None,
        extra_postargs=None,
        depends=None,
    ):
        # as distutils.ccompiler.CCompiler.compile, with the loop over objects in a thread pool
        macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs
        )
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)
        todo = [obj for obj in objects if obj in build]
        done = []
        lock = threading.Lock()

        def compile_one(obj):
            src, ext = build[obj]
            start = time.monotonic()
            compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)
            with lock:
                done.append(obj)
                print(
                    f"na_kernels: compiled {src} ({len(done)}/{len(todo)}, {time.monotonic() - start:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )

        with ThreadPoolExecutor(min(jobs, len(todo) or 1)) as pool:
            for future in [pool.submit(compile_one, obj) for obj in todo]:
                future.result()  # the first compile error is raised (the others finish first)
        return objects

    compiler.compile = compile


class OptionalBuildExt(build_ext):
    """Try with OpenMP, then without; on failure warn and install without the extension."""

    def build_extension(self, ext):
        jobs = build_jobs(self.parallel)
        compile_in_parallel(self.compiler, jobs)
        base_compile = list(ext.extra_compile_args or [])
        base_link = list(ext.extra_link_args or [])
        attempts = [(OPENMP_FLAGS, OPENMP_FLAGS), ([], [])]
        if os.environ.get("NA_KERNELS_NO_OPENMP"):
            attempts = attempts[1:]
        last_error = None
        # the compile is silent for about a minute: say so first (pip shows it with -v);
        # nothing when build_ext would skip an up-to-date extension
        if self.force or newer_group(list(ext.sources) + list(ext.depends or []), self.get_ext_fullpath(ext.name)):
            print(
                f"na_kernels: building the C++ kernels, {len(ext.sources)} files, {jobs} at a time "
                "(about 75 s of CPU time in all)...",
                file=sys.stderr,
                flush=True,
            )
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
