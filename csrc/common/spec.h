// The kernels' vocabulary, each enum stated once with the values of na_kernels/_spec.py:
// noise kinds, resets, surrogates, storage dtypes and SIMD levels. Vocabulary<E> gives an
// enum's Python name and members (na_kernels._C.vocabulary() exports them; tests/test_spec.py
// checks them against the Python enums); member<E>(code, argument) checks a code from Python.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

// Each list: X(NAME, value), NAME as the Python enum member.
#define NA_NOISE_MEMBERS(X) X(NONE, 0) X(UNIFORM, 1) X(GAUSSIAN, 2)
#define NA_RESET_MEMBERS(X) X(SUBTRACT, 0) X(ZERO, 1)
#define NA_SURROGATE_MEMBERS(X) X(SIGMOID, 0) X(ATAN, 1) X(TRIANGLE, 2) X(RECTANGLE, 3)
#define NA_DTYPE_MEMBERS(X) X(FLOAT32, 0) X(FLOAT16, 1) X(BFLOAT16, 2)
#define NA_SIMD_LEVEL_MEMBERS(X) X(GENERIC, 0) X(AVX2, 1) X(AVX512, 2)

// X(Enum, its member list), Enum as the Python enum class
#define NA_VOCABULARY(X)                  \
  X(Noise, NA_NOISE_MEMBERS)              \
  X(Reset, NA_RESET_MEMBERS)              \
  X(Surrogate, NA_SURROGATE_MEMBERS)      \
  X(DType, NA_DTYPE_MEMBERS)              \
  X(SimdLevel, NA_SIMD_LEVEL_MEMBERS)

namespace na {

#define NA_ENUMERATOR(name, value) name = value,
#define NA_DECLARE_ENUM(Enum, MEMBERS) enum class Enum : int { MEMBERS(NA_ENUMERATOR) };
NA_VOCABULARY(NA_DECLARE_ENUM)
#undef NA_DECLARE_ENUM
#undef NA_ENUMERATOR

struct Member {
  const char* name;
  int value;
};

template <class Enum> struct Vocabulary;

#define NA_MEMBER(name, value) Member{#name, value},
#define NA_DESCRIBE_ENUM(Enum, MEMBERS)                        \
  template <> struct Vocabulary<Enum> {                        \
    static constexpr const char* name = #Enum;                 \
    static constexpr Member members[] = {MEMBERS(NA_MEMBER)};  \
  };
NA_VOCABULARY(NA_DESCRIBE_ENUM)
#undef NA_DESCRIBE_ENUM
#undef NA_MEMBER

template <class Enum> constexpr int member_count() {
  return static_cast<int>(sizeof(Vocabulary<Enum>::members) / sizeof(Member));
}

// "one of NONE (0), UNIFORM (1), GAUSSIAN (2)"
template <class Enum> std::string accepted_members() {
  std::string text = "one of ";
  for (int i = 0; i < member_count<Enum>(); ++i) {
    const Member& m = Vocabulary<Enum>::members[i];
    text += (i ? ", " : "") + std::string(m.name) + " (" + std::to_string(m.value) + ")";
  }
  return text;
}

template <class Enum> [[noreturn]] void reject_member(int code, const char* argument) {
  throw std::invalid_argument(std::string("na_kernels: ") + argument + " must be " + accepted_members<Enum>() +
                              " of " + Vocabulary<Enum>::name + ", got " + std::to_string(code));
}

// The member of Enum with this code; std::invalid_argument naming `argument` otherwise.
template <class Enum> Enum member(int code, const char* argument) {
  for (const Member& m : Vocabulary<Enum>::members)
    if (m.value == code) return static_cast<Enum>(code);
  reject_member<Enum>(code, argument);
}

// bytes per element of a storage type
inline int64_t element_bytes(DType dtype) { return dtype == DType::FLOAT32 ? 4 : 2; }

}  // namespace na
