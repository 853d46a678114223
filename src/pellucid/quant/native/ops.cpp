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

// One query head over S keys and values (rows `ks` / `vs` floats apart): scores q.k * scale (soft-capped,
// hidden where `visible` is false), softmax, then the weighted sum of the values into out (Dv floats).
// `scores` is scratch for S floats. A finite `sink` adds exp(sink - max) to the softmax's denominator only.
void attend_head(const float* q, const float* k, int64_t ks, const float* v, int64_t vs, int64_t S, int64_t D,
                 int64_t Dv, float scale, float cap, const bool* visible, float* scores, float* out,
                 float sink = -INFINITY) {
  float mx = sink;
  for (int64_t s = 0; s < S; ++s) {
    float a = dot(q, k + s * ks, D) * scale;
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
  for (int64_t s = 0; s < S; ++s) {
    const __m512 w = _mm512_set1_ps(scores[s]);
    const float* vr = v + s * vs;
    for (int64_t i = 0; i < Dv; i += 16) {
      const __mmask16 m = tail_mask(Dv - i);
      _mm512_mask_storeu_ps(out + i, m, _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, vr + i),
                                                        _mm512_maskz_loadu_ps(m, out + i)));
    }
  }
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

at::Tensor attend_one(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const c10::optional<at::Tensor>& visible_in, double scale, double softcap,
                      const c10::optional<at::Tensor>& sinks_in) {
  check_last_contiguous(q, "attend_one", "q");
  check_last_contiguous(k, "attend_one", "k");
  check_last_contiguous(v, "attend_one", "v");
  TORCH_CHECK(q.dim() == 4 && q.size(1) == 1 && k.dim() == 4 && v.dim() == 4,
              "pellucid::attend_one: q (B, 1, H, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv)");
  const int64_t B = q.size(0), H = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2), Dv = v.size(3);
  TORCH_CHECK(k.size(0) == B && v.size(0) == B && v.size(1) == Hkv && v.size(2) == S && k.size(3) == D &&
                  H % Hkv == 0, "pellucid::attend_one: shapes do not match");
  at::Tensor visible;
  if (visible_in.has_value()) {
    visible = visible_in->reshape({-1}).to(at::kBool).contiguous();
    TORCH_CHECK(visible.numel() == S, "pellucid::attend_one: visible must have S entries");
  }
  const bool* vis = visible.defined() ? visible.data_ptr<bool>() : nullptr;
  const at::Tensor sinks = sink_logits(sinks_in, H, "attend_one");
  const float* sk = sinks.defined() ? sinks.data_ptr<float>() : nullptr;
  at::Tensor out = at::empty({B, 1, H * Dv}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t group = H / Hkv;
  const float sc = (float)scale, cap = (float)softcap;
  const int64_t work = S * (D + Dv) * group;  // per KV head
  at::parallel_for(0, B * Hkv, std::max<int64_t>(1, 65536 / std::max<int64_t>(work, 1)), [&](int64_t g0, int64_t g1) {
    std::vector<float> scores(S);
    for (int64_t bg = g0; bg < g1; ++bg) {
      const int64_t b = bg / Hkv, g = bg % Hkv;
      const float* kb = kp + b * k.stride(0) + g * k.stride(1);
      const float* vb = vp + b * v.stride(0) + g * v.stride(1);
      for (int64_t j = 0; j < group; ++j) {  // the query heads that share this KV head
        const int64_t h = g * group + j;
        attend_head(qp + b * q.stride(0) + h * q.stride(2), kb, k.stride(2), vb, v.stride(2), S, D, Dv, sc, cap, vis,
                    scores.data(), op + b * H * Dv + h * Dv, sk ? sk[h] : -INFINITY);
      }
    }
  });
  return out;
}

// A decode step's attention for B sequences, each with its own cache: writes sequence b's new key and value
// (k, v: (B, 1, Hkv, D)) into slot slots[b] of its cache (keys[b], values[b]: (1, Hkv, capacity, D)), then
// attends q[b] over the first lengths[b] slots. One op per layer for the whole batch instead of a store and an
// attention per sequence from Python. Slot order does not matter (positions are already rotated into the keys),
// which is what lets a sliding-window ring attend to its slots as they lie.
at::Tensor store_attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::TensorList keys,
                        at::TensorList values, at::IntArrayRef slots, at::IntArrayRef lengths, double scale,
                        double softcap, const c10::optional<at::Tensor>& sinks_in) {
  check_last_contiguous(q, "store_attend", "q");
  check_last_contiguous(k, "store_attend", "k");
  check_last_contiguous(v, "store_attend", "v");
  const int64_t B = q.size(0), H = q.size(2), D = q.size(3), Hkv = k.size(2), Dv = v.size(3);
  TORCH_CHECK(q.size(1) == 1 && k.size(0) == B && v.size(0) == B && (int64_t)keys.size() == B &&
                  (int64_t)values.size() == B && (int64_t)slots.size() == B && (int64_t)lengths.size() == B &&
                  H % Hkv == 0, "pellucid::store_attend: one cache, slot and length per sequence");
  for (int64_t b = 0; b < B; ++b) {
    check_last_contiguous(keys[b], "store_attend", "keys");
    check_last_contiguous(values[b], "store_attend", "values");
    TORCH_CHECK(keys[b].size(1) == Hkv && keys[b].size(3) == D && values[b].size(3) == Dv &&
                    0 <= slots[b] && slots[b] < keys[b].size(2) && 0 < lengths[b] && lengths[b] <= keys[b].size(2),
                "pellucid::store_attend: a cache does not fit its slot or length");
  }
  const at::Tensor sinks = sink_logits(sinks_in, H, "store_attend");
  const float* sk = sinks.defined() ? sinks.data_ptr<float>() : nullptr;
  at::Tensor out = at::empty({B, 1, H * Dv}, q.options());
  float* op = out.data_ptr<float>();
  const int64_t group = H / Hkv;
  const float sc = (float)scale, cap = (float)softcap;
  at::parallel_for(0, B * Hkv, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> scores;
    for (int64_t bg = g0; bg < g1; ++bg) {
      const int64_t b = bg / Hkv, g = bg % Hkv, S = lengths[b];
      const at::Tensor &kc = keys[b], &vc = values[b];
      float* kb = kc.data_ptr<float>() + g * kc.stride(1);
      float* vb = vc.data_ptr<float>() + g * vc.stride(1);
      std::memcpy(kb + slots[b] * kc.stride(2), k.data_ptr<float>() + b * k.stride(0) + g * k.stride(2), D * 4);
      std::memcpy(vb + slots[b] * vc.stride(2), v.data_ptr<float>() + b * v.stride(0) + g * v.stride(2), Dv * 4);
      scores.resize(S);
      for (int64_t j = 0; j < group; ++j) {
        const int64_t h = g * group + j;
        attend_head(q.data_ptr<float>() + b * q.stride(0) + h * q.stride(2), kb, kc.stride(2), vb, vc.stride(2), S,
                    D, Dv, sc, cap, nullptr, scores.data(), op + b * H * Dv + h * Dv, sk ? sk[h] : -INFINITY);
      }
    }
  });
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
  m.def("attend_one(Tensor q, Tensor k, Tensor v, Tensor? visible, float scale, float softcap, Tensor? sinks=None) "
        "-> Tensor");
  m.def("glu(Tensor gate, Tensor up, int act) -> Tensor");
  m.def("store_attend(Tensor q, Tensor k, Tensor v, Tensor[] keys, Tensor[] values, int[] slots, int[] lengths, "
        "float scale, float softcap, Tensor? sinks=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(pellucid, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("rope", &rope);
  m.impl("attend_one", &attend_one);
  m.impl("glu", &glu);
  m.impl("store_attend", &store_attend);
}
