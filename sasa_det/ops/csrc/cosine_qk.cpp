// Cosine similarity's normalisation of q and k, forward and backward, one pass each.
//
// For the fused projection x = [q; k; v] of a SASA layer, (B, 3, heads, d, P) with P pixels, and
// per head a temperature t:
//     q_used = q t / max(|q|, eps),   k_used = k / max(|k|, eps)
// with the norms over the d channels of each head and pixel. The backward of y = x f with
// f = t / max(|x|, eps) is
//     dx = f (dy - x (x . dy) / |x|^2)   (dx = f dy where the norm is clamped)
//     dt = sum over images and pixels of (q . dq_used) / max(|q|, eps)
// and writes dq, dk and the given dv into one (B, 3, heads, d, P) gradient of the projection.
// Composed of PyTorch ops these are about a dozen passes over q and k in each direction; here
// each is one, in blocks of pixels that stay in registers and L1.
#include "cosine_qk.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// Pixels per block: the block's d rows of channels and its per-pixel sums stay in L1.
constexpr int64_t kBlock = 64;

// (B, 3, heads, d, P) planes of q (part 0) and k (part 1): plane (part, b, n) starts at
// ((b * 3 + part) * heads + n) * d * P.
struct Planes {
  int64_t B, heads, d, P;
  explicit Planes(const at::Tensor& x)
      : B(x.size(0)), heads(x.size(2)), d(x.size(3)), P(x.size(4)) {}
  int64_t count() const { return 2 * B * heads; }  // q's and k's planes
  // Plane index u = (part * B + b) * heads + n.
  int64_t part(int64_t u) const { return u / (B * heads); }
  int64_t image(int64_t u) const { return u / heads % B; }
  int64_t head(int64_t u) const { return u % heads; }
  int64_t offset(int64_t u) const {
    return ((image(u) * 3 + part(u)) * heads + head(u)) * d * P;
  }
  int64_t grain() const { return std::max<int64_t>(1, 16384 / std::max<int64_t>(d * P, 1)); }
};

void check_projection(const at::Tensor& x, const at::Tensor& temperature) {
  TORCH_CHECK(x.dim() == 5 && x.size(1) == 3 && x.is_contiguous(),
              "projected must be the contiguous (B, 3, heads, d, P) projection");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "cosine_qk: float32 or float64 only");
  TORCH_CHECK(temperature.dim() == 1 && temperature.size(0) == x.size(2) &&
                  temperature.is_contiguous() && temperature.scalar_type() == x.scalar_type(),
              "temperature must be contiguous (heads,) of the projection's dtype");
}

template <typename T>
void forward_impl(const T* x, const T* temperature, T* out, const Planes& g, T eps2) {
  at::parallel_for(0, g.count(), g.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const T* src = x + g.offset(u);
      T* dst = out + u * g.d * g.P;
      const T t = g.part(u) == 0 ? temperature[g.head(u)] : T(1);
      for (int64_t p0 = 0; p0 < g.P; p0 += kBlock) {
        const int64_t n = std::min(kBlock, g.P - p0);
        T factor[kBlock] = {};
        for (int64_t e = 0; e < g.d; ++e) {
          const T* row = src + e * g.P + p0;
          for (int64_t p = 0; p < n; ++p) factor[p] += row[p] * row[p];
        }
        for (int64_t p = 0; p < n; ++p)
          factor[p] = t * (T(1) / std::sqrt(std::max(factor[p], eps2)));
        for (int64_t e = 0; e < g.d; ++e) {
          const T* row = src + e * g.P + p0;
          T* out_row = dst + e * g.P + p0;
          for (int64_t p = 0; p < n; ++p) out_row[p] = row[p] * factor[p];
        }
      }
    }
  });
}

// dx of one plane into d_x; returns the plane's sum of (x . dy) / max(|x|, eps).
template <typename T>
T backward_plane(const T* x, const T* dy, T* d_x, const Planes& g, T t, T eps2) {
  T scale_sum = 0;
  for (int64_t p0 = 0; p0 < g.P; p0 += kBlock) {
    const int64_t n = std::min(kBlock, g.P - p0);
    T squares[kBlock] = {}, dots[kBlock] = {}, factor[kBlock], radial[kBlock];
    for (int64_t e = 0; e < g.d; ++e)
      for (int64_t p = 0; p < n; ++p) {
        const T xv = x[e * g.P + p0 + p];
        squares[p] += xv * xv;
        dots[p] += xv * dy[e * g.P + p0 + p];
      }
    for (int64_t p = 0; p < n; ++p) {
      const T inv_norm = T(1) / std::sqrt(std::max(squares[p], eps2));
      factor[p] = t * inv_norm;
      radial[p] = squares[p] > eps2 ? dots[p] * inv_norm * inv_norm : T(0);
      scale_sum += dots[p] * inv_norm;
    }
    for (int64_t e = 0; e < g.d; ++e)
      for (int64_t p = 0; p < n; ++p) {
        const int64_t i = e * g.P + p0 + p;
        d_x[i] = (dy[i] - x[i] * radial[p]) * factor[p];
      }
  }
  return scale_sum;
}

template <typename T>
void backward_impl(const T* x, const T* d_q, const T* d_k, const T* d_v, const T* temperature,
                   T* d_x, T* plane_sums, const Planes& g, T eps2) {
  const int64_t plane = g.d * g.P, part_size = g.heads * plane;  // one image's q, k or v
  at::parallel_for(0, g.count() + g.B, g.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      if (u >= g.count()) {  // d v: image b's part 2, copied
        const int64_t b = u - g.count();
        std::copy(d_v + b * part_size, d_v + (b + 1) * part_size, d_x + (b * 3 + 2) * part_size);
        continue;
      }
      const bool is_q = g.part(u) == 0;
      const int64_t grad_offset = (g.image(u) * g.heads + g.head(u)) * plane;
      const T t = is_q ? temperature[g.head(u)] : T(1);
      const T sum = backward_plane(x + g.offset(u), (is_q ? d_q : d_k) + grad_offset,
                                   d_x + g.offset(u), g, t, eps2);
      if (is_q) plane_sums[u] = sum;  // u = b * heads + n for part 0
    }
  });
}

}  // namespace

at::Tensor cosine_qk_forward(const at::Tensor& projected, const at::Tensor& temperature,
                             double eps) {
  check_projection(projected, temperature);
  const Planes g(projected);
  at::Tensor out = at::empty({2, g.B, g.heads, g.d, g.P}, projected.options());
  AT_DISPATCH_FLOATING_TYPES(projected.scalar_type(), "sasa_cosine_qk_forward", [&] {
    forward_impl<scalar_t>(projected.data_ptr<scalar_t>(), temperature.data_ptr<scalar_t>(),
                           out.data_ptr<scalar_t>(), g, static_cast<scalar_t>(eps * eps));
  });
  return out;
}

std::vector<at::Tensor> cosine_qk_backward(const at::Tensor& d_q_used,
                                           const at::Tensor& d_k_used, const at::Tensor& d_v,
                                           const at::Tensor& projected,
                                           const at::Tensor& temperature, double eps) {
  check_projection(projected, temperature);
  const Planes g(projected);
  for (const at::Tensor* grad : {&d_q_used, &d_k_used, &d_v})
    TORCH_CHECK(grad->is_contiguous() && grad->numel() == g.B * g.heads * g.d * g.P &&
                    grad->scalar_type() == projected.scalar_type(),
                "d_q_used, d_k_used and d_v must be contiguous (B, heads, d, P) gradients of "
                "the projection's dtype");
  at::Tensor d_projected = at::empty_like(projected);
  at::Tensor plane_sums = at::empty({g.B, g.heads}, projected.options());
  AT_DISPATCH_FLOATING_TYPES(projected.scalar_type(), "sasa_cosine_qk_backward", [&] {
    backward_impl<scalar_t>(projected.data_ptr<scalar_t>(), d_q_used.data_ptr<scalar_t>(),
                            d_k_used.data_ptr<scalar_t>(), d_v.data_ptr<scalar_t>(),
                            temperature.data_ptr<scalar_t>(), d_projected.data_ptr<scalar_t>(),
                            plane_sums.data_ptr<scalar_t>(), g, static_cast<scalar_t>(eps * eps));
  });
  // The temperature's gradient: the planes' sums added over images in order (repeatable).
  return {d_projected, plane_sums.sum(0)};
}
