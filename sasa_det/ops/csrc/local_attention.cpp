// Fused CPU kernel for local 2D self-attention (SASA), forward and backward.
//
// Contract: sasa_det/ops/reference.py. For query (i, j) at pixel (s*i, s*j) (s = query stride),
// head n and window offset o = (u, w), with neighbour (a, x) = (s*i + u - r, s*j + w - r):
//     logit = q_ij . k_ax [if k] + row_logits[u] + col_logits[w] + bias[n, u, w]
//     y_ij  = sum_o softmax_o(logit) v_ax
// The row and column logits are given tensors, or are made from relative tables while the
// logits are: row_logits[u] = q_ij[:h] . row_table[n, u], col_logits[w] = q_ij[h:] .
// col_table[n, w] (h = d/2), with the tables' gradients from the backward.
// 'mask' excludes out-of-image neighbours from the softmax; 'zeros' keeps them as zero keys/values.
//
// Types. Inputs and outputs are float64, float32, float16 or bfloat16 (the IO type O); all
// arithmetic is in T = at::opmath_type<O> (float for the 16-bit types): inputs are converted
// while they are packed, the attention weights are saved in T, and results are rounded to O
// only when they are written out.
//
// Layout. q, grad_out (B, Ho, Wo, heads, d) and k, v (B, H, W, heads, d) arrive with any
// strides (q, k, v are usually slices of one fused projection). Each is first packed into
// zero-padded rows of T, so that for one query row the k*k neighbour rows are contiguous and every
// inner loop runs over 32-byte SIMD vectors of the queries of that row. Query-grid tensors are
// (B, heads, Ho, d, S) with query j at column P + j, P = ceil(r / s). Key-grid tensors are split
// by column phase, (B, heads, H, s, d, S) with key x = s*m + p at column P + m of phase p, so the
// neighbours x = s*j + w - r of consecutive queries j are consecutive columns of one phase (for
// s = 1 this is one phase with key x at column r + x). Vectorising over queries (not over d)
// keeps all lanes busy for the small head dims of early stages (d = 8) and needs no horizontal
// sums (but for the gradients of the position bias and the tables, one per plane and entry,
// summed over images in a fixed order). Columns j >= Wo up
// to Wv (Wo rounded up to the vector width) are computed and ignored; pads are zero, which is
// exactly 'zeros' padding, and 'mask' sets out-of-image logits to -inf.
//
// Memory. Forward saves only the attention weights (B, heads, Ho, k*k, S) for backward, never a
// per-query k*k*d copy of keys or values: each row's weights are made in the thread's scratch
// and, with a backward to come (save_attn), streamed from there to the saved tensor. Backward
// runs plane by plane (one head of one image), all gathers (no atomics): per query row, dL (the
// logit gradient), d_q, the row/column logit gradients and the plane's sums for the gradients of
// the position bias and the tables; per key row and phase, as soon as its last query row is
// done, d_k and d_v from the queries whose window holds the key. dL lives only in a ring of the
// last k query rows, never in a full-size tensor.
#include <torch/extension.h>

#include "cosine_qk.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <xmmintrin.h>
#endif

namespace {

// 32-byte vectors via GCC vector extensions: one AVX register, or two SSE registers on
// baseline x86-64 (the compiler splits them); no intrinsics, so any GCC/Clang target builds.
// Loads and stores go through an element-aligned vector type rather than memcpy: memcpy counts
// as a char access that may alias anything, which made the compiler reload loop bounds after
// every store.
template <typename T> struct VecType;
template <> struct VecType<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef float unaligned __attribute__((vector_size(32), aligned(4)));
};
template <> struct VecType<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef double unaligned __attribute__((vector_size(32), aligned(8)));
};
template <typename T> using Vec = typename VecType<T>::type;
template <typename T> using VecU = typename VecType<T>::unaligned;
template <typename T> constexpr int64_t kLanes = 32 / sizeof(T);

template <typename T>
inline Vec<T> load(const T* p) { return *reinterpret_cast<const VecU<T>*>(p); }
template <typename T> inline void store(T* p, Vec<T> x) { *reinterpret_cast<VecU<T>*>(p) = x; }
template <typename T> inline Vec<T> splat(T s) { return Vec<T>{} + s; }
template <typename V> inline V vmax(V a, V b) { return a > b ? a : b; }
// {0, 1, ..., lanes - 1}.
template <typename T> inline Vec<T> lane_indices() {
  Vec<T> x;
  for (int l = 0; l < kLanes<T>; ++l) x[l] = T(l);
  return x;
}

// exp(x) for float vectors x <= 0 (the softmax's logit minus its maximum; -inf for masked
// logits), written on vector types so that it vectorises. x = (n + f) ln 2 with n = round(x / ln 2)
// and |f| <= 1/2; 2^f is a degree-6 polynomial (relative error 1.6e-8, fitted to 2^f on
// [-1/2, 1/2]) and 2^n is built in the exponent bits. n comes from one fused multiply-add with
// the constant 1.5 * 2^23 + 127, whose last mantissa bits then hold n + 127 (the float exponent
// of 2^n), so no float-int conversions are needed. exp(x) = 0 below -87 (so exp(-inf) = 0): every
// product computed is then a normal float, and denormal products cost a microcode assist of ~100
// cycles each (it took a third of the forward's time when masked logits hit it).
inline Vec<float> vexp(Vec<float> x) {
  typedef int32_t Int __attribute__((vector_size(32)));
  constexpr float kMagic = 12583039.0f;  // 1.5 * 2^23 + 127
  constexpr float kLog2eHi = 1.44269502162933349609f, kLog2eLo = 1.92596299112661746887e-8f;
  const Vec<float> lo = splat(-87.0f);
  const Vec<float> xc = x < lo ? lo : x;
  const Vec<float> t = xc * kLog2eHi + kMagic;
  const Vec<float> n = t - kMagic;
  const Vec<float> f = (xc * kLog2eHi - n) + xc * kLog2eLo;
  Vec<float> p = 1.5337577497120947e-4f * f + 1.3399859890341759e-3f;
  p = p * f + 9.618519805371761e-3f;
  p = p * f + 5.550329014658928e-2f;
  p = p * f + 2.4022646248340607e-1f;
  p = p * f + 6.931471824645996e-1f;
  p = p * f + 1.0f;
  Int bits;
  std::memcpy(&bits, &t, sizeof(bits));
  bits <<= 23;  // (n + 127) << 23: the float 2^n
  Vec<float> scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < lo ? splat(0.0f) : p * scale;
}

// float64 is for gradcheck: exactness matters, speed does not.
inline Vec<double> vexp(Vec<double> x) {
  for (int l = 0; l < 4; ++l) x[l] = std::exp(x[l]);
  return x;
}

// f(d0, std::integral_constant<int, ND>) for the channel chunks [d0, d0 + ND) of [0, D), ND <= 8.
// The inner loops below keep one vector per channel of a chunk in registers (ND of them, a
// compile-time count so that they stay there), so each vector loaded is used for a whole chunk of
// multiply-adds instead of one: two loads per FMA made the loops load-bound at a quarter of the
// FMA units' rate.
template <typename F>
inline void for_channel_chunks(int64_t D, F&& f) {
  constexpr int kChunk = 8;
  for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
    switch (std::min<int64_t>(kChunk, D - d0)) {
      case 1: f(d0, std::integral_constant<int, 1>{}); break;
      case 2: f(d0, std::integral_constant<int, 2>{}); break;
      case 3: f(d0, std::integral_constant<int, 3>{}); break;
      case 4: f(d0, std::integral_constant<int, 4>{}); break;
      case 5: f(d0, std::integral_constant<int, 5>{}); break;
      case 6: f(d0, std::integral_constant<int, 6>{}); break;
      case 7: f(d0, std::integral_constant<int, 7>{}); break;
      default: f(d0, std::integral_constant<int, 8>{}); break;
    }
  }
}

// acc[e] += a * load(x + e * stride) for the ND channels e of a chunk.
template <typename T, int ND>
inline void fma_channels(Vec<T>* acc, Vec<T> a, const T* x, int64_t stride) {
#pragma GCC unroll 8
  for (int e = 0; e < ND; ++e) acc[e] += a * load(x + e * stride);
}

// f(c, std::integral_constant<int, NC>) for blocks of NC column vectors [c, c + NC * L) covering
// [0, Wv): NC vectors of each of ND channels make NC * ND independent sums, so that chunks of few
// channels (head dims 2 and 4) still keep enough FMAs in flight to cover their latency (one
// vector per channel made each sum one chain of dependent FMAs). Left-over vectors take smaller
// blocks.
template <typename T, int ND, typename F>
inline void for_column_blocks(int64_t Wv, F&& f) {
  constexpr int64_t L = kLanes<T>;
  constexpr int kBlock = ND >= 8 ? 1 : ND >= 4 ? 2 : 4;
  int64_t c = 0;
  if constexpr (kBlock >= 4)
    for (; c + 4 * L <= Wv; c += 4 * L) f(c, std::integral_constant<int, 4>{});
  if constexpr (kBlock >= 2)
    for (; c + 2 * L <= Wv; c += 2 * L) f(c, std::integral_constant<int, 2>{});
  for (; c < Wv; c += L) f(c, std::integral_constant<int, 1>{});
}

// acc[d][c] for all channels d < D and columns c < Wv, in blocks of ND channels x NC column
// vectors: add(s, d0, c) adds into the block's zeroed sums s[j][e] (channel d0 + e, columns
// [c + j * L, c + (j + 1) * L)), which are then stored to acc.
template <typename T, typename Add>
inline void accumulate_blocks(T* acc, int64_t D, int64_t Wv, const Add& add) {
  constexpr int64_t L = kLanes<T>;
  for_channel_chunks(D, [&](int64_t d0, auto nd) {
    constexpr int ND = decltype(nd)::value;
    for_column_blocks<T, ND>(Wv, [&](int64_t c, auto nc) {
      constexpr int NC = decltype(nc)::value;
      Vec<T> s[NC][ND];
      for (int j = 0; j < NC; ++j)
        for (int e = 0; e < ND; ++e) s[j][e] = splat(T(0));
      add(s, d0, c);
      for (int j = 0; j < NC; ++j)
        for (int e = 0; e < ND; ++e) store(acc + (d0 + e) * Wv + c + j * L, s[j][e]);
    });
  });
}

// Smallest number of tasks of `work` multiply-adds each worth a parallel chunk.
inline int64_t grain(int64_t work) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(work, 1));
}

// Division rounding towards -infinity (C++'s rounds towards zero).
inline int64_t floor_div(int64_t a, int64_t b) {
  return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

struct Geometry {
  int64_t B, H, W, heads, D, k, r, KK, s, Ho, Wo, P, Wv, S;
  // Offset of neighbour column w in a packed key row: phase (w - r) mod s, column P + the
  // quotient. For s = 1 it is w.
  std::vector<int64_t> key_col;

  Geometry(const at::Tensor& q, const at::Tensor& v, int64_t kernel_size, int64_t stride,
           int64_t lanes)
      : B(v.size(0)), H(v.size(1)), W(v.size(2)), heads(v.size(3)), D(v.size(4)),
        k(kernel_size), r(kernel_size / 2), KK(kernel_size * kernel_size), s(stride),
        Ho(q.size(1)), Wo(q.size(2)), P((r + stride - 1) / stride), key_col(kernel_size) {
    Wv = (Wo + lanes - 1) / lanes * lanes;
    // Loads reach column Wv - 1 + 2P of a padded row (neighbour columns in forward, query
    // columns in the backward gather).
    S = (Wv + 2 * P + lanes - 1) / lanes * lanes;
    for (int64_t w = 0; w < k; ++w) {
      const int64_t quotient = floor_div(w - r, s);
      key_col[w] = (w - r - quotient * s) * D * S + P + quotient;
    }
  }
  // Tasks per thread chunk: small problems run serially, as waking threads costs more there.
  int64_t task_grain() const { return grain(KK * Wv * D); }
  // Start of query row i of head bn in a packed query-grid tensor: D rows of S columns.
  int64_t query_row(int64_t bn, int64_t i) const { return (bn * Ho + i) * D * S; }
  // Start of key row a of head bn in a packed key-grid tensor: s phases of D rows of S columns.
  int64_t key_row(int64_t bn, int64_t a) const { return (bn * H + a) * s * D * S; }
  int64_t attn_row() const { return KK * S; }  // one (b, n, i) row of the attention weights
  bool key_row_inside(int64_t a) const { return a >= 0 && a < H; }
};

// Denormal floats flushed to zero (FTZ, DAZ) while an object lives, on x86. Tiny attention
// weights (a logit ~60-87 below its row's maximum) times small gradients make denormal products,
// and each one costs a microcode assist of ~100 cycles; flushed, they are zero, which changes no
// result above 1e-38 (float) or 1e-308 (double).
struct FlushDenormals {
#if defined(__SSE2__)
  unsigned int saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Image row i of head n of image b (a query row or a key row): the unit of parallel work.
// `index` = (b * heads + n) * rows + i numbers the rows as the packed tensors store them.
struct RowTask {
  int64_t index, bn, i, b, n;
  RowTask(int64_t t, int64_t rows, int64_t heads)
      : index(t), bn(t / rows), i(t % rows), b(t / rows / heads), n(t / rows % heads) {}
};

// f(task, scratch) for task = 0 .. count - 1, in parallel chunks of at least `grain` tasks, with
// denormals flushed; each chunk owns a zeroed scratch buffer of scratch_size elements of T.
template <typename T, typename F>
void parallel_with_scratch(int64_t count, int64_t grain, int64_t scratch_size, const F& f) {
  at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    std::vector<T> scratch(scratch_size);
    for (int64_t t = begin; t < end; ++t) f(t, scratch.data());
#if defined(__SSE2__)
    _mm_sfence();  // non-temporal stores (stream_copy) are done before the caller reads them
#endif
  });
}

// f(task, scratch) for each of the B * heads * rows image rows.
template <typename T, typename F>
void for_each_row(const Geometry& g, int64_t rows, int64_t scratch_size, const F& f) {
  parallel_with_scratch<T>(g.B * g.heads * rows, g.task_grain(), scratch_size,
                           [&](int64_t t, T* scratch) { f(RowTask(t, rows, g.heads), scratch); });
}

// f(bn, scratch) for each of the B * heads planes (one head of one image).
template <typename T, typename F>
void for_each_plane(const Geometry& g, int64_t scratch_size, const F& f) {
  parallel_with_scratch<T>(g.B * g.heads, (g.task_grain() + g.Ho - 1) / g.Ho, scratch_size, f);
}

// x (B, R, C, heads, m), any strides and floating type -> (B, heads, R, phases, m, width) of T
// with x[b, i, p + phases * j, n, e] at column left + j of phase p and zeros elsewhere. One
// parallel pass writes every padded row whole, so no pad is zeroed separately. The source is read
// with its own strides: when its column stride is 1 (the planar (B, heads, m, R, C) memory that
// the SASA layer's projection produces), each row is one contiguous, vectorised read.
template <typename T>
at::Tensor pack_rows(const at::Tensor& x, int64_t left, int64_t width, int64_t phases = 1) {
  const int64_t B = x.size(0), R = x.size(1), C = x.size(2), heads = x.size(3), m = x.size(4);
  TORCH_INTERNAL_ASSERT(width % kLanes<T> == 0, "packed rows are whole vectors");
  at::Tensor out = at::empty({B, heads, R, phases, m, width},
                             x.options().dtype(c10::CppTypeToScalarType<T>::value));
  T* dst = out.data_ptr<T>();
  const int64_t rows = B * heads * R;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sasa_pack", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    const int64_t sb = x.stride(0), si = x.stride(1), sc = x.stride(2), sn = x.stride(3),
                  se = x.stride(4);
    at::parallel_for(0, rows, grain(phases * m * width), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t i = row % R, n = row / R % heads, b = row / R / heads;
        const scalar_t* in = src + b * sb + i * si + n * sn;
        for (int64_t p = 0; p < phases; ++p) {
          const int64_t cols = p < C ? (C - p + phases - 1) / phases : 0;
          const int64_t step = phases * sc;
          for (int64_t e = 0; e < m; ++e) {
            T* __restrict o = dst + ((row * phases + p) * m + e) * width + left;
            const scalar_t* __restrict x_row = in + p * sc + e * se;
            // Zero vectors over the whole row, then the values: no memset call per pad, which
            // cost more than the copy on the short rows of small maps.
            for (int64_t j = -left; j < width - left; j += kLanes<T>) store(o + j, splat(T(0)));
            if (step == 1)
              for (int64_t j = 0; j < cols; ++j) o[j] = static_cast<T>(x_row[j]);
            else
              for (int64_t j = 0; j < cols; ++j) o[j] = static_cast<T>(x_row[j * step]);
          }
        }
      }
    });
  });
  return out;
}

// q, grad_out (B, Ho, Wo, heads, D) -> zero-padded rows (B, heads, Ho, D, S). The D channel rows
// of an image row are adjacent: with one plane per channel the D rows read together were a
// multiple of 4 KiB apart, fell into the same L1 sets and evicted each other.
template <typename T>
at::Tensor pack_queries(const at::Tensor& x, const Geometry& g) {
  return pack_rows<T>(x, g.P, g.S);
}

// k, v (B, H, W, heads, D) -> zero-padded rows by column phase (B, heads, H, s, D, S).
template <typename T>
at::Tensor pack_keys(const at::Tensor& x, const Geometry& g) {
  return pack_rows<T>(x, g.P, g.S, g.s);
}

// Row or column logits (B, Ho, Wo, heads, k) -> (B, heads, Ho, k, Wv), zero past Wo; undefined
// if absent.
template <typename T>
at::Tensor pack_rel(const std::optional<at::Tensor>& x, const Geometry& g) {
  return x ? pack_rows<T>(*x, 0, g.Wv) : at::Tensor();
}

template <typename T>
const T* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

// A relative table (heads, k, h) as a contiguous tensor of T; undefined if absent.
template <typename T>
at::Tensor table_in(const std::optional<at::Tensor>& table, const at::TensorOptions& opts) {
  return table ? table->to(opts).contiguous() : at::Tensor();
}

// Outputs and input gradients are written in planar memory, (B, heads, m, rows, cols), and
// returned as (B, rows, cols, heads, m) views: each image row of each channel is one contiguous
// run, and the SASA layer reads the output as a contiguous (B, C, rows, cols) tensor.
at::Tensor planar_empty(int64_t B, int64_t rows, int64_t cols, int64_t heads, int64_t m,
                        const at::TensorOptions& options) {
  return at::empty({B, heads, m, rows, cols}, options).permute({0, 3, 4, 1, 2});
}

// Row t.i of head t.n of image t.b of a planar (B, heads, D, rows, cols) output of type O from a
// buffer acc[d][Wv]: acc column m goes to image column first + step * m.
template <typename T, typename O>
inline void unpack_row(O* out, const T* acc, const Geometry& g, const RowTask& t, int64_t rows,
                       int64_t cols, int64_t step = 1, int64_t first = 0) {
  for (int64_t d = 0; d < g.D; ++d) {
    O* o = out + ((t.bn * g.D + d) * rows + t.i) * cols;
    const T* a = acc + d * g.Wv;
    if (step == 1)
      for (int64_t x = 0; x < cols; ++x) o[x] = static_cast<O>(a[x]);
    else
      for (int64_t m = 0, x = first; x < cols; ++m, x += step) o[x] = static_cast<O>(a[m]);
  }
}

// dst[0, n) = src[0, n) for n a multiple of the vector width and dst aligned to 32 bytes, with
// non-temporal stores where the CPU has AVX: the saved attention weights go to memory without
// first being read into cache (which doubled the forward's memory traffic), and without evicting
// the inputs. parallel_with_scratch fences them before its threads finish.
template <typename T>
inline void stream_copy(T* dst, const T* src, int64_t n) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t i = 0; i < n; i += L) {
#if defined(__AVX__)
    if constexpr (std::is_same_v<T, float>)
      _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
    else
      _mm256_stream_pd(dst + i, _mm256_loadu_pd(src + i));
#else
    store(dst + i, load(src + i));
#endif
  }
}

// f(std::integral_constant<int, K>) with K = k for the common window sizes 3, 5 and 7, so that
// loops over a window's columns unroll and keep one value per column in registers, and K = 0
// (size known only at run time) for the others.
template <typename F>
inline void with_window_size(int64_t k, F&& f) {
  switch (k) {
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

// out[o][c] = x_c . y_(s*c + w - r) for o = u*k + w and the Wv queries c of query row i: each
// query's D-vector x (packed query row, read from column P) against its neighbour at offset
// (u, w) in the packed key-grid tensor Y; zero for neighbour rows outside the image. Backward:
// dA from grad_out and V.
template <typename T>
inline void offset_dots(T* out, const T* x_row, const T* Y, const Geometry& g, const RowTask& t) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t c = 0; c < g.Wv; c += L) {
    for_channel_chunks(g.D, [&](int64_t d0, auto nd) {
      constexpr int ND = decltype(nd)::value;
      Vec<T> x[ND];
      for (int e = 0; e < ND; ++e) x[e] = load(x_row + (d0 + e) * g.S + c);
      for (int64_t u = 0; u < g.k; ++u) {
        const int64_t a = g.s * t.i + u - g.r;
        const bool inside = g.key_row_inside(a);
        const T* y_row = inside ? Y + g.key_row(t.bn, a) + d0 * g.S + c : nullptr;
        for (int64_t w = 0; w < g.k; ++w) {
          T* o = out + (u * g.k + w) * g.Wv + c;
          Vec<T> s = d0 == 0 ? splat(T(0)) : load(o);
          if (inside) {
            const T* y = y_row + g.key_col[w];
            for (int e = 0; e < ND; ++e) s += x[e] * load(y + e * g.S);
          }
          store(o, s);
        }
      }
    });
  }
}

// The column mask of the forward's logits ('mask' padding): entry (w, j) is -inf where query
// j's neighbour column s*j + w - r is outside the image, for j < Wo, and 0 elsewhere (columns
// past Wo stay finite, so that no column's logits are all -inf).
template <typename T>
std::vector<T> column_mask(const Geometry& g) {
  std::vector<T> out(g.k * g.Wv, T(0));
  for (int64_t w = 0; w < g.k; ++w)
    for (int64_t j = 0; j < g.Wo; ++j) {
      const int64_t x = g.s * j + w - g.r;
      if (x < 0 || x >= g.W) out[w * g.Wv + j] = -std::numeric_limits<T>::infinity();
    }
  return out;
}

// acc[d][c] = sum_{u, w} weights[u*k + w][c] * X[key row s*i + u - r][d][s*c + w - r]: every
// query's weighted sum over its window of a packed key-grid tensor X, the weights being a saved
// (KK, S) row read from column P. Forward: y from the attention and V; backward: d_q from dL, K.
template <typename T>
inline void window_sum(T* acc, const T* weights, const T* X, const Geometry& g,
                       const RowTask& t) {
  constexpr int64_t L = kLanes<T>;
  accumulate_blocks(acc, g.D, g.Wv, [&]<int NC, int ND>(Vec<T> (&s)[NC][ND], int64_t d0,
                                                       int64_t c) {
    for (int64_t u = 0; u < g.k; ++u) {
      const int64_t a = g.s * t.i + u - g.r;
      if (!g.key_row_inside(a)) continue;  // rows outside the image hold zeros
      const T* w_row = weights + u * g.k * g.S + c;
      const T* x_row = X + g.key_row(t.bn, a) + d0 * g.S + c;
      for (int64_t w = 0; w < g.k; ++w)
#pragma GCC unroll 4
        for (int j = 0; j < NC; ++j)
          fma_channels<T, ND>(s[j], load(w_row + w * g.S + j * L), x_row + g.key_col[w] + j * L,
                              g.S);
    }
  });
}

// The key-side mirror of window_sum for key row a = t.i and the keys x = s*m + p of phase p:
// acc[d][m] = sum of saved[query][u*k + w] * X[query][d] over the queries
// (i, j) = ((a + r - u) / s, (x + r - w) / s) whose window holds key (a, x), i.e. over the u, w
// that make both divisions exact. Consecutive such w are s apart and read query columns one
// apart. Pads and columns past Wo are zero. Backward: d_v from the attention and grad_out, d_k
// from dL and q.
template <typename T, typename SavedRow>
inline void key_gather(T* acc, const SavedRow& saved_row, const T* X, const Geometry& g,
                       const RowTask& t, int64_t p) {
  constexpr int64_t L = kLanes<T>;
  const int64_t w0 = (p + g.r) % g.s, nw = (g.k - w0 + g.s - 1) / g.s;
  const int64_t col = g.P + (p + g.r - w0) / g.s;  // query column of m = 0 at w = w0
  const int64_t u0 = (t.i + g.r) % g.s, i0 = (t.i + g.r - u0) / g.s;
  const int64_t w_step = g.s * g.S - 1;  // next w of the phase: s offsets on, one column back
  accumulate_blocks(acc, g.D, g.Wv, [&]<int NC, int ND>(Vec<T> (&s)[NC][ND], int64_t d0,
                                                       int64_t c) {
    // Query row i = (a + r - u) / s, exact for u = u0, u0 + s, ...; it falls as u rises.
    for (int64_t u = u0, i = i0; u < g.k && i >= 0; u += g.s, --i) {
      if (i >= g.Ho) continue;
      const T* w_col = saved_row(i) + (u * g.k + w0) * g.S + col + c;
      const T* x_col = X + g.query_row(t.bn, i) + d0 * g.S + col + c;
      for (int64_t n = 0; n < nw; ++n)
#pragma GCC unroll 4
        for (int j = 0; j < NC; ++j)
          fma_channels<T, ND>(s[j], load(w_col + n * w_step + j * L), x_col - n + j * L, g.S);
    }
  });
}

// Softmax over the k*k offsets of every query: logit (KK, Wv), each query's maximum in max
// (Wv) -> columns [P, P + Wv) of the row a_row (KK, S), zero past Wo (queries that do not exist);
// its pads are the caller's to keep zero. logit is left holding the exps. Blocks of column
// vectors keep their maxima and sums in registers, and their exps are independent of one another.
template <typename T>
inline void softmax_row(T* a_row, T* logit, const T* max, const Geometry& g) {
  constexpr int64_t L = kLanes<T>;
  for_column_blocks<T, 1>(g.Wv, [&](int64_t c, auto nc) {
    constexpr int NC = decltype(nc)::value;
    Vec<T> m[NC], sum[NC];
    for (int j = 0; j < NC; ++j) m[j] = load(max + c + j * L), sum[j] = splat(T(0));
    for (int64_t o = 0; o < g.KK; ++o)
#pragma GCC unroll 4
      for (int j = 0; j < NC; ++j) {
        T* x = logit + o * g.Wv + c + j * L;
        const Vec<T> e = vexp(load(x) - m[j]);
        store(x, e);
        sum[j] += e;
      }
    // The weights of columns past Wo become zero with their reciprocal sum.
    Vec<T> column = lane_indices<T>() + T(c);
    for (int j = 0; j < NC; ++j, column += T(L))
      sum[j] = column < T(g.Wo) ? T(1) / sum[j] : splat(T(0));
    for (int64_t o = 0; o < g.KK; ++o)
#pragma GCC unroll 4
      for (int j = 0; j < NC; ++j)
        store(a_row + o * g.S + g.P + c + j * L, load(logit + o * g.Wv + c + j * L) * sum[j]);
  });
}

// Softmax backward for one query row: dL = A (dA - sum_o A dA), A read from column P of the saved
// row, dA (KK, Wv); dL goes to columns [P, P + Wv) of the row dl_row (KK, S), whose pads the
// caller keeps zero. dL is zero past Wo, where A is. Blocks of column vectors keep their sums
// in registers (a sum kept in memory made each offset wait for the previous one's store).
template <typename T>
inline void softmax_backward(T* dl_row, const T* a, const T* d_attn, const Geometry& g) {
  constexpr int64_t L = kLanes<T>;
  for_column_blocks<T, 1>(g.Wv, [&](int64_t c, auto nc) {
    constexpr int NC = decltype(nc)::value;
    Vec<T> dot[NC];
    for (int j = 0; j < NC; ++j) dot[j] = splat(T(0));
    for (int64_t o = 0; o < g.KK; ++o)
#pragma GCC unroll 4
      for (int j = 0; j < NC; ++j)
        dot[j] += load(a + o * g.S + c + j * L) * load(d_attn + o * g.Wv + c + j * L);
    for (int64_t o = 0; o < g.KK; ++o)
#pragma GCC unroll 4
      for (int j = 0; j < NC; ++j) {
        const int64_t x = c + j * L;
        store(dl_row + o * g.S + g.P + x,
              load(a + o * g.S + x) * (load(d_attn + o * g.Wv + x) - dot[j]));
      }
  });
}

// The row and column logit gradients of query row t, sums[u] = sum_w dL[u*k + w] and
// sums[k + w] = sum_u dL[u*k + w] (2k, Wv), dL read from column P of its saved row; copied to
// the planar (B, heads, k, Ho, Wo) outputs d_row and d_col where they are given.
template <typename T>
inline void relative_grads(T* sums, T* d_row, T* d_col, const T* dl, const Geometry& g,
                           const RowTask& t) {
  constexpr int64_t L = kLanes<T>;
  auto put = [&](T* out, int64_t x, int64_t c, Vec<T> value) {
    T* o = out + ((t.bn * g.k + x) * g.Ho + t.i) * g.Wo + c;
    if (c + L <= g.Wo)
      store(o, value);
    else
      for (int64_t l = 0; l < g.Wo - c; ++l) o[l] = value[l];
  };
  for (int64_t x = 0; x < g.k; ++x) {
    for (int64_t c = 0; c < g.Wv; c += L) {
      Vec<T> sr = splat(T(0)), sc = splat(T(0));
      for (int64_t y = 0; y < g.k; ++y) {
        sr += load(dl + (x * g.k + y) * g.S + c);
        sc += load(dl + (y * g.k + x) * g.S + c);
      }
      store(sums + x * g.Wv + c, sr);
      store(sums + (g.k + x) * g.Wv + c, sc);
      if (c >= g.Wo) continue;
      if (d_row) put(d_row, x, c, sr);
      if (d_col) put(d_col, x, c, sc);
    }
  }
}

// The relative tables of a call that makes its row and column logits itself, (heads, k, h) each
// in T, contiguous: the row table meets channels [0, h) of a head's q, the column table channels
// [h, 2h), h = D / 2. Empty (false) where the call is given the logits instead.
template <typename T>
struct RelativeTables {
  const T *row = nullptr, *col = nullptr;
  int64_t h = 0;
  explicit operator bool() const { return row != nullptr; }
  // Head n's table (k, h) of half 0 (rows) or 1 (columns).
  const T* of(int half, int64_t n, int64_t k) const { return (half ? col : row) + n * k * h; }
};

// The tables of contiguous tensors row and col (both undefined, or both (heads, k, D / 2)).
template <typename T>
RelativeTables<T> relative_tables(const at::Tensor& row, const at::Tensor& col,
                                  const Geometry& g) {
  TORCH_CHECK(row.defined() == col.defined(), "row_table and col_table come together");
  if (!row.defined()) return {};
  const std::vector<int64_t> shape{g.heads, g.k, g.D / 2};
  TORCH_CHECK(g.D % 2 == 0 && row.sizes() == shape && col.sizes() == shape,
              "relative tables must be (heads, k, head_dim / 2) for an even head_dim; got ",
              row.sizes(), " and ", col.sizes(), " for ", g.heads, " heads, k ", g.k,
              ", head_dim ", g.D);
  return {row.data_ptr<T>(), col.data_ptr<T>(), g.D / 2};
}

// rel[half * k + u][c] = q_c[half * h + e] . table_half[n][u][e] summed over e < h: the row
// (half 0) and column (half 1) logits (2k, Wv) of query row t from the tables, q_row the packed
// query row read from column P.
template <typename T>
inline void table_logits(T* rel, const T* q_row, const RelativeTables<T>& tables,
                         const Geometry& g, const RowTask& t) {
  constexpr int64_t L = kLanes<T>;
  const int64_t h = tables.h;
  for (int half = 0; half < 2; ++half) {
    const T* table = tables.of(half, t.n, g.k);
    const T* x = q_row + half * h * g.S;
    for (int64_t u = 0; u < g.k; ++u)
      for (int64_t c = 0; c < g.Wv; c += L) {
        Vec<T> s = splat(T(0));
        for (int64_t e = 0; e < h; ++e) s += table[u * h + e] * load(x + e * g.S + c);
        store(rel + (half * g.k + u) * g.Wv + c, s);
      }
  }
}

// The tables' share of the backward for query row t, from its row and column logit gradients
// sums (2k, Wv, of relative_grads) and its packed query row q_row (read from column P): d_q's
// accumulator acc (D, Wv) gains sum_u sums[half * k + u] table_half[n][u][e] in channel
// half * h + e, and the vectors table_acc[(half * k + u) * h + e] (L lanes each, added up per
// plane) gain sums[half * k + u] q[half * h + e].
template <typename T>
inline void table_grads(T* acc, T* table_acc, const T* sums, const T* q_row,
                        const RelativeTables<T>& tables, const Geometry& g, const RowTask& t) {
  constexpr int64_t L = kLanes<T>;
  const int64_t h = tables.h;
  for (int half = 0; half < 2; ++half) {
    const T* table = tables.of(half, t.n, g.k);
    for (int64_t e = 0; e < h; ++e) {
      T* a = acc + (half * h + e) * g.Wv;
      const T* x = q_row + (half * h + e) * g.S;
      for (int64_t c = 0; c < g.Wv; c += L) {
        Vec<T> s = load(a + c);
        const Vec<T> q = load(x + c);
        for (int64_t u = 0; u < g.k; ++u) {
          const Vec<T> d_logit = load(sums + (half * g.k + u) * g.Wv + c);
          s += table[u * h + e] * d_logit;
          T* entry = table_acc + ((half * g.k + u) * h + e) * L;
          store(entry, load(entry) + d_logit * q);
        }
        store(a + c, s);
      }
    }
  }
}

// The position bias's share of the backward for one query row: the vectors bias_acc[o] (L lanes
// each, added up per plane) gain dL[o] of the row's queries, dL read from column P of its saved
// row (pads and columns past Wo hold zeros).
template <typename T>
inline void bias_grads(T* bias_acc, const T* dl, const Geometry& g) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t o = 0; o < g.KK; ++o) {
    Vec<T> s = load(bias_acc + o * L);
    for (int64_t c = 0; c < g.Wv; c += L) s += load(dl + o * g.S + c);
    store(bias_acc + o * L, s);
  }
}

// The positional part of one query row's logits, (row[u] + col[w]) + bias[u*k + w] for offset
// (u, w): row and column logits (k, Wv) of the row (absent ones read a zero vector with stride
// 0), the head's position bias (k, k), and with 'mask' the column mask (k, Wv) of column_mask,
// added to the column logits (null for 'zeros').
template <typename T>
struct PositionalLogits {
  const T *row, *col, *bias, *col_mask;
  int64_t row_stride, col_stride, Wv;
  Vec<T> row_part(int64_t u, int64_t c) const { return load(row + u * row_stride + c); }
  Vec<T> col_part(int64_t w, int64_t c) const {
    const Vec<T> x = load(col + w * col_stride + c);
    return col_mask ? x + load(col_mask + w * Wv + c) : x;
  }
};

// The logits of query row i, logit[o][c] = positional(u, w, c) + q_c . k_(s*c + w - r) for
// o = u*k + w (KK, Wv), with 'mask' -inf for neighbours outside the image, and each query's
// maximum logit in max (Wv). The k column parts of a column vector are computed once and held
// (in registers for K > 0, see with_window_size); offset rows whose key row is outside the
// image are all -inf with 'mask' and only positional with 'zeros' (zero keys).
template <typename T, int K>
inline void logit_row(T* logit, T* max, const T* q_row, const T* Kp,
                      const PositionalLogits<T>& positional, bool mask, const Geometry& g,
                      const RowTask& t) {
  constexpr int64_t L = kLanes<T>;
  const int64_t k = K > 0 ? K : g.k;
  const Vec<T> neg_inf = splat(-std::numeric_limits<T>::infinity());
  for (int64_t c = 0; c < g.Wv; c += L) {
    Vec<T> cols[K > 0 ? K : 1];
    if constexpr (K > 0)
      for (int w = 0; w < K; ++w) cols[w] = positional.col_part(w, c);
    const auto col_part = [&](int64_t w) {
      if constexpr (K > 0) return cols[w];
      else return positional.col_part(w, c);
    };
    Vec<T> running = neg_inf;
    for_channel_chunks(g.D, [&](int64_t d0, auto nd) {
      constexpr int ND = decltype(nd)::value;
      const bool complete = d0 + ND >= g.D;  // the last chunk of channels completes the logits
      Vec<T> x[ND];
      for (int e = 0; e < ND; ++e) x[e] = load(q_row + (d0 + e) * g.S + c);
      for (int64_t u = 0; u < k; ++u) {
        const int64_t a = g.s * t.i + u - g.r;
        const bool row_inside = g.key_row_inside(a);
        T* o = logit + u * k * g.Wv + c;
        if (mask && !row_inside) {
          if (d0 == 0)
            for (int64_t w = 0; w < k; ++w) store(o + w * g.Wv, neg_inf);
          continue;
        }
        const bool dots = Kp && row_inside;
        const T* y_row = dots ? Kp + g.key_row(t.bn, a) + d0 * g.S + c : nullptr;
        const Vec<T> row = positional.row_part(u, c);
        const T* bias = positional.bias + u * k;
#pragma GCC unroll 7
        for (int64_t w = 0; w < k; ++w) {
          Vec<T> s = d0 == 0 ? (row + col_part(w)) + bias[w] : load(o + w * g.Wv);
          if (dots) {
            const T* y = y_row + g.key_col[w];
            for (int e = 0; e < ND; ++e) s += x[e] * load(y + e * g.S);
          }
          store(o + w * g.Wv, s);
          if (complete) running = vmax(running, s);
        }
      }
    });
    store(max + c, running);
  }
}

template <typename T, typename O>
std::vector<at::Tensor> forward_impl(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                     const at::Tensor& v,
                                     const std::optional<at::Tensor>& row_logits,
                                     const std::optional<at::Tensor>& col_logits,
                                     const std::optional<at::Tensor>& row_table,
                                     const std::optional<at::Tensor>& col_table,
                                     const std::optional<at::Tensor>& position_bias,
                                     int64_t kernel_size, int64_t stride, bool mask,
                                     bool save_attn) {
  const Geometry g(q, v, kernel_size, stride, kLanes<T>);
  const auto opts = q.options().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor Q = pack_queries<T>(q, g), V = pack_keys<T>(v, g);
  const at::Tensor K = k ? pack_keys<T>(*k, g) : at::Tensor();
  const at::Tensor R = pack_rel<T>(row_logits, g), C = pack_rel<T>(col_logits, g);
  const at::Tensor row_t = table_in<T>(row_table, opts), col_t = table_in<T>(col_table, opts);
  const RelativeTables<T> tables = relative_tables<T>(row_t, col_t, g);
  const at::Tensor zeros = at::zeros({g.Wv}, opts);
  const at::Tensor bias = position_bias ? position_bias->to(opts).contiguous()
                                        : at::zeros({g.heads, g.k, g.k}, opts);
  at::Tensor out = planar_empty(g.B, g.Ho, g.Wo, g.heads, g.D, q.options());
  const at::Tensor attn = save_attn ? at::empty({g.B, g.heads, g.Ho, g.KK, g.S}, opts)
                                    : at::Tensor();
  const T *Qp = Q.data_ptr<T>(), *Kp = data_or_null<T>(K), *Vp = V.data_ptr<T>();
  const T *Rp = data_or_null<T>(R), *Cp = data_or_null<T>(C), *zp = zeros.data_ptr<T>();
  const T* Bp = bias.data_ptr<T>();
  O* outp = out.data_ptr<O>();
  T* attnp = save_attn ? attn.data_ptr<T>() : nullptr;
  const int64_t row_scratch = (g.KK + g.D + 1 + 2 * g.k) * g.Wv;
  const std::vector<T> col_mask = mask ? column_mask<T>(g) : std::vector<T>();

  for_each_row<T>(g, g.Ho, row_scratch + g.attn_row(),
                  [&](const RowTask& t, T* scratch) {
    T *logit = scratch, *acc = logit + g.KK * g.Wv, *max = acc + g.D * g.Wv, *rel = max + g.Wv;
    const T* q_row = Qp + g.query_row(t.bn, t.i) + g.P;
    const T *row = Rp ? Rp + t.index * g.k * g.Wv : zp, *col = Cp ? Cp + t.index * g.k * g.Wv : zp;
    if (tables) {
      table_logits(rel, q_row, tables, g, t);
      row = rel, col = rel + g.k * g.Wv;
    }
    const PositionalLogits<T> positional{row, col, Bp + t.n * g.KK,
                                         mask ? col_mask.data() : nullptr, row == zp ? 0 : g.Wv,
                                         col == zp ? 0 : g.Wv, g.Wv};
    with_window_size(g.k, [&](auto window) {
      logit_row<T, decltype(window)::value>(logit, max, q_row, Kp, positional, mask, g, t);
    });
    T* a_row = scratch + row_scratch;
    softmax_row(a_row, logit, max, g);
    window_sum(acc, a_row + g.P, Vp, g, t);
    unpack_row(outp, acc, g, t, g.Ho, g.Wo);
    if (save_attn) stream_copy(attnp + t.index * g.attn_row(), a_row, g.attn_row());
  });
  return {out, attn};
}

// Packed inputs and outputs of one backward call; null where absent.
template <typename T, typename O>
struct BackwardData {
  const T *G, *V, *Q, *K, *attn;
  RelativeTables<T> tables;
  T *d_row, *d_col, *d_bias_planes, *d_table_planes;
  O *d_q, *d_k, *d_v;
};

// Scratch of query_row_grads, in values of T: dA (KK, Wv), d_q's accumulator (D, Wv), the row
// and column logit gradients (2k, Wv).
inline int64_t query_scratch(const Geometry& g) { return (g.KK + g.D + 2 * g.k) * g.Wv; }

// The query side of query row t: dA_o = g . v_o, dL = A (dA - sum_o A dA) into dl_row (a (KK, S)
// row), the row and column logit gradients, the row's position-bias gradient, and
// d_q = sum_o dL_o k_o (+ the tables' share). The tables' and the bias's gradients go to the
// plane's accumulators (table_grads, bias_grads).
template <typename T, typename O>
void query_row_grads(const BackwardData<T, O>& p, const Geometry& g, const RowTask& t,
                     T* dl_row, T* scratch, T* table_acc, T* bias_acc) {
  T *d_attn = scratch, *acc = d_attn + g.KK * g.Wv, *sums = acc + g.D * g.Wv;
  offset_dots(d_attn, p.G + g.query_row(t.bn, t.i) + g.P, p.V, g, t);
  softmax_backward(dl_row, p.attn + t.index * g.attn_row() + g.P, d_attn, g);
  if (p.d_row || p.d_col || p.tables) relative_grads(sums, p.d_row, p.d_col, dl_row + g.P, g, t);
  if (p.d_bias_planes) bias_grads(bias_acc, dl_row + g.P, g);
  if (!p.d_q) return;
  if (p.K)
    window_sum(acc, dl_row + g.P, p.K, g, t);
  else
    std::fill(acc, acc + g.D * g.Wv, T(0));
  if (p.tables)
    table_grads(acc, table_acc, sums, p.Q + g.query_row(t.bn, t.i) + g.P, p.tables, g, t);
  unpack_row(p.d_q, acc, g, t, g.Ho, g.Wo);
}

// The key side of key row t, each column phase: d_v = sum A g and d_k = sum dL q over the
// queries whose window holds the key; dl_row(i) is query row i's dL. `acc` holds D * Wv values.
template <typename T, typename O, typename DlRow>
void key_row_grads(const BackwardData<T, O>& p, const Geometry& g, const RowTask& t,
                   const DlRow& dl_row, T* acc) {
  const auto attn_row = [&](int64_t i) { return p.attn + (t.bn * g.Ho + i) * g.attn_row(); };
  for (int64_t phase = 0; phase < std::min(g.s, g.W); ++phase) {
    key_gather(acc, attn_row, p.G, g, t, phase);
    unpack_row(p.d_v, acc, g, t, g.H, g.W, g.s, phase);
    if (p.K) {
      key_gather(acc, dl_row, p.Q, g, t, phase);
      unpack_row(p.d_k, acc, g, t, g.H, g.W, g.s, phase);
    }
  }
}

// Backward, one plane at a time: its query rows in order, and each key row as soon as the last
// query row whose window holds it is done (key row a after query row floor((a + r) / s)), so
// that the logit gradients dL live only in a ring of the last k query rows, in cache, and the
// key side re-reads attention weights that the query side has just brought into cache. Key rows
// are gathered (no atomics), so the result does not depend on the thread count.
template <typename T, typename O>
void backward_planes(const BackwardData<T, O>& p, const Geometry& g) {
  constexpr int64_t L = kLanes<T>;
  const int64_t row_scratch = query_scratch(g), ring_size = g.k * g.attn_row();
  // The plane's sums: both tables of its head, and the position bias.
  const int64_t table_entries = 2 * g.k * p.tables.h, bias_entries = p.d_bias_planes ? g.KK : 0;
  const int64_t entries = table_entries + bias_entries;
  // A key row needs at most floor(2r / s) + 1 <= k consecutive query rows. The ring's pads
  // stay zero: the scratch starts zeroed and dL is written to columns [P, P + Wv) only.
  for_each_plane<T>(g, row_scratch + ring_size + entries * L, [&](int64_t bn, T* scratch) {
    T *ring = scratch + row_scratch, *table_acc = ring + ring_size;
    T* bias_acc = table_acc + table_entries * L;
    std::fill(table_acc, table_acc + entries * L, T(0));
    const auto dl_row = [&](int64_t i) { return ring + i % g.k * g.attn_row(); };
    int64_t next_key = 0;  // the first key row not yet gathered
    for (int64_t i = 0; i < g.Ho; ++i) {
      query_row_grads(p, g, RowTask(bn * g.Ho + i, g.Ho, g.heads), dl_row(i), scratch,
                      table_acc, bias_acc);
      const int64_t done = i + 1 == g.Ho ? g.H : std::min(g.H, g.s * (i + 1) - g.r);
      for (; next_key < done; ++next_key)
        key_row_grads(p, g, RowTask(bn * g.H + next_key, g.H, g.heads), dl_row, scratch);
    }
    // Each sum's lanes added up in order.
    for (int64_t entry = 0; entry < entries; ++entry) {
      T total = 0;
      for (int64_t l = 0; l < L; ++l) total += table_acc[entry * L + l];
      if (entry < table_entries)
        p.d_table_planes[bn * table_entries + entry] = total;
      else
        p.d_bias_planes[bn * bias_entries + entry - table_entries] = total;
    }
  });
}

template <typename T, typename O>
std::vector<at::Tensor> backward_impl(const at::Tensor& grad_out, const at::Tensor& q,
                                      const std::optional<at::Tensor>& k, const at::Tensor& v,
                                      const at::Tensor& attn,
                                      const std::optional<at::Tensor>& row_table,
                                      const std::optional<at::Tensor>& col_table,
                                      int64_t kernel_size, int64_t stride, bool has_row,
                                      bool has_col, bool has_bias) {
  const Geometry g(q, v, kernel_size, stride, kLanes<T>);
  const auto opts = attn.options();
  const at::Tensor row_t = table_in<T>(row_table, opts), col_t = table_in<T>(col_table, opts);
  const RelativeTables<T> tables = relative_tables<T>(row_t, col_t, g);
  const at::Tensor G = pack_queries<T>(grad_out, g), V = pack_keys<T>(v, g);
  const bool has_q = k || tables;  // d_q: from the keys, the tables or both
  const at::Tensor Q = has_q ? pack_queries<T>(q, g) : at::Tensor();
  const at::Tensor K = k ? pack_keys<T>(*k, g) : at::Tensor();
  auto grad = [&](bool present, const at::Tensor& like) {
    return present ? planar_empty(g.B, like.size(1), like.size(2), g.heads, g.D, q.options())
                   : at::Tensor();
  };
  at::Tensor d_q = grad(has_q, q), d_k = grad(k.has_value(), v), d_v = grad(true, v);
  // Row/column logit gradients are in T (the caller converts them).
  auto rel_grad = [&](bool present) {
    return present ? planar_empty(g.B, g.Ho, g.Wo, g.heads, g.k, opts) : at::Tensor();
  };
  at::Tensor d_row = rel_grad(has_row), d_col = rel_grad(has_col);
  // Per plane gradients of the bias and of both tables, added up over images below (a fixed
  // order: repeatable).
  at::Tensor d_bias_planes = has_bias ? at::empty({g.B, g.heads, g.KK}, opts) : at::Tensor();
  at::Tensor d_table_planes = at::empty({g.B, g.heads, 2, g.k, tables.h}, opts);
  const BackwardData<T, O> p{G.data_ptr<T>(), V.data_ptr<T>(), data_or_null<T>(Q),
                             data_or_null<T>(K), attn.data_ptr<T>(), tables,
                             has_row ? d_row.data_ptr<T>() : nullptr,
                             has_col ? d_col.data_ptr<T>() : nullptr,
                             has_bias ? d_bias_planes.data_ptr<T>() : nullptr,
                             d_table_planes.data_ptr<T>(),
                             has_q ? d_q.data_ptr<O>() : nullptr, k ? d_k.data_ptr<O>() : nullptr,
                             d_v.data_ptr<O>()};
  backward_planes(p, g);
  at::Tensor d_bias, d_row_table, d_col_table;
  if (has_bias) d_bias = d_bias_planes.sum(0).view({g.heads, g.k, g.k});
  if (tables) {
    const at::Tensor d_tables = d_table_planes.sum(0);  // (heads, 2, k, h)
    d_row_table = d_tables.select(1, 0), d_col_table = d_tables.select(1, 1);
  }
  return {d_q, d_k, d_v, d_row, d_col, d_bias, d_row_table, d_col_table};
}

void check_inputs(const at::Tensor& q, const std::optional<at::Tensor>& k, const at::Tensor& v,
                  int64_t kernel_size, int64_t stride) {
  TORCH_CHECK(q.device().is_cpu() && v.device().is_cpu(), "sasa_det CPU kernel: CPU tensors only");
  TORCH_CHECK(kernel_size > 0 && kernel_size % 2 == 1, "kernel_size must be odd and positive");
  TORCH_CHECK(stride >= 1, "query_stride must be positive");
  TORCH_CHECK(q.dim() == 5 && v.dim() == 5 && q.size(0) == v.size(0) && q.size(3) == v.size(3) &&
                  q.size(4) == v.size(4) && q.size(1) == (v.size(1) + stride - 1) / stride &&
                  q.size(2) == (v.size(2) + stride - 1) / stride,
              "q must be (B, ceil(H/s), ceil(W/s), heads, d) for v (B, H, W, heads, d)");
  TORCH_CHECK(!k || k->sizes() == v.sizes(), "k must have the shape of v");
  TORCH_CHECK(v.scalar_type() == q.scalar_type() && (!k || k->scalar_type() == q.scalar_type()),
              "q, k and v must have one dtype");
}

}  // namespace

std::vector<at::Tensor> local_attention_forward(const at::Tensor& q,
                                                const std::optional<at::Tensor>& k,
                                                const at::Tensor& v,
                                                const std::optional<at::Tensor>& row_logits,
                                                const std::optional<at::Tensor>& col_logits,
                                                const std::optional<at::Tensor>& row_table,
                                                const std::optional<at::Tensor>& col_table,
                                                const std::optional<at::Tensor>& position_bias,
                                                int64_t kernel_size, int64_t stride, bool mask,
                                                bool save_attn) {
  check_inputs(q, k, v, kernel_size, stride);
  TORCH_CHECK(!(row_table && (row_logits || col_logits)),
              "give the row and column logits or their tables, not both");
  TORCH_CHECK(!position_bias || position_bias->numel() == q.size(3) * kernel_size * kernel_size,
              "position_bias must be (heads, k, k)");
  return AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, q.scalar_type(), "sasa_local_attention_forward", [&] {
        return forward_impl<at::opmath_type<scalar_t>, scalar_t>(
            q, k, v, row_logits, col_logits, row_table, col_table, position_bias, kernel_size,
            stride, mask, save_attn);
      });
}

std::vector<at::Tensor> local_attention_backward(const at::Tensor& grad_out, const at::Tensor& q,
                                                 const std::optional<at::Tensor>& k,
                                                 const at::Tensor& v, const at::Tensor& attn,
                                                 const std::optional<at::Tensor>& row_table,
                                                 const std::optional<at::Tensor>& col_table,
                                                 int64_t kernel_size, int64_t stride,
                                                 bool has_row, bool has_col, bool has_bias) {
  check_inputs(q, k, v, kernel_size, stride);
  return AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, q.scalar_type(), "sasa_local_attention_backward", [&] {
        using T = at::opmath_type<scalar_t>;
        TORCH_CHECK(attn.scalar_type() == c10::CppTypeToScalarType<T>::value &&
                        attn.is_contiguous(),
                    "attn must be the contiguous weights saved by forward");
        return backward_impl<T, scalar_t>(grad_out, q, k, v, attn, row_table, col_table,
                                          kernel_size, stride, has_row, has_col, has_bias);
      });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &local_attention_forward,
        "local attention forward (q, k, v, row_logits, col_logits, row_table, col_table, "
        "position_bias, kernel_size, stride, mask, save_attn) -> (out (B,Ho,Wo,heads,d), attn "
        "(B,heads,Ho,k*k,S) if save_attn else None)");
  m.def("backward", &local_attention_backward,
        "local attention backward (grad_out, q, k, v, attn, row_table, col_table, kernel_size, "
        "stride, has_row, has_col, has_bias) -> (d_q, d_k, d_v, d_row_logits, d_col_logits, "
        "d_position_bias, d_row_table, d_col_table)");
  m.def("cosine_qk_forward", &cosine_qk_forward,
        "cosine similarity's q and k (projected (B,3,heads,d,P), temperature (heads,), eps) -> "
        "(2,B,heads,d,P)");
  m.def("cosine_qk_backward", &cosine_qk_backward,
        "(d_q_used, d_k_used, d_v, projected, temperature, eps) -> (d_projected (B,3,heads,d,P), "
        "d_temperature (heads,))");
}
