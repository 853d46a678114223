// Matrix-vector products of ggml block-quantized weights with a few rows of activations (decode: 1-8 rows),
// as llama.cpp's CPU backend computes them: each row of x is quantized to int8 in blocks of 32 (one float
// scale per block, like ggml's Q8_0/Q8_1), and each 32-weight block's dot product is an integer dot product
// (AVX512-VNNI `vpdpbusd`: 32 uint8 x int8 products summed into 8 int32 lanes in one instruction), scaled by
// the weight block's scale and the x block's scale, plus the block's min times the x block's sum.
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

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

constexpr int QK = 32;  // weights (and x values) per block

// x quantized: per row, K int8 values, and per 32-block its scale d and d * sum(q) (for the min terms).
struct QuantX {
  std::vector<int8_t> q;
  std::vector<float> d, s;
  std::vector<float> st;  // s transposed, (G, 8): block g's sums of all rows in one vector (rows >= M are 0)
  int64_t K = 0, G = 0;
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

// Q4_K: super-blocks of 256 = 8 groups of 32; bytes i*32..i*32+31 hold group 2i (low nibbles) and 2i+1 (high).
struct Q4_K {
  static constexpr bool kSigned = false, kHasMin = true;
  const uint8_t* qs; int64_t qn, qsb, qi;  // (N, S, 4, 32)
  const at::Half* d; int64_t dn, ds;
  const at::Half* dmin; int64_t mnn, mns;
  const uint8_t* sc; int64_t cn, cs, ci, cj;  // (N, S, 4, 2)
  const uint8_t* mn; int64_t on, os, oi, oj;
  __attribute__((always_inline)) inline void block(int64_t n, int64_t g, __m256i& w, __m256& scale, float& min) const {
    const int64_t s = g >> 3, i = (g & 7) >> 1, j = g & 1;
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + n * qn + s * qsb + i * qi));
    if (j) b = _mm256_srli_epi16(b, 4);
    w = _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
    scale = _mm256_set1_ps(f16(d + n * dn + s * ds) * sc[n * cn + s * cs + i * ci + j * cj]);
    min = -f16(dmin + n * mnn + s * mns) * mn[n * on + s * os + i * oi + j * oj];
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

// One matrix of a call: its rows go to columns [col, col + N) of the output.
struct Matrix {
  int64_t N = 0, col = 0;
  std::function<void(const QuantX&, int64_t, int64_t, float*, int64_t)> run;  // (x, n0, n1, out + col, ld)
};

template <class F>
Matrix matrix(const F& f, int64_t N, int64_t M) {
  Matrix m;
  m.N = N;
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
  if (fmt == "Q4_K") {
    auto t = take(5);
    return matrix(Q4_K{ptr<uint8_t>(t[0]), t[0].stride(0), t[0].stride(1), t[0].stride(2), ptr<at::Half>(t[1]),
                       t[1].stride(0), t[1].stride(1), ptr<at::Half>(t[2]), t[2].stride(0), t[2].stride(1),
                       ptr<uint8_t>(t[3]), t[3].stride(0), t[3].stride(1), t[3].stride(2), t[3].stride(3),
                       ptr<uint8_t>(t[4]), t[4].stride(0), t[4].stride(1), t[4].stride(2), t[4].stride(3)},
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
at::Tensor gemv(const at::Tensor& x_in, c10::string_view formats_in, at::TensorList fields) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat, "pellucid::gemv: x must be (M, K) float32");
  const at::Tensor x = x_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % QK == 0, "pellucid::gemv: K must be a multiple of 32, got ", K);
  std::vector<Matrix> mats;
  size_t i = 0;
  int64_t total = 0;
  std::string formats(formats_in.data(), formats_in.size()), name;
  for (size_t start = 0; start <= formats.size();) {  // "Q4_1,Q4_1,Q8_0": one format per matrix
    size_t end = formats.find(',', start);
    if (end == std::string::npos) end = formats.size();
    name = formats.substr(start, end - start);
    start = end + 1;
    mats.push_back(parse(name, fields, i, M));
    mats.back().col = total;
    total += mats.back().N;
  }
  at::Tensor out = at::empty({M, total}, x.options());
  NoGil released;
  QuantX qx;
  quantize_x(x.data_ptr<float>(), M, K, qx);
  float* o = out.data_ptr<float>();
  // Split the concatenated rows over the threads in chunks of 16 rows (a multiple of every tile).
  at::parallel_for(0, (total + 15) / 16, 1, [&](int64_t c0, int64_t c1) {
    const int64_t a = c0 * 16, b = std::min(total, c1 * 16);
    for (const Matrix& m : mats) {
      const int64_t lo = std::max(a, m.col), hi = std::min(b, m.col + m.N);
      if (lo < hi) m.run(qx, lo - m.col, hi - m.col, o + m.col, total);
    }
  });
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
}

TORCH_LIBRARY_IMPL(pellucid, CPU, m) {
  m.impl("gemv", &gemv);
}
