// Cosine similarity's normalisation of q and k for the SASA layer on CPU (cosine_qk.cpp).
#pragma once

#include <torch/extension.h>

#include <vector>

// projected (B, 3, heads, d, P) contiguous, temperature (heads,): q t / max(|q|, eps) and
// k / max(|k|, eps) as one (2, B, heads, d, P) tensor.
at::Tensor cosine_qk_forward(const at::Tensor& projected, const at::Tensor& temperature,
                             double eps);

// The gradients of q_used and k_used (contiguous (B, heads, d, P)) through the normalisation,
// with d_v, as one (B, 3, heads, d, P) gradient of the projection; and the temperature's (heads,).
std::vector<at::Tensor> cosine_qk_backward(const at::Tensor& d_q_used, const at::Tensor& d_k_used,
                                           const at::Tensor& d_v, const at::Tensor& projected,
                                           const at::Tensor& temperature, double eps);
