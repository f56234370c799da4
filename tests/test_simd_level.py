"""Choosing the C++ kernels' SIMD path: limit_simd (tests, nested), NA_KERNELS_SIMD (a process)."""

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


def test_environment_variable_caps_the_process(monkeypatch):
    # what importing na_kernels.cpu does with NA_KERNELS_SIMD
    monkeypatch.setenv("NA_KERNELS_SIMD", " Generic ")
    try:
        assert cpu._limit_from_environment() == cpu.SIMD_LEVELS.index("generic")
        assert cpu.simd_level() == "generic"
    finally:
        cpu.extension().set_simd_limit(cpu._simd_limit)
    assert cpu.simd_level() == cpu.detected_simd_level()


def test_environment_variable_rejects_unknown_level(monkeypatch):
    monkeypatch.setenv("NA_KERNELS_SIMD", "avx1024")
    with pytest.raises(ValueError, match="NA_KERNELS_SIMD must be one of"):
        cpu._limit_from_environment()
    assert cpu.simd_level() == cpu.detected_simd_level()


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
