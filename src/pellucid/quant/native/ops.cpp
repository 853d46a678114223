// The small steps between decode's matrix products, each one op instead of the 5-15 ATen ops that PyTorch
// spends on it: RMSNorm, RoPE, one query's attention over the KV cache, and the gated activation.
//
// Why: in the default arithmetic a decode step runs eagerly (no torch.compile: nothing to trace, so a fresh
// process answers at once), and eagerly each ATen op costs 3-10 us of dispatch whatever its size. A layer of
// ~120 such ops cost more than its matrix products on a 135M model. These ops do the same float32 arithmetic
// (summation order aside) in one pass each, with 16-wide AVX512 loops; model/layers calls them through
// `pellucid.quant.native` only in the default arithmetic, on the CPU, for float32 activations.
//
//   rms_norm(x (..., D), w (D,), eps)                  x / sqrt(mean(x^2) + eps) * w
//   rope(x (B, T, H, D), cos (B, T, R/2), sin, R, interleaved)   rotate the first R dims of every head
//   attend_one(q (B, 1, H, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv), visible (S,) or None, scale, softcap,
//              sinks (H,) or None)                     -> (B, 1, H * Dv), softmax(q.k * scale) . v per head
//   store_attend(q, k, v, keys[], values[], slots[], lengths[], scale, softcap, sinks)
//                                                      the batched decode step's cache writes and attention
//   (sinks: GPT-OSS's per-head logit that joins the softmax's denominator and attends to nothing)
//   (both read the KV cache in its type, k_type / v_type: f32, f16, bf16, q8_0, q4_0, with no dequantized copy)
//   glu(gate (..., N), up (..., N), act)               act(gate) * up, act 0 = SiLU, 1 = GELU (tanh form)
//
// Inputs may be strided views (the split outputs of a fused projection, the KV cache's slices) as long as
// their last dimension is contiguous; outputs are new contiguous tensors.

#include <ATen/core/Tensor.h>  // not ATen/ATen.h: the lighter headers save ~2.5 s of every build
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp(x) for 16 floats: x = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-6 Taylor polynomial (relative
// error < 2e-7 over that range), times 2^n by vscalefps. Below -87 it returns 0, above 88 +inf.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7f)), _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2 in two parts: exact n * hi
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline float sum16(__m512 v) { return _mm512_reduce_add_ps(v); }

inline __mmask16 tail_mask(int64_t left) { return left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1); }

inline float dot(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
  }
  return sum16(acc);
}

void check_last_contiguous(const at::Tensor& t, const char* op, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "pellucid::", op, ": ", what,
              " must be a float32 CPU tensor");
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, "pellucid::", op, ": ", what, "'s last dim must be contiguous");
}

at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& w_in, double eps) {
  check_last_contiguous(x_in, "rms_norm", "x");
  const int64_t D = x_in.size(-1);
  const at::Tensor x = x_in.reshape({-1, D});  // a view unless x's rows are not evenly strided
  const at::Tensor w = w_in.contiguous();
  TORCH_CHECK(w.numel() == D && w.scalar_type() == at::kFloat, "pellucid::rms_norm: w must be (", D, ",) float32");
  at::Tensor out = at::empty(x_in.sizes(), x_in.options());
  const int64_t rows = x.size(0), ld = x.stride(0);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * ld;
      float* orow = op + r * D;
      const float mean = dot(xr, xr, D) / D;
      const __m512 s = _mm512_set1_ps(1.0f / std::sqrt(mean + (float)eps));
      for (int64_t i = 0; i < D; i += 16) {
        const __mmask16 m = tail_mask(D - i);
        const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), s);
        _mm512_mask_storeu_ps(orow + i, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, wp + i)));
      }
    }
  });
  return out;
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, int64_t rope_dim,
                bool interleaved) {
  check_last_contiguous(x, "rope", "x");
  check_last_contiguous(cos, "rope", "cos");
  check_last_contiguous(sin, "rope", "sin");
  TORCH_CHECK(x.dim() == 4 && cos.dim() == 3 && sin.dim() == 3, "pellucid::rope: x (B, T, H, D), cos/sin (B, T, R/2)");
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), half = rope_dim / 2;
  TORCH_CHECK(rope_dim % 2 == 0 && rope_dim <= D && cos.size(2) == half && sin.size(2) == half &&
                  cos.size(0) == B && cos.size(1) == T && sin.size(0) == B && sin.size(1) == T,
              "pellucid::rope: cos/sin must be (B, T, rope_dim / 2)");
  at::Tensor out = at::empty({B, T, H, D}, x.options());
  const float* xp = x.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t sb = x.stride(0), st = x.stride(1), sh = x.stride(2);
  const int64_t cb = cos.stride(0), ct = cos.stride(1), sb2 = sin.stride(0), st2 = sin.stride(1);
  at::parallel_for(0, B * T, std::max<int64_t>(1, 16384 / std::max<int64_t>(H * D, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / T, t = p % T;
      const float *c = cp + b * cb + t * ct, *s = sp + b * sb2 + t * st2;
      for (int64_t h = 0; h < H; ++h) {
        const float* xi = xp + b * sb + t * st + h * sh;
        float* o = op + ((b * T + t) * H + h) * D;
        if (interleaved) {  // pairs (2i, 2i + 1)
          for (int64_t i = 0; i < half; ++i) {
            const float x1 = xi[2 * i], x2 = xi[2 * i + 1];
            o[2 * i] = x1 * c[i] - x2 * s[i];
            o[2 * i + 1] = x2 * c[i] + x1 * s[i];
          }
        } else {  // pairs (i, i + R/2)
          for (int64_t i = 0; i < half; ++i) {
            const float x1 = xi[i], x2 = xi[i + half];
            o[i] = x1 * c[i] - x2 * s[i];
            o[i + half] = x2 * c[i] + x1 * s[i];
          }
        }
        for (int64_t i = rope_dim; i < D; ++i) o[i] = xi[i];
      }
    }
  });
  return out;
}

// -- the KV cache's types (quant/kv_blocks.py): a row of n values as f32, f16, bf16, or blocks of 32 (q8_0: f16 d
// and 32 int8, 34 bytes; q4_0: f16 d and 16 bytes of nibbles, 18 bytes, low nibbles values 0-15, high 16-31)
enum KvType { KV_F32 = 0, KV_F16 = 1, KV_BF16 = 2, KV_Q8_0 = 3, KV_Q4_0 = 4 };

// Values i..i+15 of a row of type T as floats (lanes outside m zero). A block row is read in place, 16 values of
// one block at a time times its scale: no dequantized copy of the cache (as ggml's vec_dot reads q8_0 blocks).
template <int T>
inline __m512 load16(const uint8_t* row, int64_t i, __mmask16 m) {
  if constexpr (T == KV_F32) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + i);
  } else if constexpr (T == KV_F16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(row) + i));
  } else if constexpr (T == KV_BF16) {
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(row) + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
  } else if constexpr (T == KV_Q8_0) {
    const uint8_t* b = row + (i / 32) * 34;
    const float d = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(b));
    const __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 + i % 32)));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(d));
  } else {
    const uint8_t* b = row + (i / 32) * 18;
    const float d = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(b));
    __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2)));
    q = (i % 32) ? _mm512_srli_epi32(q, 4) : _mm512_and_si512(q, _mm512_set1_epi32(15));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(8))), _mm512_set1_ps(d));
  }
}

template <int T>
inline float dot_row(const float* q, const uint8_t* k, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), load16<T>(k, i, m), acc);
  }
  return sum16(acc);
}

// out += w * row
template <int T>
inline void axpy_row(float w, const uint8_t* v, float* out, int64_t n) {
  const __m512 wv = _mm512_set1_ps(w);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_fmadd_ps(wv, load16<T>(v, i, m), _mm512_maskz_loadu_ps(m, out + i)));
  }
}

int64_t kv_row_bytes(int64_t type, int64_t n) {
  switch (type) {
    case KV_F32: return 4 * n;
    case KV_F16:
    case KV_BF16: return 2 * n;
    case KV_Q8_0: return n / 32 * 34;
    default: return n / 32 * 18;
  }
}

// Values in a row of `bytes` bytes (the value head dim of a cache's values).
int64_t kv_row_values(int64_t type, int64_t bytes) {
  switch (type) {
    case KV_F32: return bytes / 4;
    case KV_F16:
    case KV_BF16: return bytes / 2;
    case KV_Q8_0: return bytes / 34 * 32;
    default: return bytes / 18 * 32;
  }
}

at::ScalarType kv_scalar_type(int64_t type) {
  switch (type) {
    case KV_F32: return at::kFloat;
    case KV_F16: return at::kHalf;
    case KV_BF16: return at::kBFloat16;
    default: return at::kByte;
  }
}

void check_cache(const at::Tensor& t, int64_t type, const char* op, const char* what) {
  TORCH_CHECK(0 <= type && type <= KV_Q4_0, "pellucid::", op, ": unknown KV type ", type);
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == kv_scalar_type(type), "pellucid::", op, ": ", what,
              " is not a CPU cache of its KV type");
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, "pellucid::", op, ": ", what, "'s last dim must be contiguous");
}

// One row of n floats into a cache row of type T, rounded as torch's conversions (f16, bf16: to nearest even) and
// ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref (the block types), so that a decode step stores the bytes
// a prefill (quant/kv_blocks.encode) would.
inline uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if (std::isnan(x)) return 0x7FC0;
  return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

// x * id + 8.5 in two roundings, as ggml's reference (an FMA would round once and could move a value across .5)
__attribute__((optimize("fp-contract=off"))) void quantize_row(int64_t type, const float* x, uint8_t* out, int64_t n) {
  if (type == KV_F32) {
    std::memcpy(out, x, n * 4);
  } else if (type == KV_F16) {
    uint16_t* o = reinterpret_cast<uint16_t*>(out);
    for (int64_t i = 0; i < n; ++i) o[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
  } else if (type == KV_BF16) {
    uint16_t* o = reinterpret_cast<uint16_t*>(out);
    for (int64_t i = 0; i < n; ++i) o[i] = to_bf16(x[i]);
  } else if (type == KV_Q8_0) {
    for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 34) {
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
      const float d = amax / 127;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      const uint16_t dh = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
      std::memcpy(out, &dh, 2);
      for (int j = 0; j < 32; ++j) out[2 + j] = (uint8_t)(int8_t)std::roundf(x[j] * id);
    }
  } else {
    for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 18) {
      float amax = 0, mx = 0;
      for (int j = 0; j < 32; ++j) {
        if (amax < std::fabs(x[j])) {
          amax = std::fabs(x[j]);
          mx = x[j];
        }
      }
      const float d = mx / -8;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      const uint16_t dh = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
      std::memcpy(out, &dh, 2);
      for (int j = 0; j < 16; ++j) {
        const float x0 = x[j] * id, x1 = x[16 + j] * id;
        const uint8_t q0 = std::min(15, (int)(int8_t)(x0 + 8.5f)), q1 = std::min(15, (int)(int8_t)(x1 + 8.5f));
        out[2 + j] = q0 | (q1 << 4);
      }
    }
  }
}

// One query head over S keys and values (rows `ks` / `vs` bytes apart, of types KT / VT): scores q.k * scale
// (soft-capped, hidden where `visible` is false), softmax, then the weighted sum of the values into out (Dv
// floats). `scores` is scratch for S floats. A finite `sink` adds exp(sink - max) to the softmax's denominator only
// (GPT-OSS's per-head sink logit, which attends to nothing).
template <int KT, int VT>
void attend_head(const float* q, const uint8_t* k, int64_t ks, const uint8_t* v, int64_t vs, int64_t S, int64_t D,
                 int64_t Dv, float scale, float cap, const bool* visible, float* scores, float* out, float sink) {
  float mx = sink;
  for (int64_t s = 0; s < S; ++s) {
    float a = dot_row<KT>(q, k + s * ks, D) * scale;
    if (cap > 0) a = std::tanh(a / cap) * cap;
    if (visible && !visible[s]) a = -INFINITY;
    scores[s] = a;
    mx = std::max(mx, a);
  }
  float total = std::isfinite(sink) ? std::exp(sink - mx) : 0.0f;
  for (int64_t s = 0; s < S; s += 16) {
    const __mmask16 m = tail_mask(S - s);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + s), _mm512_set1_ps(mx)));
    _mm512_mask_storeu_ps(scores + s, m, e);
    total += _mm512_mask_reduce_add_ps(m, e);
  }
  for (int64_t i = 0; i < Dv; ++i) out[i] = 0;
  for (int64_t s = 0; s < S; ++s) axpy_row<VT>(scores[s], v + s * vs, out, Dv);
  const __m512 inv = _mm512_set1_ps(1.0f / total);
  for (int64_t i = 0; i < Dv; i += 16) {
    const __mmask16 m = tail_mask(Dv - i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, out + i), inv));
  }
}

// The per-head sink logits as H floats (float32, contiguous), or an undefined tensor.
at::Tensor sink_logits(const c10::optional<at::Tensor>& sinks, int64_t H, const char* op) {
  if (!sinks.has_value()) return at::Tensor();
  at::Tensor out = sinks->reshape({-1}).to(at::kFloat).contiguous();
  TORCH_CHECK(out.numel() == H, "pellucid::", op, ": sinks must have one value per query head");
  return out;
}

using AttendHead = void (*)(const float*, const uint8_t*, int64_t, const uint8_t*, int64_t, int64_t, int64_t, int64_t,
                            float, float, const bool*, float*, float*, float);

template <int KT>
AttendHead attend_head_for_values(int64_t vt) {
  switch (vt) {
    case KV_F32: return &attend_head<KT, KV_F32>;
    case KV_F16: return &attend_head<KT, KV_F16>;
    case KV_BF16: return &attend_head<KT, KV_BF16>;
    case KV_Q8_0: return &attend_head<KT, KV_Q8_0>;
    default: return &attend_head<KT, KV_Q4_0>;
  }
}

AttendHead attend_head_for(int64_t kt, int64_t vt) {
  switch (kt) {
    case KV_F32: return attend_head_for_values<KV_F32>(vt);
    case KV_F16: return attend_head_for_values<KV_F16>(vt);
    case KV_BF16: return attend_head_for_values<KV_BF16>(vt);
    case KV_Q8_0: return attend_head_for_values<KV_Q8_0>(vt);
    default: return attend_head_for_values<KV_Q4_0>(vt);
  }
}

const uint8_t* bytes_of(const at::Tensor& t) { return static_cast<const uint8_t*>(t.data_ptr()); }

at::Tensor attend_one(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const c10::optional<at::Tensor>& visible_in, double scale, double softcap, int64_t k_type,
                      int64_t v_type, const c10::optional<at::Tensor>& sinks_in) {
  check_last_contiguous(q, "attend_one", "q");
  check_cache(k, k_type, "attend_one", "k");
  check_cache(v, v_type, "attend_one", "v");
  TORCH_CHECK(q.dim() == 4 && q.size(1) == 1 && k.dim() == 4 && v.dim() == 4,
              "pellucid::attend_one: q (B, 1, H, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv)");
  const int64_t ke = k.element_size(), ve = v.element_size();
  const int64_t B = q.size(0), H = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  const int64_t Dv = kv_row_values(v_type, v.size(3) * ve);
  TORCH_CHECK(k.size(0) == B && v.size(0) == B && v.size(1) == Hkv && v.size(2) == S &&
                  k.size(3) * ke == kv_row_bytes(k_type, D) && H % Hkv == 0,
              "pellucid::attend_one: shapes do not match");
  at::Tensor visible;
  if (visible_in.has_value()) {
    visible = visible_in->reshape({-1}).to(at::kBool).contiguous();
    TORCH_CHECK(visible.numel() == S, "pellucid::attend_one: visible must have S entries");
  }
  const bool* vis = visible.defined() ? visible.data_ptr<bool>() : nullptr;
  const at::Tensor sinks = sink_logits(sinks_in, H, "attend_one");
  const float* sk = sinks.defined() ? sinks.data_ptr<float>() : nullptr;
  at::Tensor out = at::empty({B, 1, H * Dv}, q.options());
  const float* qp = q.data_ptr<float>();
  const uint8_t *kp = bytes_of(k), *vp = bytes_of(v);
  float* op = out.data_ptr<float>();
  const int64_t group = H / Hkv;
  const float sc = (float)scale, cap = (float)softcap;
  const AttendHead head = attend_head_for(k_type, v_type);
  const int64_t work = S * (D + Dv) * group;  // per KV head
  at::parallel_for(0, B * Hkv, std::max<int64_t>(1, 65536 / std::max<int64_t>(work, 1)), [&](int64_t g0, int64_t g1) {
    std::vector<float> scores(S);
    for (int64_t bg = g0; bg < g1; ++bg) {
      const int64_t b = bg / Hkv, g = bg % Hkv;
      const uint8_t* kb = kp + (b * k.stride(0) + g * k.stride(1)) * ke;
      const uint8_t* vb = vp + (b * v.stride(0) + g * v.stride(1)) * ve;
      for (int64_t j = 0; j < group; ++j) {  // the query heads that share this KV head
        const int64_t h = g * group + j;
        head(qp + b * q.stride(0) + h * q.stride(2), kb, k.stride(2) * ke, vb, v.stride(2) * ve, S, D, Dv, sc, cap,
             vis, scores.data(), op + b * H * Dv + h * Dv, sk ? sk[h] : -INFINITY);
      }
    }
  });
  return out;
}

// A decode step's attention for B sequences, each with its own cache: writes sequence b's new key and value
// (k, v: (B, 1, Hkv, D) float32) into slot slots[b] of its cache (keys[b], values[b]: (1, Hkv, capacity, row), in
// the KV types k_type / v_type), then attends q[b] over the first lengths[b] slots. One op per layer for the whole
// batch instead of a store and an attention per sequence from Python. Slot order does not matter (positions are
// already rotated into the keys), which is what lets a sliding-window ring attend to its slots as they lie.
at::Tensor store_attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::TensorList keys,
                        at::TensorList values, at::IntArrayRef slots, at::IntArrayRef lengths, double scale,
                        double softcap, int64_t k_type, int64_t v_type,
                        const c10::optional<at::Tensor>& sinks_in) {
  check_last_contiguous(q, "store_attend", "q");
  check_last_contiguous(k, "store_attend", "k");
  check_last_contiguous(v, "store_attend", "v");
  const int64_t B = q.size(0), H = q.size(2), D = q.size(3), Hkv = k.size(2), Dv = v.size(3);
  TORCH_CHECK(q.size(1) == 1 && k.size(0) == B && v.size(0) == B && (int64_t)keys.size() == B &&
                  (int64_t)values.size() == B && (int64_t)slots.size() == B && (int64_t)lengths.size() == B &&
                  H % Hkv == 0, "pellucid::store_attend: one cache, slot and length per sequence");
  for (int64_t b = 0; b < B; ++b) {
    check_cache(keys[b], k_type, "store_attend", "keys");
    check_cache(values[b], v_type, "store_attend", "values");
    TORCH_CHECK(keys[b].size(1) == Hkv && keys[b].size(3) * keys[b].element_size() == kv_row_bytes(k_type, D) &&
                    values[b].size(3) * values[b].element_size() == kv_row_bytes(v_type, Dv) && 0 <= slots[b] &&
                    slots[b] < keys[b].size(2) && 0 < lengths[b] && lengths[b] <= keys[b].size(2),
                "pellucid::store_attend: a cache does not fit its slot or length");
  }
  const at::Tensor sinks = sink_logits(sinks_in, H, "store_attend");
  const float* sk = sinks.defined() ? sinks.data_ptr<float>() : nullptr;
  at::Tensor out = at::empty({B, 1, H * Dv}, q.options());
  float* op = out.data_ptr<float>();
  const int64_t group = H / Hkv;
  const float sc = (float)scale, cap = (float)softcap;
  const AttendHead head = attend_head_for(k_type, v_type);
  at::parallel_for(0, B * Hkv, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> scores;
    for (int64_t bg = g0; bg < g1; ++bg) {
      const int64_t b = bg / Hkv, g = bg % Hkv, S = lengths[b];
      const at::Tensor &kc = keys[b], &vc = values[b];
      const int64_t ke = kc.element_size(), ve = vc.element_size();
      uint8_t* kb = static_cast<uint8_t*>(kc.data_ptr()) + g * kc.stride(1) * ke;
      uint8_t* vb = static_cast<uint8_t*>(vc.data_ptr()) + g * vc.stride(1) * ve;
      quantize_row(k_type, k.data_ptr<float>() + b * k.stride(0) + g * k.stride(2), kb + slots[b] * kc.stride(2) * ke,
                   D);
      quantize_row(v_type, v.data_ptr<float>() + b * v.stride(0) + g * v.stride(2), vb + slots[b] * vc.stride(2) * ve,
                   Dv);
      scores.resize(S);
      for (int64_t j = 0; j < group; ++j) {
        const int64_t h = g * group + j;
        head(q.data_ptr<float>() + b * q.stride(0) + h * q.stride(2), kb, kc.stride(2) * ke, vb, vc.stride(2) * ve, S,
             D, Dv, sc, cap, nullptr, scores.data(), op + b * H * Dv + h * Dv, sk ? sk[h] : -INFINITY);
      }
    }
  });
  return out;
}

// Rows x (N, n) float32 as a cache of `type` stores them (N, row bytes): the decode step's rounding, for tests.
at::Tensor kv_encode(const at::Tensor& x_in, int64_t type) {
  const at::Tensor x = x_in.contiguous();
  check_last_contiguous(x, "kv_encode", "x");
  const int64_t n = x.size(-1), rows = x.numel() / std::max<int64_t>(n, 1), rb = kv_row_bytes(type, n);
  at::Tensor out = at::empty({rows, rb}, x.options().dtype(at::kByte));
  for (int64_t r = 0; r < rows; ++r) quantize_row(type, x.data_ptr<float>() + r * n, out.data_ptr<uint8_t>() + r * rb, n);
  return out;
}

at::Tensor glu(const at::Tensor& gate, const at::Tensor& up, int64_t act) {
  check_last_contiguous(gate, "glu", "gate");
  check_last_contiguous(up, "glu", "up");
  TORCH_CHECK(gate.sizes() == up.sizes(), "pellucid::glu: gate and up must have one shape");
  TORCH_CHECK(act == 0 || act == 1, "pellucid::glu: act is 0 (SiLU) or 1 (GELU, tanh form)");
  const int64_t N = gate.size(-1);
  const at::Tensor g = gate.reshape({-1, N}), u = up.reshape({-1, N});
  at::Tensor out = at::empty(gate.sizes(), gate.options());
  const int64_t rows = g.size(0), lg = g.stride(0), lu = u.stride(0);
  const float *gp = g.data_ptr<float>(), *upp = u.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(N, 1)), [&](int64_t r0, int64_t r1) {
    const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
    const __m512 k0 = _mm512_set1_ps(0.7978845608028654f), k1 = _mm512_set1_ps(0.044715f);
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t i = 0; i < N; i += 16) {
        const __mmask16 m = tail_mask(N - i);
        const __m512 x = _mm512_maskz_loadu_ps(m, gp + r * lg + i);
        __m512 a;
        if (act == 0) {  // x / (1 + exp(-x))
          a = _mm512_div_ps(x, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        } else {  // 0.5 x (1 + tanh(y)), tanh(y) = 1 - 2 / (exp(2y) + 1)
          const __m512 y = _mm512_mul_ps(k0, _mm512_fmadd_ps(_mm512_mul_ps(k1, x), _mm512_mul_ps(x, x), x));
          const __m512 e = exp16(_mm512_add_ps(y, y));
          const __m512 t = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
          a = _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(one, t));
        }
        _mm512_mask_storeu_ps(op + r * N + i, m, _mm512_mul_ps(a, _mm512_maskz_loadu_ps(m, upp + r * lu + i)));
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pellucid, m) {
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor");
  m.def("rope(Tensor x, Tensor cos, Tensor sin, int rope_dim, bool interleaved) -> Tensor");
  m.def("attend_one(Tensor q, Tensor k, Tensor v, Tensor? visible, float scale, float softcap, int k_type=0, "
        "int v_type=0, Tensor? sinks=None) -> Tensor");
  m.def("kv_encode(Tensor x, int type) -> Tensor");
  m.def("glu(Tensor gate, Tensor up, int act) -> Tensor");
  m.def("store_attend(Tensor q, Tensor k, Tensor v, Tensor[] keys, Tensor[] values, int[] slots, int[] lengths, "
        "float scale, float softcap, int k_type=0, int v_type=0, Tensor? sinks=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(pellucid, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("rope", &rope);
  m.impl("attend_one", &attend_one);
  m.impl("glu", &glu);
  m.impl("store_attend", &store_attend);
  m.impl("kv_encode", &kv_encode);
}
