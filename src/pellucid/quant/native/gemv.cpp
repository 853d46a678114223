// Matrix-vector products of ggml block-quantized weights with a few rows of activations (decode: 1-8 rows),
// as llama.cpp's CPU backend computes them. For the 32-weight formats (Q4_0 ... Q8_0) each row of x is
// quantized to int8 in blocks of 32 (one float scale per block, like ggml's Q8_0/Q8_1), and each block's dot
// product is an integer dot product (AVX512-VNNI `vpdpbusd`: 32 uint8 x int8 products summed into 8 int32 lanes
// in one instruction), scaled by the weight block's scale and the x block's scale, plus the block's min times
// the x block's sum. For the K-quants (Q4_K, Q5_K, Q6_K) x is quantized per 256 values (ggml's Q8_K) and a whole
// super-block's dot product accumulates in integers, its groups' 6/8-bit scales applied by `vpdpwssd`, before it
// meets the float scales once (see Q45K / Q6K below): that is what lets these formats stream at memory speed.
//
// Why: inductor's generated loops (quant/kernels.py) unpack every weight to float32 and do one FMA per weight
// per row; here a block of 32 weights costs a handful of 256-bit instructions per row, and the unpacking is
// shared by all the rows of a batched decode step. The result differs from the float32 product by the int8
// rounding of x (relative error ~1e-3 of a row's magnitude), exactly as llama.cpp's does.
//
// The op `pellucid::gemv(Tensor x, str formats, Tensor[] fields) -> Tensor`: x (M, K) float32, M <= 8; one
// format per matrix (comma-separated), then each matrix's fields (the PackedWeight's tensors: strided views of
// the file's blocks, see packed.py) one after another. Returns (M, N_1 + N_2 + ...) float32, the matrices'
// products side by side: q/k/v (or gate/up) in one call share x's quantization and one parallel region.
// Built at first use by quant/native/__init__.py.

#include <Python.h>  // only to let other Python threads run while a product runs (see NoGil)

#include <ATen/core/Tensor.h>  // not ATen/ATen.h: the lighter headers save ~2.5 s of every build
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <immintrin.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

namespace {

constexpr int QK = 32;  // weights (and x values) per block

// x quantized, in the two forms llama.cpp uses. For the 32-weight formats (ggml's Q8_0/Q8_1): per row, K int8
// values, and per 32-block its scale d and d * sum(q) (for the min terms). For the K-quants (ggml's Q8_K): per
// row, K int8 values with one scale per 256-block and the sum of each 16 values, so a whole super-block's dot
// product accumulates in integers and meets a float once.
struct QuantX {
  std::vector<int8_t> q;
  std::vector<float> d, s;
  std::vector<float> st;  // s transposed, (G, 8): block g's sums of all rows in one vector (rows >= M are 0)
  int64_t K = 0, G = 0;
  std::vector<int8_t> qk;  // Q8_K: (M, K)
  std::vector<float> dk;  // (M, K / 256)
  std::vector<int16_t> bsum;  // (M, K / 16)
};

inline float hsum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

inline float hmax(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// Round-to-nearest-even int8 quantization of each 32-block: d = max|x| / 127 (ggml's quantize_row_q8_1).
void quantize_x(const float* x, int64_t M, int64_t K, QuantX& out) {
  out.K = K;
  out.G = K / QK;
  out.q.resize(M * K);
  out.d.resize(M * out.G);
  out.s.resize(M * out.G);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t r = 0; r < M; ++r) {
    for (int64_t g = 0; g < out.G; ++g) {
      const float* v = x + r * K + g * QK;
      __m256 a0 = _mm256_loadu_ps(v), a1 = _mm256_loadu_ps(v + 8), a2 = _mm256_loadu_ps(v + 16),
             a3 = _mm256_loadu_ps(v + 24);
      __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, a0), _mm256_andnot_ps(sign, a1)),
                               _mm256_max_ps(_mm256_andnot_ps(sign, a2), _mm256_andnot_ps(sign, a3)));
      const float amax = hmax(m);
      const float d = amax / 127.0f;
      const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
      __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(a0, id)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(a1, id)),
              i2 = _mm256_cvtps_epi32(_mm256_mul_ps(a2, id)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(a3, id));
      __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
      s4 = _mm_hadd_epi32(s4, s4);
      s4 = _mm_hadd_epi32(s4, s4);
      // int32 -> int8 with saturation; packs work within 128-bit lanes, so restore the order after.
      __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
      p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.q.data() + r * K + g * QK), p);
      out.d[r * out.G + g] = d;
      out.s[r * out.G + g] = d * static_cast<float>(_mm_cvtsi128_si32(s4));
    }
  }
  out.st.assign(out.G * 8, 0.0f);
  for (int64_t r = 0; r < M && r < 8; ++r)
    for (int64_t g = 0; g < out.G; ++g) out.st[g * 8 + r] = out.s[r * out.G + g];
}

// ggml's quantize_row_q8_K_ref: per 256-block, the value of largest magnitude (the first, on ties) maps to
// -127, everything rounded to nearest (even) with that scale; plus the sum of each 16 quantized values.
void quantize_x_k(const float* x, int64_t M, int64_t K, QuantX& out) {
  const int64_t S = K / 256;
  out.qk.resize(M * K);
  out.dk.resize(M * S);
  out.bsum.resize(M * K / 16);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t r = 0; r < M; ++r) {
    for (int64_t s = 0; s < S; ++s) {
      const float* v = x + r * K + s * 256;
      int8_t* q = out.qk.data() + r * K + s * 256;
      __m256 m = _mm256_setzero_ps();
      for (int j = 0; j < 256; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(v + j)));
      const float amax = hmax(m);
      int16_t* bs = out.bsum.data() + r * (K / 16) + s * 16;
      if (amax == 0.0f) {
        std::memset(q, 0, 256);
        std::memset(bs, 0, 16 * sizeof(int16_t));
        out.dk[r * S + s] = 0.0f;
        continue;
      }
      int first = 0;
      while (std::fabs(v[first]) != amax) ++first;
      const float iscale = -127.0f / v[first];
      const __m256 is = _mm256_set1_ps(iscale);
      for (int j = 0; j < 256; j += 32) {
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + j), is));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + j + 8), is));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + j + 16), is));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + j + 24), is));
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + j), p);
      }
      for (int j = 0; j < 16; ++j) {
        int sum = 0;
        for (int i = 0; i < 16; ++i) sum += q[j * 16 + i];
        bs[j] = static_cast<int16_t>(sum);
      }
      out.dk[r * S + s] = 1.0f / iscale;
    }
  }
}

inline float f16(const at::Half* p) { return _cvtsh_ss(*reinterpret_cast<const uint16_t*>(p)); }

inline __m256i nibbles(const uint8_t* p) {  // 16 bytes -> 32 values: low nibbles (weights 0-15), high (16-31)
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m256i both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// Each format: `block(n, g, w, scale, min)` gives block g of row n as 32 uint8 (kSigned: int8) values in x's
// order, the scale of each of its 8 int32 lanes (a block of 16-weight groups has two), and the block's min
// (w = scale * q + min). kHasMin false: min is 0 and the sums are not read.

struct Q4_0 {
  static constexpr bool kSigned = false, kHasMin = true;
  const uint8_t* qs; int64_t qn, qg;
  const at::Half* d; int64_t dn, dg;
  __attribute__((always_inline)) inline void block(int64_t n, int64_t g, __m256i& w, __m256& scale, float& min) const {
    w = nibbles(qs + n * qn + g * qg);
    const float dw = f16(d + n * dn + g * dg);
    scale = _mm256_set1_ps(dw);
    min = -8.0f * dw;
  }
};

struct Q4_1 {
  static constexpr bool kSigned = false, kHasMin = true;
  const uint8_t* qs; int64_t qn, qg;
  const at::Half* d; int64_t dn, dg;
  const at::Half* m; int64_t mn, mg;
  __attribute__((always_inline)) inline void block(int64_t n, int64_t g, __m256i& w, __m256& scale, float& min) const {
    w = nibbles(qs + n * qn + g * qg);
    scale = _mm256_set1_ps(f16(d + n * dn + g * dg));
    min = f16(m + n * mn + g * mg);
  }
};

struct Q5_0 {
  static constexpr bool kSigned = false, kHasMin = true;
  const uint8_t* qs; int64_t qn, qg;
  const int32_t* qh; int64_t hn, hg;
  const at::Half* d; int64_t dn, dg;
  __attribute__((always_inline)) inline void block(int64_t n, int64_t g, __m256i& w, __m256& scale, float& min) const {
    const __mmask32 bits = static_cast<__mmask32>(qh[n * hn + g * hg]);  // bit j: weight j's 5th bit
    w = _mm256_or_si256(nibbles(qs + n * qn + g * qg), _mm256_maskz_set1_epi8(bits, 0x10));
    const float dw = f16(d + n * dn + g * dg);
    scale = _mm256_set1_ps(dw);
    min = -16.0f * dw;
  }
};

struct Q5_1 {
  static constexpr bool kSigned = false, kHasMin = true;
  const uint8_t* qs; int64_t qn, qg;
  const int32_t* qh; int64_t hn, hg;
  const at::Half* d; int64_t dn, dg;
  const at::Half* m; int64_t mn, mg;
  __attribute__((always_inline)) inline void block(int64_t n, int64_t g, __m256i& w, __m256& scale, float& min) const {
    const __mmask32 bits = static_cast<__mmask32>(qh[n * hn + g * hg]);
    w = _mm256_or_si256(nibbles(qs + n * qn + g * qg), _mm256_maskz_set1_epi8(bits, 0x10));
    scale = _mm256_set1_ps(f16(d + n * dn + g * dg));
    min = f16(m + n * mn + g * mg);
  }
};

struct Q8_0 {
  static constexpr bool kSigned = true, kHasMin = false;
  const int8_t* qs; int64_t qn, qg;
  const at::Half* d; int64_t dn, dg;
  __attribute__((always_inline)) inline void block(int64_t n, int64_t g, __m256i& w, __m256& scale, float& min) const {
    w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + n * qn + g * qg));
    scale = _mm256_set1_ps(f16(d + n * dn + g * dg));
    min = 0.0f;
  }
};

// MXFP4 (block_mxfp4 {u8 e; u8 qs[16]}): each nibble indexes the 16 E2M1 values doubled (kvalues_mxfp4), which
// one vpshufb turns into int8 weights, and the block's scale is the E8M0 byte as 2^(e - 127) / 2: what llama.cpp's
// ggml_vec_dot_mxfp4_q8_0 computes (an integer dot product with x's int8 block, times both scales).
inline float e8m0_half(uint8_t e) {  // ggml_e8m0_to_fp32_half: e = 0, 1 are the subnormals 2^-128, 2^-127
  const uint32_t bits = e < 2 ? 0x00200000u << e : static_cast<uint32_t>(e - 1) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct MXFP4 {
  static constexpr bool kSigned = true, kHasMin = false;
  const uint8_t* qs; int64_t qn, qg;
  const uint8_t* e; int64_t en, eg;
  __attribute__((always_inline)) inline void block(int64_t n, int64_t g, __m256i& w, __m256& scale, float& min) const {
    const __m256i levels = _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
                                            0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
    w = _mm256_shuffle_epi8(levels, nibbles(qs + n * qn + g * qg));
    scale = _mm256_set1_ps(e8m0_half(e[n * en + g * eg]));
    min = 0.0f;
  }
};

// The K-quants, a 256-weight super-block at a time against x's Q8_K form (llama.cpp's ggml_vec_dot_q*_K_q8_K):
// each 32 weights meet x in two integer instructions per row (vpmaddubsw: uint8 weight x int8 x, pairs summed to
// int16; vpdpwssd: times the group's integer scale, summed into int32 lanes), and the super-block's integer total
// meets the float scales once. Each kernel is `row<M>(x, n, out, ld)`: matrix row n times the M rows of x.

inline __m256i bytes_set1(int v) { return _mm256_set1_epi8(static_cast<char>(v)); }

// The sums of x's 16-value groups, paired into the 8 groups of 32 (int16): what the mins multiply.
inline __m128i pair_sums(const int16_t* bs) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bs));
  return _mm_hadd_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

inline int32_t hsum_epi32(__m128i v) {
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(v);
}

// Scale lanes: `sc` holds 8 int16 scales in each 128-bit half; shuffle_lanes(sc, a, b) is a vector whose low half
// is 8 copies of scale a and whose high half is 8 copies of scale b (vpshufb: one instruction, no broadcasts from
// memory in the inner loop).
inline __m256i shuffle_lanes(__m256i sc, int a, int b) {
  const __m256i mask = _mm256_set_epi8(2 * b + 1, 2 * b, 2 * b + 1, 2 * b, 2 * b + 1, 2 * b, 2 * b + 1, 2 * b,
                                       2 * b + 1, 2 * b, 2 * b + 1, 2 * b, 2 * b + 1, 2 * b, 2 * b + 1, 2 * b,
                                       2 * a + 1, 2 * a, 2 * a + 1, 2 * a, 2 * a + 1, 2 * a, 2 * a + 1, 2 * a,
                                       2 * a + 1, 2 * a, 2 * a + 1, 2 * a, 2 * a + 1, 2 * a, 2 * a + 1, 2 * a);
  return _mm256_shuffle_epi8(sc, mask);
}

inline float hsum128(__m128 x) {
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// Q4_K and Q5_K: 8 groups of 32; bytes 32 i..32 i + 31 of qs hold group 2 i (low nibbles) and 2 i + 1 (high);
// Q5_K's fifth bits: bit k of qh[l] for weight 32 k + l. w = d * sc * q - dmin * mn.
// The integer sums go into their accumulator by a plain add (vpmaddwd then vpaddd, as llama.cpp does), not
// vpdpwssd: its 5-cycle latency on one accumulator made a super-block wait 40 cycles for M = 1.
template <bool kFifth>
struct Q45K {
  const uint8_t* qs; int64_t qn, qsb, qi;  // (N, S, 4, 32)
  const uint8_t* qh; int64_t hn, hs;  // (N, S, 32), Q5_K only
  const at::Half* d; int64_t dn, ds;
  const at::Half* dmin; int64_t mnn, mns;
  const uint8_t* sc; int64_t cn, cs;  // (N, S, 8): group 2 i + j's scale at 2 i + j
  const uint8_t* mn; int64_t on, os;

  template <int M>
  void row(const QuantX& x, int64_t n, float* out, int64_t ld) const {
    const int64_t K = x.K, S = K / 256;
    const __m256i m4 = bytes_set1(0x0F), one = bytes_set1(1);
    __m256 acc[M];
    __m128 accm[M];
    for (int r = 0; r < M; ++r) acc[r] = _mm256_setzero_ps(), accm[r] = _mm_setzero_ps();
    for (int64_t s = 0; s < S; ++s) {
      const __m128i sc8 = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc + n * cn + s * cs)));
      const __m256i scales = _mm256_broadcastsi128_si256(sc8);
      const __m128i mins16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn + n * on + s * os)));
      const uint8_t* q = qs + n * qn + s * qsb;
      __m256i hbits = _mm256_setzero_si256();
      if (kFifth) hbits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh + n * hn + s * hs));
      __m256i sumi[M];
      for (int r = 0; r < M; ++r) sumi[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i * qi));
        __m256i lo = _mm256_and_si256(b, m4), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
        if (kFifth) {
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * i), one), 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * i + 1), one), 4));
        }
        const __m256i slo = shuffle_lanes(scales, 2 * i, 2 * i), shi = shuffle_lanes(scales, 2 * i + 1, 2 * i + 1);
#pragma GCC unroll 8
        for (int r = 0; r < M; ++r) {
          const int8_t* xq = x.qk.data() + r * K + s * 256 + i * 64;
          const __m256i xl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
          const __m256i xh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32));
          const __m256i pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xl), slo);
          const __m256i ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xh), shi);
          sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(pl, ph));
        }
      }
      const float dw = f16(d + n * dn + s * ds), mw = f16(dmin + n * mnn + s * mns);
      for (int r = 0; r < M; ++r) {
        const float dx = x.dk[r * S + s];
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * dx), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        const __m128i m = _mm_madd_epi16(mins16, pair_sums(x.bsum.data() + r * (K / 16) + s * 16));
        accm[r] = _mm_fmadd_ps(_mm_set1_ps(mw * dx), _mm_cvtepi32_ps(m), accm[r]);
      }
    }
    for (int r = 0; r < M; ++r) out[r * ld + n] = hsum(acc[r]) - hsum128(accm[r]);
  }

  // Row n's K weights as float32 (prefill's GEMMs): w = d * sc * q - dmin * mn, group by group.
  void unpack(int64_t n, int64_t K, float* out) const {
    for (int64_t s = 0; s < K / 256; ++s) {
      const float dw = f16(d + n * dn + s * ds), mw = f16(dmin + n * mnn + s * mns);
      const uint8_t* q = qs + n * qn + s * qsb;
      const uint8_t* h = kFifth ? qh + n * hn + s * hs : nullptr;
      for (int j = 0; j < 8; ++j) {  // group j: byte run j / 2, low nibbles for even j, high for odd
        const __m512 scale = _mm512_set1_ps(dw * sc[n * cn + s * cs + j]);
        const __m512 min = _mm512_set1_ps(mw * mn[n * on + s * os + j]);
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + (j / 2) * qi));
        __m256i v = _mm256_and_si256((j % 2) ? _mm256_srli_epi16(b, 4) : b, bytes_set1(15));
        if (kFifth) {
          const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h));
          v = _mm256_or_si256(v, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, j), bytes_set1(1)), 4));
        }
        float* o = out + s * 256 + j * 32;
        for (int half = 0; half < 2; ++half) {
          const __m128i v16 = half ? _mm256_extracti128_si256(v, 1) : _mm256_castsi256_si128(v);
          const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v16));
          _mm512_storeu_ps(o + 16 * half, _mm512_fmsub_ps(scale, f, min));
        }
      }
    }
  }
};

// IQ4_XS against x's Q8_K form, a super-block at a time like the K-quants: group j (32 weights) is 16 bytes of
// nibbles (low: its weights 0-15, high: 16-31) indexing the 16 non-uniform levels, which one vpshufb turns into
// int8 weights; w = d * ls_j * level with ls_j = scale - 32 unpacked at load. The signed weights meet signed x
// through vpmaddubsw on |w| and x * sign(w), then the group's scale by vpmaddwd, summed in integers.
struct IQ4XSK {
  const uint8_t* qs; int64_t qn, qsb;  // (N, S, 8, 16), contiguous within a super-block
  const at::Half* d; int64_t dn, ds;
  const int8_t* ls; int64_t ln, lsb;  // (N, S, 8)

  template <int M>
  void row(const QuantX& x, int64_t n, float* out, int64_t ld) const {
    const int64_t K = x.K, S = K / 256;
    const __m256i levels = _mm256_setr_epi8(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
                                            -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);
    __m256 acc[M];
    for (int r = 0; r < M; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t s = 0; s < S; ++s) {
      const __m128i sc16 = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ls + n * ln + s * lsb)));
      const __m256i scales = _mm256_broadcastsi128_si256(sc16);
      const uint8_t* q = qs + n * qn + s * qsb;
      __m256i sumi[M];
      for (int r = 0; r < M; ++r) sumi[r] = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const __m256i w = _mm256_shuffle_epi8(levels, nibbles(q + 16 * j));
        const __m256i aw = _mm256_abs_epi8(w);
        const __m256i scv = shuffle_lanes(scales, j, j);
#pragma GCC unroll 8
        for (int r = 0; r < M; ++r) {
          const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qk.data() + r * K + s * 256 + j * 32));
          const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xq, w));
          sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, scv));
        }
      }
      const float dw = f16(d + n * dn + s * ds);
      for (int r = 0; r < M; ++r)
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x.dk[r * S + s]), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
    }
    for (int r = 0; r < M; ++r) out[r * ld + n] = hsum(acc[r]);
  }

  // Row n's K weights as float32: w = d * ls_j * level.
  void unpack(int64_t n, int64_t K, float* out) const {
    static const float kLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    for (int64_t s = 0; s < K / 256; ++s) {
      const float dw = f16(d + n * dn + s * ds);
      const uint8_t* q = qs + n * qn + s * qsb;
      for (int j = 0; j < 8; ++j) {
        const float scale = dw * static_cast<float>(ls[n * ln + s * lsb + j]);
        float* o = out + s * 256 + j * 32;
        for (int l = 0; l < 16; ++l) {
          o[l] = scale * kLevels[q[16 * j + l] & 15];
          o[l + 16] = scale * kLevels[q[16 * j + l] >> 4];
        }
      }
    }
  }
};

// Q4_K repacked for decode (llama.cpp's CPU backend does the same, "repack"): 8 rows interleaved, so a 256-bit
// register holds 4 bytes of each of 8 rows and one vpdpbusd against 4 of x's values broadcast gives 8 rows'
// partial sums at once. Per 8 rows and super-block the block is 1184 bytes (8 x 148, the 144 of Q4_K plus
// the scales and mins unpacked to a byte each):
//   0: d[8] f16   16: dmin[8] f16   32: sc[j][r] (8 groups x 8 rows)   96: mn[j][r]
//   160: qs[i][c][r][4]: 32-byte run i (groups 2i low nibbles, 2i + 1 high) of row r, bytes 4c..4c+3.
// One stream per 8 rows (the hardware prefetcher follows it), no per-row horizontal sums, and the scales,
// mins and float work shared by 8 rows: ~40 instructions per row and super-block instead of ~70.
constexpr int64_t kQ4KX8Bytes = 1184;

struct Q4KX8 {
  const uint8_t* base;  // (N / 8, S, 1184)
  int64_t gn, gs;       // strides of a row group and of a super-block

  template <int MM>
  void group(const QuantX& x, int64_t R, int r0, float* out, int64_t ld) const {
    const int64_t K = x.K, S = K / 256;
    const __m256i m4 = bytes_set1(0x0F);
    __m256 acc[MM];
    for (int m = 0; m < MM; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t s = 0; s < S; ++s) {
      const uint8_t* b = base + R * gn + s * gs;
      const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
      const __m256 m8 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16)));
      __m256i sumi[MM];
      for (int m = 0; m < MM; ++m) sumi[m] = _mm256_setzero_si256();
      for (int i = 0; i < 4; ++i) {
        __m256i tlo[MM], thi[MM];
        for (int m = 0; m < MM; ++m) tlo[m] = _mm256_setzero_si256(), thi[m] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 160 + i * 256 + c * 32));
          const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
#pragma GCC unroll 2
          for (int m = 0; m < MM; ++m) {
            const int8_t* xq = x.qk.data() + (r0 + m) * K + s * 256 + i * 64 + 4 * c;
            int32_t xl, xh;
            std::memcpy(&xl, xq, 4);
            std::memcpy(&xh, xq + 32, 4);
            tlo[m] = _mm256_dpbusd_epi32(tlo[m], lo, _mm256_set1_epi32(xl));
            thi[m] = _mm256_dpbusd_epi32(thi[m], hi, _mm256_set1_epi32(xh));
          }
        }
        const __m256i slo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 32 + 16 * i)));
        const __m256i shi = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 40 + 16 * i)));
        for (int m = 0; m < MM; ++m)
          sumi[m] = _mm256_add_epi32(sumi[m], _mm256_add_epi32(_mm256_mullo_epi32(tlo[m], slo),
                                                               _mm256_mullo_epi32(thi[m], shi)));
      }
      for (int m = 0; m < MM; ++m) {
        const int16_t* bs = x.bsum.data() + (r0 + m) * (K / 16) + s * 16;
        __m256i mins = _mm256_setzero_si256();
        for (int j = 0; j < 8; ++j) {
          const __m256i mn = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 96 + 8 * j)));
          mins = _mm256_add_epi32(mins, _mm256_mullo_epi32(mn, _mm256_set1_epi32(bs[2 * j] + bs[2 * j + 1])));
        }
        const __m256 dx = _mm256_set1_ps(x.dk[(r0 + m) * S + s]);
        acc[m] = _mm256_fmadd_ps(_mm256_mul_ps(d8, dx), _mm256_cvtepi32_ps(sumi[m]), acc[m]);
        acc[m] = _mm256_fnmadd_ps(_mm256_mul_ps(m8, dx), _mm256_cvtepi32_ps(mins), acc[m]);
      }
    }
    for (int m = 0; m < MM; ++m) _mm256_storeu_ps(out + (r0 + m) * ld + R * 8, acc[m]);
  }

  // Rows [n0, n1) (multiples of 8) times the M rows of x; x's rows go two at a time (registers), the group's
  // bytes staying in L1 between the pairs.
  void run(const QuantX& x, int64_t M, int64_t n0, int64_t n1, float* out, int64_t ld) const {
    TORCH_CHECK(n0 % 8 == 0 && n1 % 8 == 0, "pellucid::gemv: a repacked matrix is split at rows ", n0, "-", n1);
    for (int64_t R = n0 / 8; R < n1 / 8; ++R) {
      int r = 0;
      for (; r + 2 <= M; r += 2) group<2>(x, R, r, out, ld);
      if (r < M) group<1>(x, R, r, out, ld);
    }
  }

  // Rows 8R..8R+7 as float32 into out (8 rows, ld K): w = d * sc * q - dmin * mn.
  void unpack8(int64_t R, int64_t K, float* out) const {
    for (int64_t s = 0; s < K / 256; ++s) {
      const uint8_t* b = base + R * gn + s * gs;
      alignas(32) float d[8], dm[8];
      _mm256_store_ps(d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b))));
      _mm256_store_ps(dm, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16))));
      for (int i = 0; i < 4; ++i) {
        for (int r = 0; r < 8; ++r) {
          const __m128 slo = _mm_set1_ps(d[r] * b[32 + 16 * i + r]), shi = _mm_set1_ps(d[r] * b[40 + 16 * i + r]);
          const __m128 mlo = _mm_set1_ps(dm[r] * b[96 + 16 * i + r]), mhi = _mm_set1_ps(dm[r] * b[104 + 16 * i + r]);
          float* o = out + r * K + s * 256 + i * 64;
          for (int c = 0; c < 8; ++c) {
            int32_t raw;
            std::memcpy(&raw, b + 160 + i * 256 + c * 32 + r * 4, 4);
            const __m128i q = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(raw));
            const __m128i qlo = _mm_and_si128(q, _mm_set1_epi32(15)), qhi = _mm_srli_epi32(q, 4);
            _mm_storeu_ps(o + 4 * c, _mm_fmsub_ps(slo, _mm_cvtepi32_ps(qlo), mlo));
            _mm_storeu_ps(o + 32 + 4 * c, _mm_fmsub_ps(shi, _mm_cvtepi32_ps(qhi), mhi));
          }
        }
      }
    }
  }
};

// 4 fifth bits per 32-bit lane (bit t: byte t's weight) -> 0x10 in each byte whose bit is set.
inline __m256i fifth_bits(__m256i nibble) {
  auto pattern = [](int t) {
    int v = 0;
    for (int b = 0; b < 4; ++b) v |= ((t >> b) & 1) << (8 * b + 4);
    return v;
  };
  const __m256i lo = _mm256_setr_epi32(pattern(0), pattern(1), pattern(2), pattern(3), pattern(4), pattern(5),
                                       pattern(6), pattern(7));
  const __m256i hi = _mm256_setr_epi32(pattern(8), pattern(9), pattern(10), pattern(11), pattern(12), pattern(13),
                                       pattern(14), pattern(15));
  return _mm256_permutex2var_epi32(lo, nibble, hi);
}

// Q4_0, Q4_1, Q5_0 and Q5_1 repacked the same way: per 8 rows and 32-weight block,
//   0: d[8] f16   [m[8] f16: Q4_1, Q5_1]   [qh[8] u32, the fifth bits: Q5_0, Q5_1]
//   then qs[c][r][4]: bytes 4c..4c+3 of row r's 16 (low nibbles: weights 4c..4c+3, high: 16 + 4c..)
// (144, 160, 176, 192 bytes). One vpdpbusd per 4 bytes of x gives 8 rows' sums; w = d * (q - 8 or 16)
// (Q4_0, Q5_0) or d * q + m (Q4_1, Q5_1) is applied once per block for 8 rows. A fifth bit goes into its byte
// by one vpermt2d: the 4 bits of a lane index a table of the 16 patterns of 0x00/0x10 bytes.
// MXFP4 (kMx) the same way, with its 8 rows' E8M0 bytes in place of the halves (136 bytes, as the file's 8 x 17):
// a nibble becomes its E2M1 level doubled plus 12 (0..24, unsigned for vpdpbusd) by one vpshufb, and the 12 is
// taken out through x's block sums as Q4_0's 8 is: w = d * (level + 12 - 12), d = 2^(e - 127) / 2.
inline __m256i mx_levels_plus_12() {
  return _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
                          12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
}

inline __m256 e8m0_half8(const uint8_t* e) {  // 8 E8M0 bytes -> 8 floats, as e8m0_half
  const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(e)));
  const __m256i sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), v);
  const __m256i norm = _mm256_slli_epi32(_mm256_sub_epi32(v, _mm256_set1_epi32(1)), 23);
  const __m256i small = _mm256_cmpgt_epi32(_mm256_set1_epi32(2), v);
  return _mm256_castsi256_ps(_mm256_blendv_epi8(norm, sub, small));
}

template <bool kMin, bool kFifth = false, bool kMx = false>
struct Q4X8 {
  static constexpr int64_t kQh = kMx ? 8 : kMin ? 32 : 16, kQs = kQh + (kFifth ? 32 : 0), kBytes = kQs + 128;
  static constexpr float kOffset = kMx ? 12.0f : kFifth ? 16.0f : 8.0f;
  const uint8_t* base;  // (N / 8, G, kBytes)
  int64_t gn, gg;

  template <int MM>
  void group(const QuantX& x, int64_t R, int r0, float* out, int64_t ld) const {
    const int64_t K = x.K, G = x.G;
    const __m256i m4 = bytes_set1(0x0F);
    __m256 acc[MM];
    for (int m = 0; m < MM; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      const uint8_t* b = base + R * gn + g * gg;
      const __m256 d8 = kMx ? e8m0_half8(b) : _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
      __m256i t[MM];
      for (int m = 0; m < MM; ++m) t[m] = _mm256_setzero_si256();
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + kQs + 32 * c));
        __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        if (kMx) lo = _mm256_shuffle_epi8(mx_levels_plus_12(), lo), hi = _mm256_shuffle_epi8(mx_levels_plus_12(), hi);
        if (kFifth) {
          const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + kQh));
          const __m256i four = _mm256_set1_epi32(15);
          lo = _mm256_or_si256(lo, fifth_bits(_mm256_and_si256(_mm256_srli_epi32(qh, 4 * c), four)));
          hi = _mm256_or_si256(hi, fifth_bits(_mm256_and_si256(_mm256_srli_epi32(qh, 16 + 4 * c), four)));
        }
#pragma GCC unroll 2
        for (int m = 0; m < MM; ++m) {
          const int8_t* xq = x.q.data() + (r0 + m) * K + g * QK + 4 * c;
          int32_t xl, xh;
          std::memcpy(&xl, xq, 4);
          std::memcpy(&xh, xq + 16, 4);
          t[m] = _mm256_dpbusd_epi32(t[m], lo, _mm256_set1_epi32(xl));
          t[m] = _mm256_dpbusd_epi32(t[m], hi, _mm256_set1_epi32(xh));
        }
      }
      for (int m = 0; m < MM; ++m) {  // x.s holds dx * sum(xq): the min terms
        const __m256 xs = _mm256_set1_ps(x.s[(r0 + m) * G + g]);
        const __m256 dot = _mm256_cvtepi32_ps(t[m]);
        const __m256 dx = _mm256_set1_ps(x.d[(r0 + m) * G + g]);
        if (kMin) {  // d * dx * sum(q xq) + m * dx * sum(xq)
          const __m256 m8 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16)));
          acc[m] = _mm256_fmadd_ps(_mm256_mul_ps(d8, dx), dot, _mm256_fmadd_ps(m8, xs, acc[m]));
        } else {  // d * (dx * sum(q xq) - 8 * dx * sum(xq))
          acc[m] = _mm256_fmadd_ps(d8, _mm256_fmsub_ps(dot, dx, _mm256_mul_ps(_mm256_set1_ps(kOffset), xs)), acc[m]);
        }
      }
    }
    for (int m = 0; m < MM; ++m) _mm256_storeu_ps(out + (r0 + m) * ld + R * 8, acc[m]);
  }

  void run(const QuantX& x, int64_t M, int64_t n0, int64_t n1, float* out, int64_t ld) const {
    TORCH_CHECK(n0 % 8 == 0 && n1 % 8 == 0, "pellucid::gemv: a repacked matrix is split at rows ", n0, "-", n1);
    for (int64_t R = n0 / 8; R < n1 / 8; ++R) {
      int r = 0;
      for (; r + 2 <= M; r += 2) group<2>(x, R, r, out, ld);
      if (r < M) group<1>(x, R, r, out, ld);
    }
  }

  void unpack8(int64_t R, int64_t K, float* out) const {
    for (int64_t g = 0; g < K / QK; ++g) {
      const uint8_t* b = base + R * gn + g * gg;
      alignas(32) float d[8], mn[8];
      _mm256_store_ps(d, kMx ? e8m0_half8(b) : _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b))));
      if (kMin) _mm256_store_ps(mn, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16))));
      for (int r = 0; r < 8; ++r) {
        const __m128 dv = _mm_set1_ps(d[r]);
        const __m128 add = kMx ? _mm_setzero_ps() : kMin ? _mm_set1_ps(mn[r]) : _mm_set1_ps(-kOffset * d[r]);
        float* o = out + r * K + g * QK;
        for (int c = 0; c < 4; ++c) {
          int32_t raw;
          std::memcpy(&raw, b + kQs + 32 * c + 4 * r, 4);
          const __m128i q = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(raw));
          __m128i ilo = _mm_and_si128(q, _mm_set1_epi32(15)), ihi = _mm_srli_epi32(q, 4);
          if (kMx) {  // the nibbles' E2M1 levels (doubled), as int8 then int32: w = d * level exactly
            const __m128i bytes = _mm_cvtsi32_si128(raw), m4 = _mm_set1_epi8(15);
            const __m128i levels = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
            ilo = _mm_cvtepi8_epi32(_mm_shuffle_epi8(levels, _mm_and_si128(bytes, m4)));
            ihi = _mm_cvtepi8_epi32(_mm_shuffle_epi8(levels, _mm_and_si128(_mm_srli_epi16(bytes, 4), m4)));
          }
          if (kFifth) {  // bit j of row r's qh: weight j's fifth bit
            uint32_t h;
            std::memcpy(&h, b + kQh + 4 * r, 4);
            const __m128i shifts = _mm_setr_epi32(4 * c, 4 * c + 1, 4 * c + 2, 4 * c + 3);
            const __m128i one = _mm_set1_epi32(1);
            ilo = _mm_or_si128(ilo, _mm_slli_epi32(_mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32(h), shifts), one), 4));
            ihi = _mm_or_si128(ihi, _mm_slli_epi32(
                _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32(h), _mm_add_epi32(shifts, _mm_set1_epi32(16))), one), 4));
          }
          const __m128 qlo = _mm_cvtepi32_ps(ilo);
          const __m128 qhi = _mm_cvtepi32_ps(ihi);
          // Q4_0: d * q - 8 d (the reference computes d * (q - 8): equal, q - 8 and the products are exact
          // in float32 only up to rounding of d * q; see the unpacking test's tolerance)
          _mm_storeu_ps(o + 4 * c, _mm_fmadd_ps(dv, qlo, add));
          _mm_storeu_ps(o + 16 + 4 * c, _mm_fmadd_ps(dv, qhi, add));
        }
      }
    }
  }
};

// Q6_K: 16 groups of 16 with int8 scales; in half h, weight 32 k + l is nibble k / 2 of ql[64 h + 32 (k % 2) + l]
// with bits 2 k of qh[32 h + l] above it, minus 32: w = d * scale * (q - 32). The -32 is taken out in integers
// through x's 16-value sums.
struct Q6K {
  const uint8_t* ql; int64_t ln, ls;  // (N, S, 128)
  const uint8_t* qh; int64_t hn, hs;  // (N, S, 64)
  const int8_t* sc; int64_t cn, cs;  // (N, S, 16)
  const at::Half* d; int64_t dn, ds;

  template <int M>
  void row(const QuantX& x, int64_t n, float* out, int64_t ld) const {
    const int64_t K = x.K, S = K / 256;
    const __m256i m4 = bytes_set1(0x0F), m2 = bytes_set1(3);
    __m256 acc[M];
    for (int r = 0; r < M; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t s = 0; s < S; ++s) {
      const __m128i sc_raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + n * cn + s * cs));
      const __m256i sc16 = _mm256_cvtepi8_epi16(sc_raw);  // all 16 scales, in order
      __m256i sumi[M];
      for (int r = 0; r < M; ++r) sumi[r] = _mm256_setzero_si256();
      for (int h = 0; h < 2; ++h) {
        // both halves of `scales` hold this half's 8 scales, so one shuffle places a 32-weight chunk's two
        const __m256i scales = _mm256_broadcastsi128_si256(h ? _mm256_extracti128_si256(sc16, 1) : _mm256_castsi256_si128(sc16));
        const uint8_t* l = ql + n * ln + s * ls + h * 64;
        const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(l));
        const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(l + 32));
        const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh + n * hn + s * hs + h * 32));
        __m256i q[4];
        q[0] = _mm256_and_si256(l0, m4);
        q[1] = _mm256_and_si256(l1, m4);
        q[2] = _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4);
        q[3] = _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4);
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          q[k] = _mm256_or_si256(q[k], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * k), m2), 4));
          const __m256i scv = shuffle_lanes(scales, 2 * k, 2 * k + 1);  // the two 16-groups of these 32 weights
#pragma GCC unroll 8
          for (int r = 0; r < M; ++r) {
            const __m256i xk = _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(x.qk.data() + r * K + s * 256 + h * 128 + k * 32));
            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], xk), scv));
          }
        }
      }
      const float dw = f16(d + n * dn + s * ds);
      for (int r = 0; r < M; ++r) {
        const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsum.data() + r * (K / 16) + s * 16));
        const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5);  // 32 * scale * sum(x), per group
        const float dx = x.dk[r * S + s];
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * dx), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[r], offset)), acc[r]);
      }
    }
    for (int r = 0; r < M; ++r) out[r * ld + n] = hsum(acc[r]);
  }

  // Row n's K weights as float32: w = d * scale * (q - 32).
  void unpack(int64_t n, int64_t K, float* out) const {
    for (int64_t s = 0; s < K / 256; ++s) {
      const float dw = f16(d + n * dn + s * ds);
      for (int h = 0; h < 2; ++h) {
        const uint8_t* l = ql + n * ln + s * ls + h * 64;
        const uint8_t* hb = qh + n * hn + s * hs + h * 32;
        const __m256i hbits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hb));
        for (int k = 0; k < 4; ++k) {
          float* o = out + s * 256 + h * 128 + k * 32;
          const __m256i lk = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(l + 32 * (k % 2)));
          __m256i q = _mm256_and_si256(k < 2 ? lk : _mm256_srli_epi16(lk, 4), bytes_set1(15));
          q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * k), bytes_set1(3)), 4));
          q = _mm256_sub_epi8(q, bytes_set1(32));  // -32..31
          for (int half = 0; half < 2; ++half) {
            const __m128i q16 = half ? _mm256_extracti128_si256(q, 1) : _mm256_castsi256_si128(q);
            const __m512 scale = _mm512_set1_ps(dw * sc[n * cn + s * cs + h * 8 + k * 2 + half]);
            _mm512_storeu_ps(o + 16 * half, _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q16))));
          }
        }
      }
    }
  }
};

// Q8G: int8 values with a float32 scale (and min) per group of 32, or per group of 16 without mins (Q6_K).
template <int kGroup, bool kMin>
struct Q8G {
  static constexpr bool kSigned = true, kHasMin = kMin;
  const int8_t* q; int64_t qn, qg;  // (N, K / kGroup, kGroup)
  const float* sc; int64_t sn, sg;
  const float* mn; int64_t mnn, mng;
  __attribute__((always_inline)) inline void block(int64_t n, int64_t g, __m256i& w, __m256& scale, float& min) const {
    const int64_t per = QK / kGroup, g0 = g * per;
    if (kGroup == 32) {
      w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + n * qn + g0 * qg));
      scale = _mm256_set1_ps(sc[n * sn + g0 * sg]);
    } else {  // two groups of 16: int32 lanes 0-3 come from the first, 4-7 from the second
      const int8_t* p = q + n * qn + g0 * qg;
      w = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + qg)),
                           _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      scale = _mm256_set_m128(_mm_set1_ps(sc[n * sn + (g0 + 1) * sg]), _mm_set1_ps(sc[n * sn + g0 * sg]));
    }
    min = kMin ? mn[n * mnn + g0 * mng] : 0.0f;
  }
};

// One row n of a matrix times M rows of x. Matrix rows go one at a time, in memory order: reading 2-4 rows
// side by side (to share x's loads) ran 1.6x slower on real models, whose weights stream from DRAM; and two
// alternating accumulator sets for M = 1 (against the FMA's latency) made decode slower too (7.8 -> 10.2 ms).
template <int M, class F>
void row(const F& f, const QuantX& x, int64_t n, float* out, int64_t ld) {
  const int64_t G = x.G, K = x.K;
  __m256 acc[M];
  __m256 macc = _mm256_setzero_ps();  // the min terms, lane r for row r of x: one FMA per block for all rows
  for (int r = 0; r < M; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m256i w;
    __m256 scale;
    float min;
    f.block(n, g, w, scale, min);
    const __m256i aw = F::kSigned ? _mm256_abs_epi8(w) : w;  // vpdpbusd multiplies uint8 by int8
    if (F::kHasMin) macc = _mm256_fmadd_ps(_mm256_set1_ps(min), _mm256_loadu_ps(x.st.data() + g * 8), macc);
#pragma GCC unroll 8
    for (int r = 0; r < M; ++r) {
      __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q.data() + r * K + g * QK));
      if (F::kSigned) xq = _mm256_sign_epi8(xq, w);  // |w| * (x * sign(w)) = w * x
      const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, xq);
      const __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(x.d[r * G + g]));
      acc[r] = _mm256_fmadd_ps(t, scale, acc[r]);
    }
  }
  alignas(32) float mins[8];
  _mm256_store_ps(mins, macc);
  for (int r = 0; r < M; ++r) out[r * ld + n] = hsum(acc[r]) + mins[r];
}

template <int M, class F>
void rows_range(const F& f, const QuantX& x, int64_t n0, int64_t n1, float* out, int64_t ld) {
  for (int64_t n = n0; n < n1; ++n) row<M>(f, x, n, out, ld);
}

// Row n of a 32-block matrix as K float32 weights: w = scale * q + min, byte i of a block scaled by lane i / 4.
template <class F>
void unpack_row(const F& f, int64_t n, int64_t K, float* out) {
  for (int64_t g = 0; g < K / QK; ++g) {
    __m256i w;
    __m256 scale;
    float min;
    f.block(n, g, w, scale, min);
    const __m512 mv = _mm512_set1_ps(min);
    const __m512 sc16 = _mm512_castps256_ps512(scale);
    for (int half = 0; half < 2; ++half) {  // 16 bytes: lanes 4 half .. 4 half + 3, 4 bytes each
      const __m128i raw = half ? _mm256_extracti128_si256(w, 1) : _mm256_castsi256_si128(w);
      const __m512i v = F::kSigned ? _mm512_cvtepi8_epi32(raw) : _mm512_cvtepu8_epi32(raw);
      const int a = 4 * half;
      const __m512 sc = _mm512_permutexvar_ps(
          _mm512_setr_epi32(a, a, a, a, a + 1, a + 1, a + 1, a + 1, a + 2, a + 2, a + 2, a + 2, a + 3, a + 3, a + 3, a + 3),
          sc16);
      _mm512_storeu_ps(out + g * QK + 16 * half, _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(v), mv));
    }
  }
}

// One matrix of a call: its rows go to columns [col, col + N) of the output.
struct Matrix {
  int64_t N = 0, col = 0;
  bool k_quant = false;  // reads x's Q8_K form (else the 32-block one)
  std::function<void(const QuantX&, int64_t, int64_t, float*, int64_t)> run;  // (x, n0, n1, out + col, ld)
  std::function<void(int64_t, int64_t, float*)> unpack;  // (n, K, out): row n's weights as float32
  std::function<void(int64_t, int64_t, float*)> unpack8;  // (R, K, out): rows 8R..8R+7 (repacked formats)
};

template <class F>
Matrix matrix(const F& f, int64_t N, int64_t M) {
  Matrix m;
  m.N = N;
  m.unpack = [f](int64_t n, int64_t K, float* o) { unpack_row(f, n, K, o); };
  switch (M) {
#define PELLUCID_ROWS(k) \
  case k: m.run = [f](const QuantX& x, int64_t a, int64_t b, float* o, int64_t ld) { rows_range<k>(f, x, a, b, o, ld); }; break;
    PELLUCID_ROWS(1) PELLUCID_ROWS(2) PELLUCID_ROWS(3) PELLUCID_ROWS(4)
    PELLUCID_ROWS(5) PELLUCID_ROWS(6) PELLUCID_ROWS(7) PELLUCID_ROWS(8)
#undef PELLUCID_ROWS
    default: TORCH_CHECK(false, "pellucid::gemv takes 1 to 8 rows, got ", M);
  }
  return m;
}

// A K-quant kernel (`f.row<M>`) as a Matrix.
template <class F>
Matrix matrix_k(const F& f, int64_t N, int64_t M) {
  Matrix m;
  m.N = N;
  m.k_quant = true;
  m.unpack = [f](int64_t n, int64_t K, float* o) { f.unpack(n, K, o); };
  switch (M) {
#define PELLUCID_ROWS(k) \
  case k: m.run = [f](const QuantX& x, int64_t a, int64_t b, float* o, int64_t ld) { for (int64_t n = a; n < b; ++n) f.template row<k>(x, n, o, ld); }; break;
    PELLUCID_ROWS(1) PELLUCID_ROWS(2) PELLUCID_ROWS(3) PELLUCID_ROWS(4)
    PELLUCID_ROWS(5) PELLUCID_ROWS(6) PELLUCID_ROWS(7) PELLUCID_ROWS(8)
#undef PELLUCID_ROWS
    default: TORCH_CHECK(false, "pellucid::gemv takes 1 to 8 rows, got ", M);
  }
  return m;
}

// A repacked matrix (8 rows interleaved) as a Matrix: x in Q8_K form, row ranges in multiples of 8.
template <class F>
Matrix matrix_x8(const F& f, int64_t N, int64_t M, bool k_quant) {
  Matrix m;
  m.N = N;
  m.k_quant = k_quant;
  m.run = [f, M](const QuantX& x, int64_t a, int64_t b, float* o, int64_t ld) { f.run(x, M, a, b, o, ld); };
  m.unpack8 = [f](int64_t R, int64_t K, float* o) { f.unpack8(R, K, o); };
  return m;
}

// The super-block layout the K-quant kernels read: each of `t`'s dims after the first two contiguous, so a
// super-block's bytes of that field are one run.
void check_runs(const at::Tensor& t, const char* what) {
  int64_t expected = 1;
  for (int64_t dim = t.dim() - 1; dim >= 2; --dim) {
    TORCH_CHECK(t.stride(dim) == expected, "pellucid::gemv: ", what, " must be contiguous within a super-block");
    expected *= t.size(dim);
  }
}

// Releases the GIL for the scope when the calling thread holds it. The products run from a server's worker
// thread; holding the GIL for their ~60% of a decode step would stall the event loop (and the streaming of
// every client's tokens) for as long. Nothing in a product touches Python objects.
struct NoGil {
  PyThreadState* state = nullptr;
  NoGil() {
    if (Py_IsInitialized() && PyGILState_Check()) state = PyEval_SaveThread();
  }
  ~NoGil() {
    if (state) PyEval_RestoreThread(state);
  }
};

template <class T>
const T* ptr(const at::Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); }

// The fields of one matrix of `format`, starting at f[i]; advances i past them.
Matrix parse(const std::string& fmt, at::TensorList f, size_t& i, int64_t M) {
  auto take = [&](int n) {
    TORCH_CHECK(i + n <= f.size(), "pellucid::gemv: too few fields for ", fmt);
    const at::Tensor* t = &f[i];
    i += n;
    return t;
  };
  if (fmt == "Q4_0") {
    auto t = take(2);
    return matrix(Q4_0{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1), ptr<at::Half>(t[1]), t[1].stride(0),
                       t[1].stride(1)}, t[0].size(0), M);
  }
  if (fmt == "Q4_1") {
    auto t = take(3);
    return matrix(Q4_1{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1), ptr<at::Half>(t[1]), t[1].stride(0),
                       t[1].stride(1), ptr<at::Half>(t[2]), t[2].stride(0), t[2].stride(1)}, t[0].size(0), M);
  }
  if (fmt == "Q5_0") {
    auto t = take(3);
    return matrix(Q5_0{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1), ptr<int32_t>(t[1]), t[1].stride(0),
                       t[1].stride(1), ptr<at::Half>(t[2]), t[2].stride(0), t[2].stride(1)}, t[0].size(0), M);
  }
  if (fmt == "Q5_1") {
    auto t = take(4);
    return matrix(Q5_1{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1), ptr<int32_t>(t[1]), t[1].stride(0),
                       t[1].stride(1), ptr<at::Half>(t[2]), t[2].stride(0), t[2].stride(1), ptr<at::Half>(t[3]),
                       t[3].stride(0), t[3].stride(1)}, t[0].size(0), M);
  }
  if (fmt == "Q8_0") {
    auto t = take(2);
    return matrix(Q8_0{ptr<int8_t>(t[0]), t[0].stride(0), t[0].stride(1), ptr<at::Half>(t[1]), t[1].stride(0),
                       t[1].stride(1)}, t[0].size(0), M);
  }
  if (fmt == "MXFP4") {  // qs, e
    auto t = take(2);
    return matrix(MXFP4{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1), ptr<uint8_t>(t[1]), t[1].stride(0),
                        t[1].stride(1)}, t[0].size(0), M);
  }
  if (fmt == "Q4_K" || fmt == "Q5_K") {  // qs, [qh,] d, dmin, sc, mn
    const bool fifth = fmt == "Q5_K";
    auto t = take(fifth ? 6 : 5);
    const at::Tensor &qs = t[0], &d = t[fifth ? 2 : 1], &dmin = t[fifth ? 3 : 2], &sc = t[fifth ? 4 : 3],
                     &mn = t[fifth ? 5 : 4];
    for (const at::Tensor* u : {&qs, &sc, &mn}) check_runs(*u, fmt.c_str());
    const uint8_t* qh = fifth ? ptr<uint8_t>(t[1]) : nullptr;
    if (fifth) check_runs(t[1], "Q5_K qh");
    const int64_t hn = fifth ? t[1].stride(0) : 0, hs = fifth ? t[1].stride(1) : 0;
    if (fifth)
      return matrix_k(Q45K<true>{ptr<uint8_t>(qs), qs.stride(0), qs.stride(1), qs.stride(2), qh, hn, hs,
                                 ptr<at::Half>(d), d.stride(0), d.stride(1), ptr<at::Half>(dmin), dmin.stride(0),
                                 dmin.stride(1), ptr<uint8_t>(sc), sc.stride(0), sc.stride(1), ptr<uint8_t>(mn),
                                 mn.stride(0), mn.stride(1)}, qs.size(0), M);
    return matrix_k(Q45K<false>{ptr<uint8_t>(qs), qs.stride(0), qs.stride(1), qs.stride(2), nullptr, 0, 0,
                                ptr<at::Half>(d), d.stride(0), d.stride(1), ptr<at::Half>(dmin), dmin.stride(0),
                                dmin.stride(1), ptr<uint8_t>(sc), sc.stride(0), sc.stride(1), ptr<uint8_t>(mn),
                                mn.stride(0), mn.stride(1)}, qs.size(0), M);
  }
  if (fmt == "Q6_K") {  // ql, qh, scales, d
    auto t = take(4);
    for (int j = 0; j < 3; ++j) check_runs(t[j], "Q6_K");
    return matrix_k(Q6K{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1), ptr<uint8_t>(t[1]), t[1].stride(0),
                        t[1].stride(1), ptr<int8_t>(t[2]), t[2].stride(0), t[2].stride(1), ptr<at::Half>(t[3]),
                        t[3].stride(0), t[3].stride(1)}, t[0].size(0), M);
  }
  if (fmt == "Q4_Kx8") {  // one (N / 8, S, 1184) buffer made by `repack`
    auto t = take(1);
    TORCH_CHECK(t[0].dim() == 3 && t[0].size(2) == kQ4KX8Bytes && t[0].stride(2) == 1, "pellucid::gemv: bad Q4_Kx8");
    return matrix_x8(Q4KX8{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1)}, t[0].size(0) * 8, M, true);
  }
  if (fmt == "Q4_0x8") {  // one (N / 8, G, 144) buffer made by `repack`
    auto t = take(1);
    TORCH_CHECK(t[0].dim() == 3 && t[0].size(2) == Q4X8<false>::kBytes && t[0].stride(2) == 1, "pellucid::gemv: bad Q4_0x8");
    return matrix_x8(Q4X8<false>{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1)}, t[0].size(0) * 8, M, false);
  }
  if (fmt == "Q5_0x8" || fmt == "Q5_1x8") {  // one (N / 8, G, 176 or 192) buffer made by `repack`
    auto t = take(1);
    const bool has_min = fmt == "Q5_1x8";
    const int64_t bytes = has_min ? Q4X8<true, true>::kBytes : Q4X8<false, true>::kBytes;
    TORCH_CHECK(t[0].dim() == 3 && t[0].size(2) == bytes && t[0].stride(2) == 1, "pellucid::gemv: bad ", fmt);
    if (has_min)
      return matrix_x8(Q4X8<true, true>{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1)}, t[0].size(0) * 8, M, false);
    return matrix_x8(Q4X8<false, true>{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1)}, t[0].size(0) * 8, M, false);
  }
  if (fmt == "MXFP4x8") {  // one (N / 8, G, 136) buffer made by `repack`
    auto t = take(1);
    using F = Q4X8<false, false, true>;
    TORCH_CHECK(t[0].dim() == 3 && t[0].size(2) == F::kBytes && t[0].stride(2) == 1, "pellucid::gemv: bad MXFP4x8");
    return matrix_x8(F{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1)}, t[0].size(0) * 8, M, false);
  }
  if (fmt == "Q4_1x8") {  // one (N / 8, G, 160) buffer made by `repack`
    auto t = take(1);
    TORCH_CHECK(t[0].dim() == 3 && t[0].size(2) == Q4X8<true>::kBytes && t[0].stride(2) == 1, "pellucid::gemv: bad Q4_1x8");
    return matrix_x8(Q4X8<true>{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1)}, t[0].size(0) * 8, M, false);
  }
  if (fmt == "IQ4_XS") {  // qs, d, ls
    auto t = take(3);
    check_runs(t[0], "IQ4_XS qs");
    TORCH_CHECK(t[2].stride(2) == 1, "pellucid::gemv: IQ4_XS ls must be contiguous within a super-block");
    return matrix_k(IQ4XSK{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1), ptr<at::Half>(t[1]), t[1].stride(0),
                           t[1].stride(1), ptr<int8_t>(t[2]), t[2].stride(0), t[2].stride(1)},
                    t[0].size(0), M);
  }
  if (fmt == "Q8G16") {
    auto t = take(2);
    return matrix(Q8G<16, false>{ptr<int8_t>(t[0]), t[0].stride(0), t[0].stride(1), ptr<float>(t[1]),
                                 t[1].stride(0), t[1].stride(1), nullptr, 0, 0}, t[0].size(0), M);
  }
  if (fmt == "Q8G32") {
    auto t = take(2);
    return matrix(Q8G<32, false>{ptr<int8_t>(t[0]), t[0].stride(0), t[0].stride(1), ptr<float>(t[1]),
                                 t[1].stride(0), t[1].stride(1), nullptr, 0, 0}, t[0].size(0), M);
  }
  if (fmt == "Q8G32M") {
    auto t = take(3);
    return matrix(Q8G<32, true>{ptr<int8_t>(t[0]), t[0].stride(0), t[0].stride(1), ptr<float>(t[1]),
                                t[1].stride(0), t[1].stride(1), ptr<float>(t[2]), t[2].stride(0), t[2].stride(1)},
                  t[0].size(0), M);
  }
  TORCH_CHECK(false, "pellucid::gemv: no kernel for format ", fmt);
}

// x (M, K) @ [W_1; W_2; ...].T -> (M, N_1 + N_2 + ...): several matrices that read the same x (q/k/v, gate/up)
// share its quantization and one parallel region.
// The matrices of a call ("Q4_1,Q4_1,Q8_0": one format per matrix, then their fields), each with its column
// offset `col` in the concatenated output.
std::vector<Matrix> parse_all(c10::string_view formats_in, at::TensorList fields, int64_t M, int64_t& total) {
  std::vector<Matrix> mats;
  size_t i = 0;
  total = 0;
  const std::string formats(formats_in.data(), formats_in.size());
  for (size_t start = 0; start <= formats.size();) {
    size_t end = formats.find(',', start);
    if (end == std::string::npos) end = formats.size();
    mats.push_back(parse(formats.substr(start, end - start), fields, i, M));
    start = end + 1;
    mats.back().col = total;
    total += mats.back().N;
  }
  return mats;
}

// x quantized once for all the matrices, then their rows split over the threads in chunks of 16 (a multiple
// of every tile) in one parallel region; matrix j's rows go to out[j] with row stride ld[j].
void run_all(const at::Tensor& x, const std::vector<Matrix>& mats, int64_t total, const std::vector<float*>& out,
             const std::vector<int64_t>& ld) {
  const int64_t M = x.size(0), K = x.size(1);
  NoGil released;
  QuantX qx;
  bool any_k = false, any_32 = false;
  for (const Matrix& m : mats) (m.k_quant ? any_k : any_32) = true;
  if (any_32) quantize_x(x.data_ptr<float>(), M, K, qx);
  if (any_k) {
    TORCH_CHECK(K % 256 == 0, "pellucid::gemv: K-quant rows are whole 256-blocks, got K = ", K);
    qx.K = K;
    quantize_x_k(x.data_ptr<float>(), M, K, qx);
  }
  at::parallel_for(0, (total + 15) / 16, 1, [&](int64_t c0, int64_t c1) {
    const int64_t a = c0 * 16, b = std::min(total, c1 * 16);
    for (size_t j = 0; j < mats.size(); ++j) {
      const Matrix& m = mats[j];
      const int64_t lo = std::max(a, m.col), hi = std::min(b, m.col + m.N);
      if (lo < hi) m.run(qx, lo - m.col, hi - m.col, out[j], ld[j]);
    }
  });
}

at::Tensor checked_x(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat, "pellucid::gemv: x must be (M, K) float32");
  TORCH_CHECK(x_in.size(1) % QK == 0, "pellucid::gemv: K must be a multiple of 32, got ", x_in.size(1));
  return x_in.contiguous();
}

at::Tensor gemv(const at::Tensor& x_in, c10::string_view formats, at::TensorList fields) {
  const at::Tensor x = checked_x(x_in);
  int64_t total;
  const std::vector<Matrix> mats = parse_all(formats, fields, x.size(0), total);
  at::Tensor out = at::empty({x.size(0), total}, x.options());
  std::vector<float*> ptrs;
  for (const Matrix& m : mats) ptrs.push_back(out.data_ptr<float>() + m.col);
  run_all(x, mats, total, ptrs, std::vector<int64_t>(mats.size(), total));
  return out;
}

// Rows [start, end) of one matrix (`format`, its fields as for gemv) as float32 or bfloat16 (round to nearest
// even, as Tensor.to does): the weights prefill's GEMMs multiply, unpacked once per call.
at::Tensor dequantize(c10::string_view format_in, at::TensorList fields, int64_t K, int64_t start, int64_t end,
                      bool bf16, const c10::optional<at::Tensor>& into) {
  size_t i = 0;
  const std::string fmt(format_in.data(), format_in.size());
  const Matrix m = parse(fmt, fields, i, 1);
  TORCH_CHECK(0 <= start && start <= end && end <= m.N, "pellucid::dequantize: rows out of range");
  TORCH_CHECK(K % QK == 0 && (!m.k_quant || K % 256 == 0), "pellucid::dequantize: K is not whole blocks");
  // `into`: a scratch buffer the caller reuses, so the pages are not faulted in (and zeroed by the kernel) again
  // on every call: that cost more than the unpacking itself (0.7 vs 0.1-0.3 ns per weight).
  const auto dtype = bf16 ? at::kBFloat16 : at::kFloat;
  at::Tensor out;
  if (into.has_value()) {
    TORCH_CHECK(into->is_contiguous() && into->scalar_type() == dtype && into->numel() >= (end - start) * K,
                "pellucid::dequantize: `into` must be a contiguous buffer of at least the rows' size and dtype");
    out = into->view({-1}).narrow(0, 0, (end - start) * K).view({end - start, K});
  } else {
    out = at::empty({end - start, K}, at::TensorOptions().dtype(dtype));
  }
  NoGil released;
  auto to_bf16 = [&](const float* row, int64_t n) {  // bits + 0x7FFF + (bit 16), top half: round to nearest even
    uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()) + (n - start) * K;
    for (int64_t j = 0; j < K; j += 8) {
      const __m256i b = _mm256_castps_si256(_mm256_loadu_ps(row + j));
      const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
      const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), odd), 16);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + j), _mm256_cvtepi32_epi16(r));
    }
  };
  if (m.unpack8) {  // a repacked matrix: 8 rows at a time
    TORCH_CHECK(start % 8 == 0 && end % 8 == 0, "pellucid::dequantize: a repacked matrix is unpacked 8 rows at a time");
    at::parallel_for(start / 8, end / 8, 1, [&](int64_t g0, int64_t g1) {
      std::vector<float> buffer(bf16 ? 8 * K : 0);
      for (int64_t g = g0; g < g1; ++g) {
        if (!bf16) {
          m.unpack8(g, K, out.data_ptr<float>() + (8 * g - start) * K);
          continue;
        }
        m.unpack8(g, K, buffer.data());
        for (int r = 0; r < 8; ++r) to_bf16(buffer.data() + r * K, 8 * g + r);
      }
    });
    return out;
  }
  at::parallel_for(start, end, 8, [&](int64_t n0, int64_t n1) {
    std::vector<float> buffer(bf16 ? K : 0);
    for (int64_t n = n0; n < n1; ++n) {
      if (!bf16) {
        m.unpack(n, K, out.data_ptr<float>() + (n - start) * K);
        continue;
      }
      m.unpack(n, K, buffer.data());
      to_bf16(buffer.data(), n);
    }
  });
  return out;
}

// `gemv` with each matrix's product in its own (M, N_i) tensor: what q/k/v (or gate/up) are used as, without
// splitting and reshaping a shared output in Python (a few ATen ops per layer per token).
std::vector<at::Tensor> gemv_parts(const at::Tensor& x_in, c10::string_view formats, at::TensorList fields) {
  const at::Tensor x = checked_x(x_in);
  int64_t total;
  const std::vector<Matrix> mats = parse_all(formats, fields, x.size(0), total);
  std::vector<at::Tensor> outs;
  std::vector<float*> ptrs;
  std::vector<int64_t> lds;
  for (const Matrix& m : mats) {
    outs.push_back(at::empty({x.size(0), m.N}, x.options()));
    ptrs.push_back(outs.back().data_ptr<float>());
    lds.push_back(m.N);
  }
  run_all(x, mats, total, ptrs, lds);
  return outs;
}

// Matrix j times its own rows of x: rows [o_j, o_j + counts[j]) with o_j = counts[0] + ... + counts[j - 1], 1 to
// 8 rows each; x (R, K) -> (R, N), every matrix N rows. A mixture-of-experts layer's experts, each on the tokens
// routed to it (or, for one token, each on its own gated activation): one parallel region for all of them, each
// matrix read once for its rows, instead of a call (and a region) per expert.
at::Tensor gemv_grouped(const at::Tensor& x_in, at::IntArrayRef counts, c10::string_view formats_in,
                        at::TensorList fields) {
  const at::Tensor x = checked_x(x_in);
  const int64_t J = counts.size(), K = x.size(1);
  std::vector<Matrix> mats;
  std::vector<int64_t> offsets;
  size_t i = 0;
  int64_t rows = 0;
  const std::string formats(formats_in.data(), formats_in.size());
  for (size_t start = 0, j = 0; start <= formats.size(); ++j) {
    size_t end = formats.find(',', start);
    if (end == std::string::npos) end = formats.size();
    TORCH_CHECK(static_cast<int64_t>(j) < J, "pellucid::gemv_grouped: more matrices than counts");
    mats.push_back(parse(formats.substr(start, end - start), fields, i, counts[j]));
    offsets.push_back(rows);
    rows += counts[j];
    start = end + 1;
  }
  TORCH_CHECK(static_cast<int64_t>(mats.size()) == J && rows == x.size(0),
              "pellucid::gemv_grouped: the counts must cover x's rows, one count per matrix");
  const int64_t N = mats.empty() ? 0 : mats[0].N;
  for (int64_t j = 0; j < J; ++j) {
    TORCH_CHECK(mats[j].N == N, "pellucid::gemv_grouped: every matrix must have the same rows");
    mats[j].col = j * N;
  }
  at::Tensor out = at::empty({rows, N}, x.options());
  NoGil released;
  std::vector<QuantX> qx(J);
  for (int64_t j = 0; j < J; ++j) {
    const float* first = x.data_ptr<float>() + offsets[j] * K;
    if (mats[j].k_quant) {
      TORCH_CHECK(K % 256 == 0, "pellucid::gemv_grouped: K-quant rows are whole 256-blocks, got K = ", K);
      qx[j].K = K;
      quantize_x_k(first, counts[j], K, qx[j]);
    } else {
      quantize_x(first, counts[j], K, qx[j]);
    }
  }
  const int64_t total = J * N;
  at::parallel_for(0, (total + 15) / 16, 1, [&](int64_t c0, int64_t c1) {
    const int64_t a = c0 * 16, b = std::min(total, c1 * 16);
    for (int64_t j = a / N; j < J && j * N < b; ++j) {
      const Matrix& m = mats[j];
      const int64_t lo = std::max(a, m.col), hi = std::min(b, m.col + m.N);
      if (lo < hi) m.run(qx[j], lo - m.col, hi - m.col, out.data_ptr<float>() + offsets[j] * N, N);
    }
  });
  return out;
}

// The gated activation of ops.cpp (`pellucid::glu`: its `act` ids are the activations pellucid knows), called
// through the dispatcher so that the fused MoE op has every activation that op has, defined once.
at::Tensor glu_op(const at::Tensor& gate, const at::Tensor& up, int64_t act) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pellucid::glu", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(gate, up, act);
}

// x's rows in the form matrix m reads (Q8_K for the K-quants, 32-blocks for the rest).
void quantize_for(const Matrix& m, const float* x, int64_t M, int64_t K, QuantX& q) {
  if (m.k_quant) {
    TORCH_CHECK(K % 256 == 0, "pellucid::moe: K-quant rows are whole 256-blocks, got K = ", K);
    q.K = K;
    quantize_x_k(x, M, K, q);
  } else {
    quantize_x(x, M, K, q);
  }
}

// Rows [a, b) of the concatenation of `mats` (each N rows, matrix j's at j * N), matrix j against xs[j].
void run_span(const std::vector<Matrix>& mats, const std::vector<const QuantX*>& xs, int64_t N, int64_t a,
              int64_t b, float* out) {
  for (int64_t j = a / N; j < static_cast<int64_t>(mats.size()) && j * N < b; ++j) {
    const int64_t lo = std::max(a, j * N), hi = std::min(b, (j + 1) * N);
    if (lo < hi) mats[j].run(*xs[j], lo - j * N, hi - j * N, out + j * N, 0);
  }
}

// A mixture-of-experts router for tokens x (T, K) float32: logits = x @ w.T with w (E, K) float32, scores =
// softmax or sigmoid of them (gating 0 / 1), the k best experts of each token (best first; on equal scores the
// lower id), their scores as weights, divided by their sum (clamped below as llama.cpp does) if `normalize`,
// times `scale`. -> (weights (T, k) float32, ids (T, k) int64). One op for what was ~10 ATen ops a layer.
std::tuple<at::Tensor, at::Tensor> moe_route(const at::Tensor& x_in, const at::Tensor& w_in, int64_t k,
                                             int64_t gating, bool normalize, double scale) {
  const at::Tensor x = checked_x(x_in);
  TORCH_CHECK(w_in.dim() == 2 && w_in.scalar_type() == at::kFloat && w_in.size(1) == x.size(1),
              "pellucid::moe_route: the router must be (E, K) float32 for x (T, K)");
  TORCH_CHECK(gating == 0 || gating == 1, "pellucid::moe_route: gating is 0 (softmax) or 1 (sigmoid)");
  const at::Tensor w = w_in.contiguous();
  const int64_t T = x.size(0), K = x.size(1), E = w.size(0);
  TORCH_CHECK(0 < k && k <= E, "pellucid::moe_route: k must be 1 to ", E, ", got ", k);
  std::vector<float> logits(T * E);
  {
    NoGil released;
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
    at::parallel_for(0, T * E, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const float *a = xp + (i / E) * K, *b = wp + (i % E) * K;
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        int64_t c = 0;
        for (; c + 32 <= K; c += 32) {
          s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + c), _mm512_loadu_ps(b + c), s0);
          s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + c + 16), _mm512_loadu_ps(b + c + 16), s1);
        }
        float tail = 0.0f;
        for (; c < K; ++c) tail += a[c] * b[c];
        logits[i] = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) + tail;
      }
    });
  }
  at::Tensor weights = at::empty({T, k}, x.options());
  at::Tensor ids = at::empty({T, k}, x.options().dtype(at::kLong));
  std::vector<float> scores(E);
  std::vector<int64_t> order(E);
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits.data() + t * E;
    if (gating == 0) {
      const float top = *std::max_element(l, l + E);
      float sum = 0.0f;
      for (int64_t e = 0; e < E; ++e) sum += scores[e] = std::exp(l[e] - top);
      for (int64_t e = 0; e < E; ++e) scores[e] /= sum;
    } else {
      for (int64_t e = 0; e < E; ++e) scores[e] = 1.0f / (1.0f + std::exp(-l[e]));
    }
    for (int64_t e = 0; e < E; ++e) order[e] = e;
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
      return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
    });
    float total = 0.0f;
    for (int64_t j = 0; j < k; ++j) total += scores[order[j]];
    const float div = normalize ? std::max(total, 6.103515625e-5f) : 1.0f;
    for (int64_t j = 0; j < k; ++j) {
      ids.data_ptr<int64_t>()[t * k + j] = order[j];
      weights.data_ptr<float>()[t * k + j] = scores[order[j]] / div * static_cast<float>(scale);
    }
  }
  return {weights, ids};
}

// One token's chosen experts, whole: x (1, K) float32; weights (k,) float32; per expert j its gate, up and down
// matrices (3 k formats, in that order, then their fields). h_j = act(gate_j x) * up_j x (the glu op's `act`),
// out = sum_j weights[j] * down_j h_j -> (1, hidden) float32. x is quantized once for the 2 k gate/up products,
// which share one parallel region; each h_j once for its down product, the k of them in a second region. Both
// regions split their k x rows evenly over the threads (all experts have the same shapes). This replaces the
// ~12 ops (gemv, glu, grouped gemv, the weighted sum) a decode step ran per MoE layer.
at::Tensor moe_experts(const at::Tensor& x_in, const at::Tensor& weights_in, c10::string_view formats_in,
                       at::TensorList fields, int64_t act) {
  const at::Tensor x = checked_x(x_in);
  TORCH_CHECK(x.size(0) == 1, "pellucid::moe_experts: one token, got ", x.size(0));
  const at::Tensor weights = weights_in.to(at::kFloat).contiguous().view({-1});
  const int64_t k = weights.size(0), K = x.size(1);
  TORCH_CHECK(k > 0, "pellucid::moe_experts: give the weights and matrices of at least one expert");
  std::vector<Matrix> up_gate, down;  // gate_0, up_0, gate_1, ...; down_0, down_1, ...
  {
    size_t i = 0, n = 0;
    const std::string formats(formats_in.data(), formats_in.size());
    for (size_t start = 0; start <= formats.size(); ++n) {
      size_t end = formats.find(',', start);
      if (end == std::string::npos) end = formats.size();
      Matrix m = parse(formats.substr(start, end - start), fields, i, 1);
      (n % 3 == 2 ? down : up_gate).push_back(std::move(m));
      start = end + 1;
    }
    TORCH_CHECK(static_cast<int64_t>(down.size()) == k && static_cast<int64_t>(up_gate.size()) == 2 * k &&
                    i == fields.size(), "pellucid::moe_experts: give gate, up and down of each of the k experts");
  }
  const int64_t F = up_gate[0].N, H = down[0].N;
  for (const Matrix& m : up_gate) TORCH_CHECK(m.N == F, "pellucid::moe_experts: the experts' FFN sizes differ");
  for (const Matrix& m : down) TORCH_CHECK(m.N == H, "pellucid::moe_experts: the experts' output sizes differ");
  TORCH_CHECK(F % QK == 0, "pellucid::moe_experts: the expert FFN size must be a multiple of 32, got ", F);
  at::Tensor gate_up = at::empty({k, 2, F}, x.options());  // (k, gate / up, F)
  at::Tensor y = at::empty({k, H}, x.options());
  {
    NoGil released;
    QuantX qx, qx32;
    bool any_k = false, any_32 = false;
    for (const Matrix& m : up_gate) (m.k_quant ? any_k : any_32) = true;
    if (any_32) quantize_x(x.data_ptr<float>(), 1, K, qx32);
    if (any_k) {
      TORCH_CHECK(K % 256 == 0, "pellucid::moe_experts: K-quant rows are whole 256-blocks, got K = ", K);
      qx.K = K;
      quantize_x_k(x.data_ptr<float>(), 1, K, qx);
    }
    std::vector<const QuantX*> xs;
    for (const Matrix& m : up_gate) xs.push_back(m.k_quant ? &qx : &qx32);
    at::parallel_for(0, (2 * k * F + 15) / 16, 1, [&](int64_t c0, int64_t c1) {
      run_span(up_gate, xs, F, c0 * 16, std::min(2 * k * F, c1 * 16), gate_up.data_ptr<float>());
    });
  }
  const at::Tensor h = glu_op(gate_up.select(1, 0), gate_up.select(1, 1), act);  // (k, F)
  NoGil released;
  std::vector<QuantX> qh(k);
  std::vector<const QuantX*> hs;
  for (int64_t j = 0; j < k; ++j) {
    quantize_for(down[j], h.data_ptr<float>() + j * F, 1, F, qh[j]);
    hs.push_back(&qh[j]);
  }
  at::parallel_for(0, (k * H + 15) / 16, 1, [&](int64_t c0, int64_t c1) {
    run_span(down, hs, H, c0 * 16, std::min(k * H, c1 * 16), y.data_ptr<float>());
  });
  at::Tensor out = at::empty({1, H}, x.options());
  float* o = out.data_ptr<float>();
  const float *yp = y.data_ptr<float>(), *wp = weights.data_ptr<float>();
  for (int64_t c = 0; c < H; ++c) o[c] = wp[0] * yp[c];
  for (int64_t j = 1; j < k; ++j)
    for (int64_t c = 0; c < H; ++c) o[c] += wp[j] * yp[j * H + c];
  return out;
}

// Whether [lo, hi) lies inside one mapping of a file (not anonymous memory), from /proc/self/maps.
bool in_file_mapping(uintptr_t lo, uintptr_t hi) {
  FILE* maps = std::fopen("/proc/self/maps", "r");
  if (maps == nullptr) return false;
  char line[4096];
  bool found = false;
  while (!found && std::fgets(line, sizeof line, maps) != nullptr) {
    unsigned long start = 0, end = 0, inode = 0;
    if (std::sscanf(line, "%lx-%lx %*s %*s %*s %lu", &start, &end, &inode) == 3)
      found = inode != 0 && start <= lo && hi <= end;
  }
  std::fclose(maps);
  return found;
}

// Hand the pages of a matrix's blocks [lo, hi) back to the OS (whole pages inside the span only), so the repacked
// copy replaces them in memory instead of doubling it. Pages of a mapped model file are clean copies of the file,
// re-read if anything reads them again: MADV_DONTNEED drops them at once. MADV_PAGEOUT would be the gentler ask,
// but some kernels (measured: 6.18 without swap) accept it and free nothing. Anonymous memory (a matrix packed at
// load, a test's blocks) must keep its contents, which DONTNEED would zero: there only PAGEOUT, best effort.
void page_out(const void* start, int64_t bytes) {
  const long page = sysconf(_SC_PAGESIZE);
  const uintptr_t lo = reinterpret_cast<uintptr_t>(start), hi = lo + static_cast<uintptr_t>(bytes);
  const uintptr_t first = (lo + page - 1) / page * page, last = hi / page * page;
  if (last <= first) return;
  if (in_file_mapping(first, last)) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
    return;
  }
#ifdef MADV_PAGEOUT
  madvise(reinterpret_cast<void*>(first), last - first, MADV_PAGEOUT);  // best effort
#endif
}

// Q5_0 (qs, qh, d) or Q5_1 (qs, qh, d, m) -> (N / 8, G, 176 or 192) repacked (see Q4X8).
at::Tensor repack_q5(at::TensorList f) {
  const bool has_min = f.size() == 4;
  TORCH_CHECK(f.size() == 3 || has_min, "pellucid::repack: Q5_0 takes qs, qh and d, Q5_1 also m");
  const at::Tensor &qs = f[0], &qh = f[1], &d = f[2];
  const int64_t N = qs.size(0), G = qs.size(1);
  const int64_t bytes = has_min ? Q4X8<true, true>::kBytes : Q4X8<false, true>::kBytes;
  const int64_t hoff = has_min ? Q4X8<true, true>::kQh : Q4X8<false, true>::kQh;
  const int64_t qoff = has_min ? Q4X8<true, true>::kQs : Q4X8<false, true>::kQs;
  TORCH_CHECK(N % 8 == 0 && qs.stride(2) == 1, "pellucid::repack: rows must be a multiple of 8, got ", N);
  at::Tensor out = at::empty({N / 8, G, bytes}, at::TensorOptions().dtype(at::kByte));
  uint8_t* o = out.data_ptr<uint8_t>();
  const uint8_t* q = ptr<uint8_t>(qs);
  const int32_t* hp = ptr<int32_t>(qh);
  const uint16_t* dp = reinterpret_cast<const uint16_t*>(d.data_ptr());
  const uint16_t* mp = has_min ? reinterpret_cast<const uint16_t*>(f[3].data_ptr()) : nullptr;
  {
    NoGil released;
    at::parallel_for(0, N / 8, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t R = g0; R < g1; ++R)
        for (int64_t g = 0; g < G; ++g) {
          uint8_t* b = o + (R * G + g) * bytes;
          for (int r = 0; r < 8; ++r) {
            const int64_t n = R * 8 + r;
            std::memcpy(b + 2 * r, dp + n * d.stride(0) + g * d.stride(1), 2);
            if (has_min) std::memcpy(b + 16 + 2 * r, mp + n * f[3].stride(0) + g * f[3].stride(1), 2);
            std::memcpy(b + hoff + 4 * r, hp + n * qh.stride(0) + g * qh.stride(1), 4);
            const uint8_t* src = q + n * qs.stride(0) + g * qs.stride(1);
            for (int c = 0; c < 4; ++c) std::memcpy(b + qoff + 32 * c + 4 * r, src + 4 * c, 4);
          }
        }
    });
  }
  page_out(reinterpret_cast<const uint8_t*>(dp), N * d.stride(0) * 2);
  return out;
}

// Q4_0 (qs, d) or Q4_1 (qs, d, m) -> (N / 8, G, 144 or 160) repacked (see Q4X8).
at::Tensor repack_q4(at::TensorList f) {
  const bool has_min = f.size() == 3;
  TORCH_CHECK(f.size() == 2 || has_min, "pellucid::repack: Q4_0 takes qs and d, Q4_1 qs, d and m");
  const at::Tensor &qs = f[0], &d = f[1];
  const int64_t N = qs.size(0), G = qs.size(1), bytes = has_min ? Q4X8<true>::kBytes : Q4X8<false>::kBytes;
  const int64_t qoff = has_min ? 32 : 16;
  TORCH_CHECK(N % 8 == 0 && qs.stride(2) == 1, "pellucid::repack: rows must be a multiple of 8, got ", N);
  at::Tensor out = at::empty({N / 8, G, bytes}, at::TensorOptions().dtype(at::kByte));
  uint8_t* o = out.data_ptr<uint8_t>();
  const uint8_t* q = ptr<uint8_t>(qs);
  const uint16_t* dp = reinterpret_cast<const uint16_t*>(d.data_ptr());
  const uint16_t* mp = has_min ? reinterpret_cast<const uint16_t*>(f[2].data_ptr()) : nullptr;
  {
    NoGil released;
    at::parallel_for(0, N / 8, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t R = g0; R < g1; ++R)
        for (int64_t g = 0; g < G; ++g) {
          uint8_t* b = o + (R * G + g) * bytes;
          for (int r = 0; r < 8; ++r) {
            const int64_t n = R * 8 + r;
            std::memcpy(b + 2 * r, dp + n * d.stride(0) + g * d.stride(1), 2);
            if (has_min) std::memcpy(b + 16 + 2 * r, mp + n * f[2].stride(0) + g * f[2].stride(1), 2);
            const uint8_t* src = q + n * qs.stride(0) + g * qs.stride(1);
            for (int c = 0; c < 4; ++c) std::memcpy(b + qoff + 32 * c + 4 * r, src + 4 * c, 4);
          }
        }
    });
  }
  page_out(reinterpret_cast<const uint8_t*>(dp), N * d.stride(0) * 2);
  return out;
}

// MXFP4 (qs, e) -> (N / 8, G, 136) repacked (see Q4X8): the 8 rows' exponent bytes, then their nibbles.
at::Tensor repack_mxfp4(at::TensorList f) {
  TORCH_CHECK(f.size() == 2, "pellucid::repack: MXFP4 takes qs and e");
  using F = Q4X8<false, false, true>;
  const at::Tensor &qs = f[0], &e = f[1];
  const int64_t N = qs.size(0), G = qs.size(1);
  TORCH_CHECK(N % 8 == 0 && qs.stride(2) == 1, "pellucid::repack: rows must be a multiple of 8, got ", N);
  at::Tensor out = at::empty({N / 8, G, F::kBytes}, at::TensorOptions().dtype(at::kByte));
  uint8_t* o = out.data_ptr<uint8_t>();
  const uint8_t *q = ptr<uint8_t>(qs), *ep = ptr<uint8_t>(e);
  {
    NoGil released;
    at::parallel_for(0, N / 8, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t R = g0; R < g1; ++R)
        for (int64_t g = 0; g < G; ++g) {
          uint8_t* b = o + (R * G + g) * F::kBytes;
          for (int r = 0; r < 8; ++r) {
            const int64_t n = R * 8 + r;
            b[r] = ep[n * e.stride(0) + g * e.stride(1)];
            const uint8_t* src = q + n * qs.stride(0) + g * qs.stride(1);
            for (int c = 0; c < 4; ++c) std::memcpy(b + F::kQs + 32 * c + 4 * r, src + 4 * c, 4);
          }
        }
    });
  }
  page_out(ep, N * e.stride(0));  // the blocks start at e: the span of all N rows
  return out;
}

// Q4_K matrix (the Q4_K fields, as gemv takes them) -> its (N / 8, S, 1184) repacked form (see Q4KX8). The
// file's pages of the matrix are then handed back to the kernel (page_out: they are clean file pages, re-read
// if anything reads them again), so the repacked copy replaces them in memory instead of doubling it.
at::Tensor repack(c10::string_view format_in, at::TensorList f) {
  const std::string fmt(format_in.data(), format_in.size());
  if (fmt == "Q4_0" || fmt == "Q4_1") return repack_q4(f);
  if (fmt == "Q5_0" || fmt == "Q5_1") return repack_q5(f);
  if (fmt == "MXFP4") return repack_mxfp4(f);
  TORCH_CHECK(fmt == "Q4_K" && f.size() == 5, "pellucid::repack: only Q4_0, Q4_1, Q5_0, Q5_1, MXFP4 and Q4_K are repacked, not ", fmt);
  const at::Tensor &qs = f[0], &d = f[1], &dmin = f[2], &sc = f[3], &mn = f[4];
  const int64_t N = qs.size(0), S = qs.size(1);
  TORCH_CHECK(N % 8 == 0, "pellucid::repack: rows must be a multiple of 8, got ", N);
  for (const at::Tensor* u : {&qs, &sc, &mn}) check_runs(*u, "Q4_K");
  at::Tensor out = at::empty({N / 8, S, kQ4KX8Bytes}, at::TensorOptions().dtype(at::kByte));
  uint8_t* o = out.data_ptr<uint8_t>();
  const uint8_t *q = ptr<uint8_t>(qs), *scp = ptr<uint8_t>(sc), *mnp = ptr<uint8_t>(mn);
  const uint16_t *dp = reinterpret_cast<const uint16_t*>(d.data_ptr()), *mp = reinterpret_cast<const uint16_t*>(dmin.data_ptr());
  {
    NoGil released;
    at::parallel_for(0, N / 8, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t R = g0; R < g1; ++R)
        for (int64_t s = 0; s < S; ++s) {
          uint8_t* b = o + (R * S + s) * kQ4KX8Bytes;
          for (int r = 0; r < 8; ++r) {
            const int64_t n = R * 8 + r;
            std::memcpy(b + 2 * r, dp + n * d.stride(0) + s * d.stride(1), 2);
            std::memcpy(b + 16 + 2 * r, mp + n * dmin.stride(0) + s * dmin.stride(1), 2);
            for (int j = 0; j < 8; ++j) {
              b[32 + 8 * j + r] = scp[n * sc.stride(0) + s * sc.stride(1) + j];
              b[96 + 8 * j + r] = mnp[n * mn.stride(0) + s * mn.stride(1) + j];
            }
            const uint8_t* src = q + n * qs.stride(0) + s * qs.stride(1);
            for (int i = 0; i < 4; ++i)
              for (int c = 0; c < 8; ++c) std::memcpy(b + 160 + i * 256 + c * 32 + r * 4, src + i * qs.stride(2) + 4 * c, 4);
          }
        }
    });
  }
  page_out(dp, N * qs.stride(0));  // the blocks start at d: the span of all N rows
  return out;
}

// Whether this CPU runs the kernels (they need AVX512-VNNI on 256-bit vectors, AVX512BW masks, F16C).
bool supported() {
  return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
}

}  // namespace

TORCH_LIBRARY(pellucid, m) {
  m.def("gemv(Tensor x, str formats, Tensor[] fields) -> Tensor");
  m.def("supported() -> bool", &supported);
  m.def("dequantize(str format, Tensor[] fields, int K, int start, int end, bool bf16, Tensor? into=None) -> Tensor");
  m.def("gemv_parts(Tensor x, str formats, Tensor[] fields) -> Tensor[]");
  m.def("repack(str format, Tensor[] fields) -> Tensor");
  m.def("gemv_grouped(Tensor x, int[] counts, str formats, Tensor[] fields) -> Tensor");
  m.def("moe_route(Tensor x, Tensor w, int k, int gating, bool normalize, float scale) -> (Tensor, Tensor)");
  m.def("moe_experts(Tensor x, Tensor weights, str formats, Tensor[] fields, int act) -> Tensor");
}

TORCH_LIBRARY_IMPL(pellucid, CPU, m) {
  m.impl("gemv", &gemv);
  m.impl("dequantize", &dequantize);
  m.impl("gemv_parts", &gemv_parts);
  m.impl("repack", &repack);
  m.impl("gemv_grouped", &gemv_grouped);
  m.impl("moe_route", &moe_route);
  m.impl("moe_experts", &moe_experts);
}
