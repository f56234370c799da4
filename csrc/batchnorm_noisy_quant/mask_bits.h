// The straight-through mask's bits spread to bytes: kBitBytes.of[b] holds byte b as eight
// 0 / 1 bytes, bit i in byte i (one 8-byte copy per mask byte).
#pragma once
#include <cstdint>

namespace na {
namespace batchnorm_noisy_quant {

struct BitBytes {
  uint64_t of[256];
  BitBytes() {
    for (int b = 0; b < 256; ++b) {
      of[b] = 0;
      for (int i = 0; i < 8; ++i) of[b] |= static_cast<uint64_t>((b >> i) & 1) << (8 * i);
    }
  }
};
inline const BitBytes kBitBytes;

}  // namespace batchnorm_noisy_quant
}  // namespace na
