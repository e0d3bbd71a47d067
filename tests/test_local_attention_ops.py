"""The local-attention op: every implementation equals the unfold reference, values and gradients."""
import itertools

import pytest
import torch

from sasa_det.ops import (local_attention_2d, local_attention_2d_reference,
                          local_attention_2d_sliced, local_attention_logits_reference,
                          local_attention_weights_reference, window_validity)

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
    with pytest.raises(ValueError, match=r'k must be .*\(1, 3, 3, 1, 2\).*got \(1, 2, 3, 1, 2\)'):
        local_attention_2d(q, key[:, :2], v, 3)
    with pytest.raises(ValueError, match='query_stride must be a positive integer, got 0'):
        local_attention_2d(q, key, v, 3, query_stride=0)
    with pytest.raises(ValueError, match=r'q must be .*\(1, 2, 2, 1, 2\).*query_stride s = 2, '
                                         r'got \(1, 3, 3, 1, 2\)'):
        local_attention_2d(q, key, v, 3, query_stride=2)
    with pytest.raises(ValueError, match=r'position_bias must be .*\(1, 3, 3\), got \(1, 9\)'):
        local_attention_2d(q, key, v, 3, position_bias=torch.zeros(1, 9))
    with pytest.raises(ValueError, match=r'row_logits must be .*got \(1, 3, 3, 1, 5\)'):
        local_attention_2d(q, key, v, 3, torch.zeros(1, 3, 3, 1, 5))
    with pytest.raises(ValueError, match='input_size .* is needed when k is None'):
        local_attention_weights_reference(q[:, :2, :2], None, 3, query_stride=2)


@pytest.mark.parametrize('implementation', ['auto', 'sliced', 'reference'])
def test_every_implementation_of_the_dispatcher_agrees(implementation):
    args = _inputs(2, 5, 6, 2, 4, 5)
    expected = local_attention_2d_reference(*args[:3], 5, *args[3:])
    actual = local_attention_2d(*args[:3], 5, *args[3:], implementation=implementation)
    torch.testing.assert_close(actual, expected)


# --- position bias and strided queries -------------------------------------------------------

def _strided_inputs(b, h, w, heads, d, k, stride, with_keys=True, with_rel=True, with_bias=True,
                    dtype=torch.float64, seed=0):
    """(q, k, v, row, col, bias): keys and values on the (h, w) grid, queries and relative
    logits on the (ceil(h / s), ceil(w / s)) grid, a (heads, k, k) position bias."""
    g = torch.Generator().manual_seed(seed)
    ho, wo = -(-h // stride), -(-w // stride)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    q, v = rand(b, ho, wo, heads, d), rand(b, h, w, heads, d)
    key = rand(b, h, w, heads, d) if with_keys else None
    if key is None:
        q = q.detach()
    row = rand(b, ho, wo, heads, k) if with_rel else None
    col = rand(b, ho, wo, heads, k) if with_rel else None
    bias = rand(heads, k, k) if with_bias else None
    return q, key, v, row, col, bias


def _loop_attention(q, key, v, k, row, col, bias, stride, padding_mode):
    """The formula written as loops over queries and window offsets, for one batch element:
    query (i, j) at (s*i, s*j) attends to (s*i + u - k//2, s*j + w - k//2)."""
    _, ho, wo, heads, _ = q.shape
    h, w = v.shape[1:3]
    r = k // 2
    out = torch.zeros(1, ho, wo, heads, v.shape[-1], dtype=v.dtype)
    for i, j, n in itertools.product(range(ho), range(wo), range(heads)):
        logits, values = [], []
        for u, x in itertools.product(range(k), range(k)):
            a, c = stride * i + u - r, stride * j + x - r
            inside = 0 <= a < h and 0 <= c < w
            if not inside and padding_mode == 'mask':
                continue
            logit = torch.zeros((), dtype=q.dtype)
            if key is not None and inside:
                logit = logit + q[0, i, j, n] @ key[0, a, c, n]
            if row is not None:
                logit = logit + row[0, i, j, n, u] + col[0, i, j, n, x]
            if bias is not None:
                logit = logit + bias[n, u, x]
            logits.append(logit)
            values.append(v[0, a, c, n] if inside else torch.zeros_like(v[0, 0, 0, n]))
        weights = torch.softmax(torch.stack(logits), 0)
        out[0, i, j, n] = (weights[:, None] * torch.stack(values)).sum(0)
    return out


# (h, w, heads, d, k, stride): even and odd sizes, k > H and W, a stride larger than the map.
STRIDED = [(5, 7, 2, 2, 3, 2), (6, 4, 1, 2, 5, 2), (3, 2, 2, 2, 7, 2), (7, 5, 1, 2, 3, 3),
           (1, 3, 1, 2, 3, 4), (4, 5, 2, 2, 3, 1)]


@pytest.mark.parametrize('shape', STRIDED, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
@pytest.mark.parametrize('with_keys', [True, False], ids=['content', 'no-keys'])
def test_bias_and_stride_reference_and_sliced_equal_the_loop(shape, padding_mode, with_keys):
    """Reference and sliced outputs and gradients with a position bias and strided queries equal
    those of the per-query loop of the formula."""
    h, w, heads, d, k, stride = shape
    q, key, v, row, col, bias = args = _strided_inputs(1, h, w, heads, d, k, stride, with_keys)
    differentiable = [t for t in args if t is not None and t.requires_grad]
    expected = _loop_attention(q, key, v, k, row, col, bias, stride, padding_mode)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, differentiable, grad)
    for fn in (local_attention_2d_reference, local_attention_2d_sliced):
        actual = fn(q, key, v, k, row, col, padding_mode, bias, stride)
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
        for ours, loop in zip(torch.autograd.grad(actual, differentiable, grad), expected_grads):
            torch.testing.assert_close(ours, loop, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('shape', STRIDED, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
@pytest.mark.parametrize('with_keys,with_rel', [(True, True), (True, False), (False, True)])
def test_bias_and_stride_sliced_equals_reference_gradients(shape, padding_mode, with_keys,
                                                           with_rel):
    """Sliced gives the reference's gradients for q, k, v, the relative logits and the bias."""
    h, w, heads, d, k, stride = shape
    args = _strided_inputs(2, h, w, heads, d, k, stride, with_keys, with_rel)
    expected = local_attention_2d_reference(*args[:3], k, *args[3:5], padding_mode, args[5],
                                            stride)
    actual = local_attention_2d_sliced(*args[:3], k, *args[3:5], padding_mode, args[5], stride)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(expected)
    differentiable = [t for t in args if t is not None and t.requires_grad]
    for ours, ref in zip(torch.autograd.grad(actual, differentiable, grad),
                         torch.autograd.grad(expected, differentiable, grad)):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('fn', [local_attention_2d_sliced, local_attention_2d_reference])
@pytest.mark.parametrize('shape,padding_mode,with_keys', [
    ((1, 5, 4, 2, 2, 3, 2), 'mask', True),
    ((1, 3, 3, 1, 2, 5, 2), 'zeros', True),   # k > H and W
    ((1, 4, 3, 2, 2, 3, 1), 'mask', False),
])
def test_bias_and_stride_pass_float64_gradcheck(fn, shape, padding_mode, with_keys):
    """The analytic gradients, the bias's included, match finite differences."""
    *dims, stride = shape
    q, key, v, row, col, bias = _strided_inputs(*dims, stride, with_keys)
    present = [t is not None and t.requires_grad for t in (q, key, v, row, col, bias)]

    def call(*ts):
        it = iter(ts)
        a = [next(it) if p else t for p, t in zip(present, (q, key, v, row, col, bias))]
        return fn(a[0], a[1], a[2], dims[-1], a[3], a[4], padding_mode, a[5], stride)

    tensors = [t for t, p in zip((q, key, v, row, col, bias), present) if p]
    assert torch.autograd.gradcheck(call, tensors, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
def test_weights_are_a_distribution_over_the_window(padding_mode):
    """Weights sum to 1 per query; 'mask' puts no weight outside the image, 'zeros' some; the
    valid mask counts the in-image neighbours of the strided queries."""
    q, key, _, row, col, bias = (t.detach() for t in _strided_inputs(2, 5, 6, 2, 2, 5, 2))
    weights, valid = local_attention_weights_reference(q, key, 5, row, col, padding_mode, bias, 2)
    assert weights.shape == (2, 3, 3, 2, 25) and valid.shape == (3, 3, 1, 25)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 3, 2, dtype=weights.dtype))
    outside = (weights * ~valid).sum(-1)
    if padding_mode == 'mask':
        assert (outside == 0).all()
    else:
        assert (outside[:, 0, 0] > 0).all()
    # Query (0, 0) sits at pixel (0, 0): 3 x 3 of its 5 x 5 window are inside; query (1, 1) at
    # pixel (2, 2) sees rows 0-4 and columns 0-4.
    assert valid[0, 0].sum() == 9 and valid[1, 1].sum() == 25


def test_position_bias_shifts_weights_towards_its_offset():
    """Without keys and relative logits, the weights are softmax(bias) wherever the whole window
    is inside the image: the bias is content-free and the same for every query."""
    bias = torch.randn(2, 3, 3, dtype=torch.float64)
    q = torch.zeros(1, 5, 5, 2, 2, dtype=torch.float64)
    weights, _ = local_attention_weights_reference(q, None, 3, position_bias=bias)
    torch.testing.assert_close(weights[0, 2, 2], torch.softmax(bias.reshape(2, 9), -1))
    torch.testing.assert_close(weights[0, 1, 3], torch.softmax(bias.reshape(2, 9), -1))


def test_auto_routes_strided_queries_and_bias_correctly():
    """'auto' (kernel or sliced, whichever takes the call) agrees with the reference for a
    position bias and for strided queries."""
    for stride in (1, 2):
        args = _strided_inputs(1, 6, 5, 2, 4, 3, stride)
        expected = local_attention_2d_reference(*args[:3], 3, *args[3:5], 'mask', args[5], stride)
        actual = local_attention_2d(*args[:3], 3, *args[3:5], 'mask', 'auto', args[5], stride)
        torch.testing.assert_close(actual, expected)


def test_weights_are_the_softmax_of_the_logits_and_masked_logits_are_minus_infinity():
    torch.manual_seed(0)
    q, key = torch.randn(2, 1, 4, 5, 2, 6, dtype=torch.float64)
    row, col = torch.randn(2, 1, 4, 5, 2, 3, dtype=torch.float64)
    bias = torch.randn(2, 3, 3, dtype=torch.float64)
    logits, valid = local_attention_logits_reference(q, key, 3, row, col, 'mask', bias)
    weights, valid_w = local_attention_weights_reference(q, key, 3, row, col, 'mask', bias)
    assert torch.equal(valid, valid_w)
    assert torch.isneginf(logits[~valid.expand_as(logits)]).all()
    assert torch.isfinite(logits[valid.expand_as(logits)]).all()
    torch.testing.assert_close(weights, logits.softmax(-1), rtol=0, atol=1e-15)
