// The sm_80 warp-level instructions of fastcnn's GEMM core, emulated from the PTX ISA's definitions:
// ldmatrix (m8n8, x1/x2/x4, .trans), mma.sync (m16n8k16 f16/bf16 and m16n8k8 tf32, f32 accumulate),
// cvt.rna.tf32.f32 and cp.async.cg (16 bytes, zero fill). Fragment layouts, with g = lane / 4 and
// t = lane % 4 ("groupID" and "threadID_in_group" in the ISA's tables):
//   ldmatrix: lane 8i + j gives the address of row j of matrix i; register i of every lane receives
//             elements (g, 2t) and (g, 2t + 1) of matrix i (transposed: (2t, g) and (2t + 1, g)), the
//             lower column in the low 16 bits.
//   m16n8k16: A 16x16 row-major: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..);
//             B 16x8 column-major: b0 (k 2t..2t+1, n g), b1 (k 2t+8..2t+9, n g);
//             C/D 16x8 f32: c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1).
//   m16n8k8:  A 16x8: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); B 8x8: b0 (k t, n g),
//             b1 (k t+4, n g); C/D as m16n8k16. A tf32 operand register uses its upper 19 bits only.
// A product tile is computed exactly (double sums of exact products) and rounded to f32 once; the
// hardware's accumulation order and internal width are not modelled (results agree to f32 rounding).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "emu/scheduler.h"

namespace fastcnn {
namespace emu {
namespace {

void require_arch(int needed, const char* instruction) {
  const int arch = device_properties().arch;
  if (arch < needed) {
    fail(std::string(instruction) + " needs sm_" + std::to_string(needed) +
         " or newer; the emulated device is sm_" + std::to_string(arch) +
         " (a GPU of this kind would not run it)");
  }
}

uint16_t low16(uint32_t v) {
  return static_cast<uint16_t>(v & 0xffffu);
}
uint16_t high16(uint32_t v) {
  return static_cast<uint16_t>(v >> 16);
}

double b16_value(uint16_t bits, MmaType type) {
  if (type == MmaType::BF16) {
    c10::BFloat16 b(bits, c10::BFloat16::from_bits());
    return static_cast<double>(static_cast<float>(b));
  }
  c10::Half h(bits, c10::Half::from_bits());
  return static_cast<double>(static_cast<float>(h));
}

double tf32_value(uint32_t bits) {
  const uint32_t kept = bits & 0xffffe000u;
  float f;
  std::memcpy(&f, &kept, sizeof(f));
  return static_cast<double>(f);
}

// Shared-memory wavefronts of one 8-address phase of ldmatrix (one 8x8 matrix, eight 16-byte rows):
// 32 banks of 4 bytes; distinct words in one bank take one wavefront each, the same word is broadcast.
int phase_wavefronts(const uint32_t* row_addresses) {
  uint32_t words[32];
  for (int r = 0; r < 8; ++r) {
    for (int w = 0; w < 4; ++w) words[4 * r + w] = row_addresses[r] / 4 + static_cast<uint32_t>(w);
  }
  std::sort(words, words + 32);
  const int distinct = static_cast<int>(std::unique(words, words + 32) - words);
  int per_bank[32] = {};
  int most = 1;
  for (int i = 0; i < distinct; ++i) most = std::max(most, ++per_bank[words[i] % 32]);
  return most;
}

template <int Num, bool Trans>
void complete_ldmatrix(LaneSlot* slots, unsigned) {
  uint16_t rows[4][8][8];
  for (int m = 0; m < Num; ++m) {
    for (int r = 0; r < 8; ++r) {
      const int lane = 8 * m + r;
      const uint32_t addr = static_cast<uint32_t>(slots[lane].in[0]);
      if (addr % 16 != 0) {
        fail("ldmatrix: lane " + std::to_string(lane) + " gave shared address " + std::to_string(addr) +
                 ", which is not 16-byte aligned",
             lane);
      }
      std::memcpy(rows[m][r], shared_pointer(addr, 16, "ldmatrix", lane), 16);
    }
  }
  if (LaunchCounters* c = g_counters) {
    ++c->ldmatrix;
    c->ldmatrix_bytes += 128 * Num;
    for (int m = 0; m < Num; ++m) {
      uint32_t addresses[8];
      for (int r = 0; r < 8; ++r) addresses[r] = static_cast<uint32_t>(slots[8 * m + r].in[0]);
      const int wavefronts = phase_wavefronts(addresses);
      c->ldmatrix_wavefronts += static_cast<uint64_t>(wavefronts);
      c->bank_conflicts += static_cast<uint64_t>(wavefronts - 1);
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int m = 0; m < Num; ++m) {
      uint16_t lo, hi;
      if (Trans) {
        lo = rows[m][2 * t][g];
        hi = rows[m][2 * t + 1][g];
      } else {
        lo = rows[m][g][2 * t];
        hi = rows[m][g][2 * t + 1];
      }
      slots[lane].out[m] = static_cast<uint64_t>(lo) | (static_cast<uint64_t>(hi) << 16);
    }
  }
}

template <MmaType Type>
void complete_mma(LaneSlot* slots, unsigned) {
  constexpr int K = Type == MmaType::TF32 ? 8 : 16;
  double a[16][16], b[16][8], c[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const LaneSlot& s = slots[lane];
    uint32_t ar[4], br[2];
    float cr[4];
    for (int i = 0; i < 4; ++i) ar[i] = static_cast<uint32_t>(s.in[i]);
    br[0] = static_cast<uint32_t>(s.in[4]);
    br[1] = static_cast<uint32_t>(s.in[5]);
    for (int i = 0; i < 4; ++i) {
      const uint32_t bits = static_cast<uint32_t>(s.in[6 + i]);
      std::memcpy(&cr[i], &bits, sizeof(float));
    }
    if constexpr (Type == MmaType::TF32) {
      a[g][t] = tf32_value(ar[0]);
      a[g + 8][t] = tf32_value(ar[1]);
      a[g][t + 4] = tf32_value(ar[2]);
      a[g + 8][t + 4] = tf32_value(ar[3]);
      b[t][g] = tf32_value(br[0]);
      b[t + 4][g] = tf32_value(br[1]);
    } else {
      const int rows[4] = {g, g + 8, g, g + 8};
      const int cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
      for (int i = 0; i < 4; ++i) {
        a[rows[i]][cols[i]] = b16_value(low16(ar[i]), Type);
        a[rows[i]][cols[i] + 1] = b16_value(high16(ar[i]), Type);
      }
      b[2 * t][g] = b16_value(low16(br[0]), Type);
      b[2 * t + 1][g] = b16_value(high16(br[0]), Type);
      b[2 * t + 8][g] = b16_value(low16(br[1]), Type);
      b[2 * t + 9][g] = b16_value(high16(br[1]), Type);
    }
    c[g][2 * t] = cr[0];
    c[g][2 * t + 1] = cr[1];
    c[g + 8][2 * t] = cr[2];
    c[g + 8][2 * t + 1] = cr[3];
  }
  if (LaunchCounters* counters = g_counters) {
    // A zero operand is, with non-zero inputs, padding or a tile tail that the loaders zero-filled.
    uint64_t useful = 0;
    for (int k = 0; k < K; ++k) {
      uint64_t rows_nonzero = 0, cols_nonzero = 0;
      for (int m = 0; m < 16; ++m) rows_nonzero += a[m][k] != 0.0;
      for (int n = 0; n < 8; ++n) cols_nonzero += b[k][n] != 0.0;
      useful += rows_nonzero * cols_nonzero;
    }
    ++counters->mma;
    counters->macs += 16 * 8 * K;
    counters->useful_macs += useful;
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const int rows[4] = {g, g, g + 8, g + 8};
    const int cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
      double sum = c[rows[i]][cols[i]];
      for (int k = 0; k < K; ++k) sum += a[rows[i]][k] * b[k][cols[i]];
      const float d = static_cast<float>(sum);
      uint32_t bits;
      std::memcpy(&bits, &d, sizeof(bits));
      slots[lane].out[i] = bits;
    }
  }
}

}  // namespace

void ldmatrix(uint32_t* out, int num, bool trans, uint32_t shared_addr, Site site) {
  require_arch(75, "ldmatrix");
  LaneSlot in{};
  in.in[0] = shared_addr;
  CollectiveFn fn = nullptr;
  switch (num * 2 + (trans ? 1 : 0)) {
    case 2:
      fn = complete_ldmatrix<1, false>;
      break;
    case 3:
      fn = complete_ldmatrix<1, true>;
      break;
    case 4:
      fn = complete_ldmatrix<2, false>;
      break;
    case 5:
      fn = complete_ldmatrix<2, true>;
      break;
    case 8:
      fn = complete_ldmatrix<4, false>;
      break;
    case 9:
      fn = complete_ldmatrix<4, true>;
      break;
    default:
      fail("ldmatrix: .x" + std::to_string(num) + " is not a valid matrix count");
  }
  const int variant = (num == 4 ? 2 : num - 1) * 2 + (trans ? 1 : 0);
  LaneSlot& r = warp_collective(static_cast<int>(Collective::Ldmatrix) + variant, 0xffffffffu, site, in, fn);
  for (int m = 0; m < num; ++m) out[m] = static_cast<uint32_t>(r.out[m]);
}

void mma(MmaType type, float* d, const uint32_t* a, uint32_t b0, uint32_t b1, Site site) {
  require_arch(80, type == MmaType::TF32 ? "mma.m16n8k8.tf32" : "mma.m16n8k16");
  LaneSlot in{};
  for (int i = 0; i < 4; ++i) in.in[i] = a[i];
  in.in[4] = b0;
  in.in[5] = b1;
  for (int i = 0; i < 4; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &d[i], sizeof(bits));
    in.in[6 + i] = bits;
  }
  CollectiveFn fn = type == MmaType::F16    ? complete_mma<MmaType::F16>
                    : type == MmaType::BF16 ? complete_mma<MmaType::BF16>
                                            : complete_mma<MmaType::TF32>;
  LaneSlot& r = warp_collective(static_cast<int>(Collective::MmaF16) + static_cast<int>(type), 0xffffffffu,
                                site, in, fn);
  for (int i = 0; i < 4; ++i) {
    const uint32_t bits = static_cast<uint32_t>(r.out[i]);
    std::memcpy(&d[i], &bits, sizeof(float));
  }
}

uint32_t cvt_rna_tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7f800000u) == 0x7f800000u) {
    // Inf stays Inf; a NaN stays a NaN even if its payload lived in the dropped bits.
    return (u & 0x007fffffu) != 0 ? 0x7fffffffu & 0xffffe000u : u;
  }
  // Round to nearest, ties away from zero, on the magnitude: add half of the dropped range, then drop it.
  u += 0x1000u;
  return u & 0xffffe000u;
}

void cp_async(void* shared_dst, const void* global_src, int src_bytes, Site site) {
  require_arch(80, "cp.async");
  const auto dst_addr = reinterpret_cast<uintptr_t>(shared_dst);
  const auto src_addr = reinterpret_cast<uintptr_t>(global_src);
  if (dst_addr % 16 != 0 || src_addr % 16 != 0) {
    fail("cp.async.cg of 16 bytes needs 16-byte aligned addresses, got shared " +
         std::to_string(dst_addr % 16) + " and global " + std::to_string(src_addr % 16) +
         " bytes past alignment");
  }
  if (!in_dynamic_shared(shared_dst, 16)) fail("cp.async destination is outside the block's shared memory");
  if (src_bytes < 0 || src_bytes > 16) fail("cp.async src-size must be in [0, 16]");
  (void)site;
  auto* dst = static_cast<unsigned char*>(shared_dst);
  std::memset(dst, 0xff, 16);
  push_async_copy(AsyncCopy{dst, static_cast<const unsigned char*>(global_src), src_bytes});
}

void cp_async_commit(Site) {
  commit_async_copies();
}

void cp_async_wait(int pending_groups, Site site) {
  if (site_ablated(site)) return;
  wait_async_copies(pending_groups);
}

}  // namespace emu
}  // namespace fastcnn
