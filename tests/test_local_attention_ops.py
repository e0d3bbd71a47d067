"""The local-attention op: every implementation equals the unfold reference, values and gradients."""
import itertools

import pytest
import torch

from sasa_det.ops import (local_attention_2d, local_attention_2d_reference,
                          local_attention_2d_sliced, window_validity)

# (batch, height, width, heads, head_dim, kernel_size): borders, odd sizes, k > H and W, batch 1.
SHAPES = [
    (2, 5, 7, 2, 4, 3),
    (1, 6, 5, 1, 2, 5),
    (2, 3, 4, 2, 4, 7),   # window larger than the map in both directions
    (1, 1, 1, 1, 2, 3),   # a single pixel attends only to itself
    (1, 9, 2, 3, 2, 9),
]


def _inputs(b, h, w, heads, d, k, with_keys=True, with_rel=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    q, v = rand(b, h, w, heads, d), rand(b, h, w, heads, d)
    key = rand(b, h, w, heads, d) if with_keys else None
    if key is None:  # without keys the op reads q only through the given row/col logits
        q = q.detach()
    row = rand(b, h, w, heads, k) if with_rel else None
    col = rand(b, h, w, heads, k) if with_rel else None
    return q, key, v, row, col


def _gradcheck(fn, q, k, v, row, col, kernel_size, padding_mode):
    tensors = [t for t in (q, k, v, row, col) if t is not None and t.requires_grad]
    present = [t is not None and t.requires_grad for t in (q, k, v, row, col)]

    def call(*ts):
        it = iter(ts)
        args = [next(it) if p else t for p, t in zip(present, (q, k, v, row, col))]
        return fn(args[0], args[1], args[2], kernel_size, args[3], args[4], padding_mode)

    return torch.autograd.gradcheck(call, tensors, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
@pytest.mark.parametrize('with_keys,with_rel', [(True, True), (True, False), (False, True)])
def test_sliced_equals_reference_in_values_and_gradients(shape, padding_mode, with_keys, with_rel):
    args = _inputs(*shape, with_keys=with_keys, with_rel=with_rel)
    k = shape[-1]
    expected = local_attention_2d_reference(*args[:3], k, *args[3:], padding_mode)
    actual = local_attention_2d_sliced(*args[:3], k, *args[3:], padding_mode)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)

    grad = torch.randn_like(expected)
    differentiable = [t for t in args if t is not None and t.requires_grad]
    ref_grads = torch.autograd.grad(expected, differentiable, grad)
    our_grads = torch.autograd.grad(actual, differentiable, grad)
    for ours, ref in zip(our_grads, ref_grads):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('fn', [local_attention_2d_sliced, local_attention_2d_reference])
@pytest.mark.parametrize('shape,padding_mode,with_keys', [
    ((2, 3, 4, 2, 2, 3), 'mask', True),
    ((1, 2, 3, 1, 2, 5), 'zeros', True),   # k > H and W
    ((1, 3, 3, 2, 2, 3), 'mask', False),
])
def test_gradients_pass_float64_gradcheck(fn, shape, padding_mode, with_keys):
    args = _inputs(*shape, with_keys=with_keys)
    assert _gradcheck(fn, *args, shape[-1], padding_mode)


def test_reference_matches_the_formula_written_as_loops():
    """y_ij = sum_ab softmax_ab(q_ij.k_ab + row[u] + col[w]) v_ab over in-image neighbours."""
    b, h, w, heads, d, k = 1, 4, 5, 2, 2, 3
    q, key, v, row, col = (t.detach() if t is not None else None for t in _inputs(b, h, w, heads, d, k))
    r = k // 2
    expected = torch.zeros_like(v)
    for i, j, n in itertools.product(range(h), range(w), range(heads)):
        logits, values = [], []
        for u, x in itertools.product(range(k), range(k)):
            a, c = i + u - r, j + x - r
            if 0 <= a < h and 0 <= c < w:
                logits.append(q[0, i, j, n] @ key[0, a, c, n] + row[0, i, j, n, u] + col[0, i, j, n, x])
                values.append(v[0, a, c, n])
        weights = torch.softmax(torch.stack(logits), 0)
        expected[0, i, j, n] = (weights[:, None] * torch.stack(values)).sum(0)
    actual = local_attention_2d_reference(q, key, v, k, row, col, 'mask')
    torch.testing.assert_close(actual, expected)


def test_zero_padding_keeps_outside_neighbours_in_the_softmax():
    # With zero keys outside, a corner pixel's output is shrunk towards 0 compared to masking.
    q, key, v, _, _ = (t.detach() if t is not None else None for t in _inputs(1, 4, 4, 1, 2, 3))
    v = v.abs() + 1.0
    masked = local_attention_2d_reference(q, key, v, 3, padding_mode='mask')
    zeros = local_attention_2d_reference(q, key, v, 3, padding_mode='zeros')
    assert (zeros[0, 0, 0] < masked[0, 0, 0]).all()
    torch.testing.assert_close(zeros[0, 1:3, 1:3], masked[0, 1:3, 1:3])  # interior unchanged


def test_window_validity_counts_in_image_neighbours():
    valid = window_validity(4, 6, 3)
    assert valid.shape == (4, 6, 9)
    assert valid[0, 0].sum() == 4 and valid[0, 3].sum() == 6 and valid[2, 3].sum() == 9


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_finite_outputs_with_float32_softmax(dtype):
    # Logits of this size overflow float16 (max 65504) unless accumulated in float32.
    q, key, v, row, col = (t.detach() for t in _inputs(1, 6, 6, 2, 8, 5, dtype=torch.float32))
    q, key = q * 100, key * 100
    out = local_attention_2d_sliced(q.to(dtype), key.to(dtype), v.to(dtype), 5, row.to(dtype),
                                    col.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_dispatcher_rejects_bad_arguments():
    q, key, v, _, _ = _inputs(1, 3, 3, 1, 2, 3)
    with pytest.raises(ValueError, match='kernel_size must be a positive odd integer, got 4'):
        local_attention_2d(q, key, v, 4)
    with pytest.raises(ValueError, match="padding_mode must be one of .*'reflect'"):
        local_attention_2d(q, key, v, 3, padding_mode='reflect')
    with pytest.raises(ValueError, match="implementation must be one of .*'cuda'"):
        local_attention_2d(q, key, v, 3, implementation='cuda')
    with pytest.raises(ValueError, match='matching leading dims'):
        local_attention_2d(q, key[:, :2], v, 3)


@pytest.mark.parametrize('implementation', ['auto', 'sliced', 'reference'])
def test_every_implementation_of_the_dispatcher_agrees(implementation):
    args = _inputs(2, 5, 6, 2, 4, 5)
    expected = local_attention_2d_reference(*args[:3], 5, *args[3:])
    actual = local_attention_2d(*args[:3], 5, *args[3:], implementation=implementation)
    torch.testing.assert_close(actual, expected)
