"""The C++ kernels' vocabulary (csrc/common/spec.h, exported as ``_C.vocabulary()``) against the
Python enums of ``na_kernels._spec``: the same enums, the same members, the same values."""

import pytest

from na_kernels import _spec, cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason=f"C++ extension not built: {cpu.load_error()}")


def test_the_extension_has_exactly_the_python_vocabulary():
    table = cpu.extension().vocabulary()
    assert set(table) == {enum.__name__ for enum in _spec.VOCABULARY}


@pytest.mark.parametrize("enum", _spec.VOCABULARY, ids=lambda enum: enum.__name__)
def test_enum_members_and_values_agree(enum):
    members = cpu.extension().vocabulary()[enum.__name__]
    assert members == {member.name: member.value for member in enum}  # both directions: equal dicts


def test_simd_levels_come_from_the_vocabulary():
    assert cpu.SIMD_LEVELS == _spec.SimdLevel.labels()


def test_unknown_codes_are_refused_naming_the_argument():
    ext = cpu.extension()
    with pytest.raises(ValueError, match="level must be one of GENERIC"):
        ext.set_simd_limit(level=7)
    with pytest.raises(ValueError, match="dtype must be"):
        ext.convert_to_float(dtype=5, src=0, dst=0, count=0)
    with pytest.raises(ValueError, match="noise must be"):
        ext.noise_fill(seed=0, first=0, count=0, noise=9, scale=1.0)
