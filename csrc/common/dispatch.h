// From run-time arguments to compile-time kernel variants, for every op: dispatch(body, a, b, ...)
// calls body(tag_a, tag_b, ...) with std::integral_constant tags for the values of a, b, ...:
// members of a vocabulary enum (common/spec.h) or bools (flags such as "save h"). Kernels take
// them as template parameters, so their inner loops have no branch on them.
#pragma once
#include <type_traits>
#include <utility>

#include "common/spec.h"

namespace na {

template <class Body> void dispatch(Body&& body) { body(); }

template <class Body, class... Rest> void dispatch(Body&& body, bool flag, Rest... rest);

template <class Body, class Enum, class... Rest, std::enable_if_t<std::is_enum_v<Enum>, int> = 0>
void dispatch(Body&& body, Enum value, Rest... rest);

namespace detail {
template <class Enum, class Body, size_t... I, class... Rest>
void dispatch_members(std::index_sequence<I...>, Enum value, Body& body, Rest... rest) {
  const bool matched =
      ((static_cast<int>(value) == Vocabulary<Enum>::members[I].value &&
        (dispatch(
             [&](auto... tags) {
               body(std::integral_constant<Enum, static_cast<Enum>(Vocabulary<Enum>::members[I].value)>{}, tags...);
             },
             rest...),
         true)) ||
       ...);
  if (!matched) reject_member<Enum>(static_cast<int>(value), Vocabulary<Enum>::name);
}
}  // namespace detail

template <class Body, class... Rest> void dispatch(Body&& body, bool flag, Rest... rest) {
  if (flag)
    dispatch([&](auto... tags) { body(std::true_type{}, tags...); }, rest...);
  else
    dispatch([&](auto... tags) { body(std::false_type{}, tags...); }, rest...);
}

template <class Body, class Enum, class... Rest, std::enable_if_t<std::is_enum_v<Enum>, int>>
void dispatch(Body&& body, Enum value, Rest... rest) {
  detail::dispatch_members(std::make_index_sequence<member_count<Enum>()>(), value, body, rest...);
}

}  // namespace na
