"""Choosing the C++ kernels' SIMD path: limit_simd (tests, nested), NA_KERNELS_SIMD (a process)."""
import os
import subprocess
import sys

import pytest

from na_kernels import cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason="C++ extension not built")


def test_limit_simd_caps_and_restores_nested_levels():
    best = cpu.detected_simd_level()
    assert cpu.simd_level() == best
    with cpu.limit_simd("avx2"):
        assert cpu.simd_level() == ("avx2" if best != "generic" else "generic")
        with cpu.limit_simd("generic"):
            assert cpu.simd_level() == "generic"
        assert cpu.simd_level() == ("avx2" if best != "generic" else "generic")
    assert cpu.simd_level() == best


def test_limit_simd_rejects_unknown_level():
    with pytest.raises(ValueError, match="level must be one of"):
        with cpu.limit_simd("sse9"):
            pass
    assert cpu.simd_level() == cpu.detected_simd_level()


def _level_in_subprocess(value, directory):
    # run elsewhere than the repository root: there `import na_kernels` would find the source tree,
    # which has no built extension when the package was installed non-editable (as in CI)
    env = dict(os.environ, NA_KERNELS_SIMD=value)
    return subprocess.run([sys.executable, "-c", "from na_kernels import cpu; print(cpu.simd_level())"], env=env,
                          cwd=directory, capture_output=True, text=True, timeout=300)


def test_environment_variable_caps_the_process(tmp_path):
    result = _level_in_subprocess("generic", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "generic"


def test_environment_variable_rejects_unknown_level(tmp_path):
    result = _level_in_subprocess("avx1024", tmp_path)
    assert result.returncode != 0 and "NA_KERNELS_SIMD must be one of" in result.stderr


def test_limit_simd_is_process_wide():
    """Documented behaviour: the cap applies to kernels called from any thread while the block runs."""
    import threading

    from na_kernels import cpu

    if not cpu.available():
        pytest.skip("C++ extension not built")
    seen, before = [], cpu.simd_level()
    with cpu.limit_simd("generic"):
        worker = threading.Thread(target=lambda: seen.append(cpu.simd_level()))
        worker.start()
        worker.join()
    assert seen == ["generic"]
    assert cpu.simd_level() == before
