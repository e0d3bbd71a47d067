"""The fused C++ CPU kernel equals the unfold reference, and the op falls back without it.

The kernel is compiled once per session on first use (about a minute on a 2-core machine, then
cached by torch). Where it cannot be built, the kernel tests skip and the fallback tests still run.
"""
import warnings

import pytest
import torch
import torch.utils.cpp_extension

from sasa_det.layers import LocalSelfAttention2d
from sasa_det.ops import cpu_kernel, local_attention_2d, local_attention_2d_reference


@pytest.fixture(scope='module')
def kernel():
    if not cpu_kernel.is_available():
        pytest.skip('the C++ CPU kernel could not be built here')
    return cpu_kernel


def make_inputs(b, h, w, heads, d, kernel_size, has_k=True, has_rel=True, dtype=torch.float64,
                seed=0, has_bias=False):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()

    q = rand(b, h, w, heads, d)
    k = rand(b, h, w, heads, d) if has_k else None
    v = rand(b, h, w, heads, d)
    row = rand(b, h, w, heads, kernel_size) if has_rel else None
    col = rand(b, h, w, heads, kernel_size) if has_rel else None
    if not has_bias:
        return q, k, v, row, col
    return q, k, v, row, col, rand(heads, kernel_size, kernel_size)


def values_and_grads(fn, inputs, kernel_size, padding_mode, seed=1, grad_dtype=None,
                     query_stride=1):
    """[output, *input gradients] for a random output gradient, which is first rounded to
    grad_dtype if given (so that two runs in different dtypes get the same one)."""
    q, k, v, row, col, *bias = inputs
    out = fn(q, k, v, kernel_size, row, col, padding_mode, position_bias=bias[0] if bias else None,
             query_stride=query_stride)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64).to(grad_dtype or out.dtype).to(out.dtype)
    leaves = [t for t in inputs if t is not None]
    # allow_unused: with k=None, q does not enter the op (its positional logits come precomputed).
    return [out, *torch.autograd.grad(out, leaves, grad_out, allow_unused=True)]


# (B, H, W, heads, d, k): borders everywhere; odd, non-square sizes; k > H and W; batch 1;
# W past one SIMD vector (8 floats) with a remainder.
SHAPES = [(1, 5, 7, 1, 4, 3), (2, 9, 4, 2, 6, 5), (1, 3, 4, 2, 4, 7), (1, 2, 11, 3, 2, 9),
          (2, 6, 19, 2, 4, 5)]


@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('has_k,has_rel', [(True, True), (False, True), (True, False)],
                         ids=['content+rel', 'rel-only', 'content-only'])
@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
def test_kernel_matches_reference_float64(kernel, shape, has_k, has_rel, padding_mode):
    """Values and all input gradients equal the unfold reference to float64 round-off."""
    *dims, kernel_size = shape
    inputs = make_inputs(*dims, kernel_size, has_k, has_rel)
    expected = values_and_grads(local_attention_2d_reference, inputs, kernel_size, padding_mode)
    actual = values_and_grads(kernel.local_attention_2d_cpu, inputs, kernel_size, padding_mode)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert (a is None) == (e is None)
        if e is not None:
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('has_k,has_rel,padding_mode,shape',
                         [(True, True, 'mask', (1, 3, 4, 2, 4, 5)),
                          (True, True, 'zeros', (2, 4, 3, 1, 2, 3)),
                          (False, True, 'mask', (1, 3, 5, 2, 2, 7)),
                          (True, False, 'zeros', (1, 4, 2, 1, 4, 3))])
def test_kernel_gradcheck(kernel, has_k, has_rel, padding_mode, shape):
    """The analytic backward matches finite differences (torch.autograd.gradcheck, float64)."""
    *dims, kernel_size = shape
    inputs = make_inputs(*dims, kernel_size, has_k, has_rel)
    present = [t for t in inputs if t is not None]

    def fn(*tensors):
        it = iter(tensors)
        q, k, v, row, col = (next(it) if t is not None else None for t in inputs)
        return kernel.local_attention_2d_cpu(q, k, v, kernel_size, row, col, padding_mode)

    assert torch.autograd.gradcheck(fn, present, eps=1e-6, atol=1e-6, fast_mode=True)


def test_kernel_float32_realistic_shape(kernel):
    """float32 at a ResNet stage-like shape agrees with the float64 reference to ~1e-5."""
    inputs64 = make_inputs(2, 28, 28, 8, 16, 7)
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    expected = values_and_grads(local_attention_2d_reference, inputs64, 7, 'mask')
    actual = values_and_grads(kernel.local_attention_2d_cpu, inputs32, 7, 'mask')
    for a, e in zip(actual, expected):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
def test_kernel_softmax_shift_is_the_maximum_of_complete_logits(kernel, padding_mode):
    """At head dim 16 (two chunks of 8 channels) with q . k = +92 over the first chunk and -92
    over the second, the logits are small but their first-chunk partial sums are not: float32
    outputs are finite and equal the float64 reference's only if each query's softmax maximum
    is taken over complete logits (a partial sum of 92 as the shift underflows every exp)."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 6, 9, 2, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    q = 3.4 + 0.1 * q
    k = (3.4 + 0.1 * k) * torch.cat([torch.ones(8), -torch.ones(8)]).double()
    expected = local_attention_2d_reference(q, k, v, 5, padding_mode=padding_mode)
    actual = kernel.local_attention_2d_cpu(q.float(), k.float(), v.float(), 5,
                                           padding_mode=padding_mode)
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual.double(), expected, rtol=1e-4, atol=1e-4)


def test_kernel_accepts_strided_slices_of_fused_projection(kernel):
    """q, k, v as non-contiguous slices of one (B, H, W, 3, heads, d) tensor, as the layer makes
    them, give the reference's values and gradients (the kernel reads strides, no copies)."""
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 6, 9, 3, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    rel = torch.randn(2, 6, 9, 2, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 6, 9, 2, 4, generator=gen, dtype=torch.float64)
    results = []
    for fn in (local_attention_2d_reference, kernel.local_attention_2d_cpu):
        q, k, v = qkv.unbind(3)
        out = fn(q, k, v, 5, rel[..., :5], rel[..., 5:], 'mask')
        results.append([out, *torch.autograd.grad(out, (qkv, rel), grad_out)])
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_dispatcher_uses_kernel_for_every_cpu_floating_type(kernel, monkeypatch):
    """implementation='auto' runs the kernel for float64/32/16 and bfloat16 CPU tensors (the
    16-bit types of CPU autocast included) and gives the reference's result."""
    calls = []
    original = kernel.local_attention_2d_cpu
    monkeypatch.setattr(kernel, 'local_attention_2d_cpu',
                        lambda *args: calls.append(args[0].dtype) or original(*args))
    inputs = make_inputs(1, 5, 6, 2, 4, 3, dtype=torch.float32)
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    for dtype in dtypes:
        q, k, v, row, col = (t.detach().to(dtype) for t in inputs)
        out = local_attention_2d(q, k, v, 3, row, col, implementation='auto')
        expected = local_attention_2d_reference(*(t.double() for t in (q, k, v)), 3,
                                                row.double(), col.double())
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)
    assert calls == dtypes


# One ulp of the 16-bit types, relative: a kernel computing in float32 rounds each result once.
HALF_TOLERANCE = {torch.bfloat16: dict(rtol=2 ** -7, atol=1e-4),
                  torch.float16: dict(rtol=2 ** -10, atol=1e-4)}


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('shape,has_k,has_bias,padding_mode',
                         [((2, 6, 19, 2, 8, 5), True, True, 'mask'),
                          ((1, 5, 7, 2, 4, 3), True, False, 'zeros'),
                          ((1, 3, 4, 2, 4, 7), False, True, 'mask'),
                          ((1, 9, 10, 3, 16, 7), True, True, 'zeros')])
def test_kernel_half_types_match_float64_reference(kernel, dtype, shape, has_k, has_bias,
                                                   padding_mode):
    """bfloat16/float16 inputs: values and all gradients, in the input's dtype, equal the float64
    reference on the same (rounded) inputs to within one rounding of the result, which holds only
    if the kernel accumulates in float32."""
    *dims, kernel_size = shape
    inputs = [t if t is None else t.detach().to(dtype).requires_grad_()
              for t in make_inputs(*dims, kernel_size, has_k, True, has_bias=has_bias)]
    inputs64 = [t if t is None else t.detach().double().requires_grad_() for t in inputs]
    expected = values_and_grads(local_attention_2d_reference, inputs64, kernel_size, padding_mode,
                                grad_dtype=dtype)
    actual = values_and_grads(kernel.local_attention_2d_cpu, inputs, kernel_size, padding_mode)
    for a, e in zip(actual, expected):
        assert (a is None) == (e is None)
        if e is not None:
            assert a.dtype == dtype
            torch.testing.assert_close(a.double(), e, **HALF_TOLERANCE[dtype])


def test_kernel_softmax_weights_are_float_exact_over_the_whole_exp_range(kernel):
    """The saved float32 attention weights equal the float64 softmax of the float32 logits to
    1e-6 relative (the exp's polynomial and the normalisation, over logits down to 80 below the
    row's maximum), and logits more than 87 below it get weight exactly 0."""
    size, height, width = 7, 6, 21
    gen = torch.Generator().manual_seed(0)
    row = torch.rand(1, height, width, 1, size, generator=gen) * -50
    col = torch.rand(1, height, width, 1, size, generator=gen) * -50
    zeros = torch.zeros(1, height, width, 1, 2)
    # No keys, 'zeros' padding: logit[u * k + w] = row[u] + col[w], as the kernel adds them.
    _, attn = kernel._extension.forward(zeros, None, zeros, row, col, None, None, None, size, 1,
                                        False, True)
    weights = attn[0, 0, :, :, size // 2:size // 2 + width].permute(0, 2, 1)
    logits = (row[0, :, :, 0, :, None] + col[0, :, :, 0, None, :]).flatten(2)
    shifted = logits - logits.max(-1, keepdim=True).values
    expected = torch.softmax(shifted.double(), dim=-1)
    inside, cut = shifted > -80, shifted < -87
    assert inside.sum() > 5000 and cut.sum() > 10
    relative = (weights.double() - expected).abs() / expected
    assert relative[inside].max() < 1e-6
    assert (weights[cut] == 0).all()


def test_kernel_float16_logits_beyond_float16_range(kernel):
    """q.k of float16 inputs beyond 1e5 (float16's largest value is 65504) stays finite and
    correct: products and sums are float32."""
    q, k, v, row, col = (t.detach() for t in make_inputs(1, 6, 6, 2, 8, 5))
    q, k = q * 150, k * 150
    half = [t.half() for t in (q, k, v, row, col)]
    assert (torch.einsum('bhwnd,bhwnd->bhwn', q, k).abs().max() > 65504)
    out = kernel.local_attention_2d_cpu(half[0], half[1], half[2], 5, half[3], half[4])
    expected = local_attention_2d_reference(*(t.double() for t in half[:3]), 5,
                                            *(t.double() for t in half[3:]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, **HALF_TOLERANCE[torch.float16])


@pytest.mark.parametrize('shape', [(1, 5, 7, 2, 4, 3), (2, 3, 4, 3, 2, 7), (1, 6, 19, 2, 4, 5)],
                         ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('has_k,has_rel', [(True, True), (False, True), (True, False)],
                         ids=['content+rel', 'rel-only', 'content-only'])
@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
def test_kernel_position_bias_matches_reference_float64(kernel, shape, has_k, has_rel,
                                                        padding_mode):
    """With a (heads, k, k) position bias, values and all gradients (the bias's: a sum of the
    logit gradients over pixels) equal the reference to float64 round-off."""
    *dims, kernel_size = shape
    inputs = make_inputs(*dims, kernel_size, has_k, has_rel, has_bias=True)
    expected = values_and_grads(local_attention_2d_reference, inputs, kernel_size, padding_mode)
    actual = values_and_grads(kernel.local_attention_2d_cpu, inputs, kernel_size, padding_mode)
    for a, e in zip(actual, expected):
        assert (a is None) == (e is None)
        if e is not None:
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_kernel_position_bias_gradcheck(kernel):
    """The bias gradient matches finite differences (float64 gradcheck)."""
    q, k, v, row, col, bias = make_inputs(2, 3, 4, 2, 2, 3, has_bias=True)

    def fn(q, k, v, row, col, bias):
        return kernel.local_attention_2d_cpu(q, k, v, 3, row, col, 'mask', bias)

    assert torch.autograd.gradcheck(fn, (q, k, v, row, col, bias), eps=1e-6, atol=1e-6,
                                    fast_mode=True)


def test_kernel_gradients_repeat_bitwise_across_runs_and_thread_counts(kernel):
    """Every gradient, the position bias's (summed per query row inside the kernel, then over
    rows in a fixed order) included, is bitwise the same on a second backward pass and with one
    thread instead of several: no atomics, no order that depends on scheduling."""
    inputs = make_inputs(2, 13, 21, 3, 4, 5, dtype=torch.float32, has_bias=True)
    threads = torch.get_num_threads()
    try:
        runs = [values_and_grads(kernel.local_attention_2d_cpu, inputs, 5, 'mask')
                for _ in range(2)]
        torch.set_num_threads(1)
        runs.append(values_and_grads(kernel.local_attention_2d_cpu, inputs, 5, 'mask'))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def _table_logits(q, table, half):
    """The row (half 0) or column (half 1) logits (B, Ho, Wo, heads, k) of q (B, Ho, Wo, heads,
    d) from a (heads, k, d/2) table: q's first or last d/2 channels against the table's rows."""
    h = table.shape[-1]
    return torch.einsum('bijne,nue->bijnu', q[..., half * h:(half + 1) * h], table)


def _kernel_with_tables(q, k, v, row_table, col_table, bias, kernel_size, padding_mode,
                        query_stride):
    """The kernel's table form as a differentiable function of all its inputs."""
    ext = cpu_kernel._extension

    class WithTables(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, row_table, col_table, bias):
            out, attn = ext.forward(q, k, v, None, None, row_table, col_table, bias, kernel_size,
                                    query_stride, padding_mode == 'mask', True)
            ctx.save_for_backward(q, k, v, attn, row_table, col_table)
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, attn, row_table, col_table = ctx.saved_tensors
            d_q, d_k, d_v, d_row, d_col, d_bias, d_row_table, d_col_table = ext.backward(
                grad, q, k, v, attn, row_table, col_table, kernel_size, query_stride, False,
                False, True)
            assert d_row is None and d_col is None
            return d_q, d_k, d_v, d_row_table, d_col_table, d_bias

    return WithTables.apply(q, k, v, row_table, col_table, bias)


# (B, H, W, heads, d, k, query stride): head dims 2 and 16 (two channel chunks), a row past one
# SIMD vector, strided queries.
TABLE_SHAPES = [(2, 5, 11, 2, 2, 7, 1), (1, 4, 6, 3, 16, 3, 1), (1, 9, 10, 2, 4, 5, 2)]


@pytest.mark.parametrize('shape', TABLE_SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('has_k', [True, False], ids=['content+rel', 'rel-only'])
@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
def test_kernel_relative_tables_equal_the_logits_they_make(kernel, shape, has_k, padding_mode):
    """Given per-head tables instead of logits, the kernel's output and its gradients of q, k, v,
    the bias and the tables equal, in float64, the reference fed the logits q . table (its
    table gradients through autograd)."""
    b, h, w, heads, d, size, stride = shape
    q, k, v, _, _, bias = make_strided_inputs(b, h, w, heads, d, size, stride, has_k, False)
    gen = torch.Generator().manual_seed(2)
    tables = [torch.randn(heads, size, d // 2, generator=gen, dtype=torch.float64)
              .requires_grad_() for _ in range(2)]
    leaves = [t for t in (q, k, v, bias, *tables) if t is not None]

    out = _kernel_with_tables(q, k, v, *tables, bias, size, padding_mode, stride)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    actual = [out, *torch.autograd.grad(out, leaves, grad_out)]
    expected_out = local_attention_2d_reference(
        q, k, v, size, _table_logits(q, tables[0], 0), _table_logits(q, tables[1], 1),
        padding_mode, position_bias=bias, query_stride=stride)
    expected = [expected_out, *torch.autograd.grad(expected_out, leaves, grad_out)]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_kernel_relative_tables_refuse_a_wrong_shape_by_name(kernel):
    q, k, v, *_ = make_inputs(1, 4, 4, 2, 4, 3)
    wrong = torch.zeros(2, 3, 4, dtype=torch.float64)  # d/2 is 2
    with pytest.raises(RuntimeError, match=r'relative tables must be \(heads, k, head_dim / 2\)'):
        cpu_kernel._extension.forward(q.detach(), k.detach(), v.detach(), None, None, wrong,
                                      wrong, None, 3, 1, True, False)


def make_strided_inputs(b, h, w, heads, d, kernel_size, stride, has_k, has_rel, dtype=torch.float64,
                        seed=0):
    """(q, k, v, row, col, bias) with keys and values on the (h, w) grid and queries and relative
    logits on the (ceil(h / stride), ceil(w / stride)) grid."""
    gen = torch.Generator().manual_seed(seed)
    ho, wo = -(-h // stride), -(-w // stride)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()

    q = rand(b, ho, wo, heads, d)
    k = rand(b, h, w, heads, d) if has_k else None
    v = rand(b, h, w, heads, d)
    row = rand(b, ho, wo, heads, kernel_size) if has_rel else None
    col = rand(b, ho, wo, heads, kernel_size) if has_rel else None
    return q, k, v, row, col, rand(heads, kernel_size, kernel_size)


# (B, H, W, heads, d, k, stride): even and odd sizes, k > H and W, query rows past one SIMD
# vector, stride 3 and a stride larger than the map.
STRIDED_SHAPES = [(1, 5, 7, 2, 4, 3, 2), (2, 6, 19, 2, 4, 5, 2), (1, 3, 4, 2, 4, 7, 2),
                  (1, 7, 20, 1, 2, 3, 3), (1, 2, 3, 1, 2, 5, 4), (2, 9, 35, 2, 4, 7, 2)]


@pytest.mark.parametrize('shape', STRIDED_SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('has_k,has_rel', [(True, True), (False, True), (True, False)],
                         ids=['content+rel', 'rel-only', 'content-only'])
@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
def test_kernel_strided_queries_match_reference_float64(kernel, shape, has_k, has_rel,
                                                        padding_mode):
    """Queries at (s*i, s*j) over full-resolution keys, with a position bias: values and all
    gradients equal the reference to float64 round-off."""
    *dims, kernel_size, stride = shape
    inputs = make_strided_inputs(*dims, kernel_size, stride, has_k, has_rel)
    expected = values_and_grads(local_attention_2d_reference, inputs, kernel_size, padding_mode,
                                query_stride=stride)
    actual = values_and_grads(kernel.local_attention_2d_cpu, inputs, kernel_size, padding_mode,
                              query_stride=stride)
    for a, e in zip(actual, expected):
        assert (a is None) == (e is None)
        if e is not None:
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_kernel_strided_gradcheck(kernel):
    """Strided queries: the analytic backward matches finite differences (float64)."""
    inputs = make_strided_inputs(1, 5, 6, 2, 2, 3, 2, True, True)

    def fn(q, k, v, row, col, bias):
        return kernel.local_attention_2d_cpu(q, k, v, 3, row, col, 'zeros', bias, 2)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_kernel_strided_half_types_match_float64_reference(kernel, dtype):
    """Strided queries with 16-bit inputs: within one rounding of the float64 reference."""
    inputs = [t.detach().to(dtype).requires_grad_()
              for t in make_strided_inputs(2, 9, 35, 2, 8, 7, 2, True, True)]
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    expected = values_and_grads(local_attention_2d_reference, inputs64, 7, 'mask',
                                grad_dtype=dtype, query_stride=2)
    actual = values_and_grads(kernel.local_attention_2d_cpu, inputs, 7, 'mask', query_stride=2)
    for a, e in zip(actual, expected):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), e, **HALF_TOLERANCE[dtype])


def test_dispatcher_uses_kernel_for_strided_queries(kernel, monkeypatch):
    """implementation='auto' runs the kernel for strided queries."""
    calls = []
    original = kernel.local_attention_2d_cpu
    monkeypatch.setattr(kernel, 'local_attention_2d_cpu',
                        lambda *args: calls.append(args[-1]) or original(*args))
    q, k, v, row, col, bias = make_strided_inputs(1, 6, 5, 2, 4, 3, 2, True, True)
    out = local_attention_2d(q, k, v, 3, row, col, 'mask', 'auto', bias, 2)
    torch.testing.assert_close(out, local_attention_2d_reference(q, k, v, 3, row, col, 'mask',
                                                                 bias, 2))
    assert calls == [2]


def test_layer_with_kernel_matches_reference_layer(kernel):
    """The SASA layer gives the same output and weight gradients with the kernel as with the
    unfold reference (what tools/benchmark.py compares)."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 7, dtype=torch.float64)
    grads = []
    for implementation in ('reference', 'auto'):
        torch.manual_seed(1)
        layer = LocalSelfAttention2d(16, 16, 5, heads=4, implementation=implementation).double()
        out = layer(x)
        out.square().sum().backward()
        grads.append([out] + [p.grad for p in layer.parameters()])
    for a, e in zip(*grads):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


@pytest.fixture
def no_kernel(monkeypatch):
    """The kernel module in the state it has after a failed build."""
    monkeypatch.setattr(cpu_kernel, '_extension', None)
    monkeypatch.setattr(cpu_kernel, '_build_failed', True)


def test_fallback_when_kernel_unavailable(no_kernel):
    """Without the kernel, 'auto' silently takes the sliced path (same values and gradients as
    the reference) and 'cpu_kernel' raises."""
    assert not cpu_kernel.is_available()
    inputs = make_inputs(1, 4, 5, 2, 4, 3)
    for padding_mode in ('mask', 'zeros'):
        expected = values_and_grads(local_attention_2d_reference, inputs, 3, padding_mode)
        actual = values_and_grads(local_attention_2d, inputs, 3, padding_mode)
        assert actual[0] is not None and len(actual) == len(expected)
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    q, k, v, row, col = inputs
    with pytest.raises(RuntimeError, match='not available'):
        local_attention_2d(q, k, v, 3, row, col, implementation='cpu_kernel')


def test_failed_build_warns_once_and_disables_kernel(monkeypatch):
    """A build error (e.g. no compiler) gives one RuntimeWarning, then is_available() is False
    without retrying the build."""
    attempts = []

    def failing_load(*args, **kwargs):
        attempts.append(kwargs.get('name'))
        raise OSError('no C++ compiler')

    monkeypatch.setattr(cpu_kernel, '_extension', None)
    monkeypatch.setattr(cpu_kernel, '_build_failed', False)
    monkeypatch.delenv('SASA_DET_DISABLE_CPU_KERNEL', raising=False)
    monkeypatch.setattr(torch.utils.cpp_extension, 'load', failing_load)
    with pytest.warns(RuntimeWarning, match='no C\\+\\+ compiler'):
        assert not cpu_kernel.is_available()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert not cpu_kernel.is_available()
    assert len(attempts) == 1


def test_environment_variable_disables_kernel(monkeypatch):
    """SASA_DET_DISABLE_CPU_KERNEL=1 skips the build entirely."""
    monkeypatch.setattr(cpu_kernel, '_extension', None)
    monkeypatch.setattr(cpu_kernel, '_build_failed', False)
    monkeypatch.setenv('SASA_DET_DISABLE_CPU_KERNEL', '1')
    monkeypatch.setattr(torch.utils.cpp_extension, 'load',
                        lambda *a, **k: pytest.fail('build attempted'))
    assert not cpu_kernel.is_available()


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize('shape', SHAPES[:3], ids=lambda s: 'x'.join(map(str, s)))
def test_forward_without_a_backward_saves_no_weights_and_gives_the_same_output(kernel, shape,
                                                                                dtype):
    """Under no_grad the forward keeps each row's weights in scratch instead of a saved tensor
    (none is returned), and its output equals, bitwise, the output of the saving forward."""
    b, h, w, heads, d, size = shape
    q, k, v, row, col, bias = (t.detach().to(dtype) for t in
                               make_inputs(b, h, w, heads, d, size, has_bias=True))
    saved_out, attn = kernel._extension.forward(q, k, v, row, col, None, None, bias, size, 1,
                                                True, True)
    out, none = kernel._extension.forward(q, k, v, row, col, None, None, bias, size, 1, True,
                                          False)
    assert attn is not None and none is None
    assert torch.equal(out, saved_out)
    with torch.no_grad():
        layer_out = local_attention_2d(q.requires_grad_(), k, v, size, row, col, 'mask',
                                       position_bias=bias)
    assert torch.equal(layer_out, saved_out)
