"""The Triton kernels against the unfold reference: on CPU in Triton's interpreter, or on a GPU.

On CPU, tests/test_triton_kernel.py runs this module in a child process with
``TRITON_INTERPRET=1``: Triton reads that variable when ``@triton.jit`` decorates the kernels
(import time) and again while they run, so it cannot share a process with code that imported the
kernels compiled. Without the variable the module needs a CUDA GPU and runs every case there:

    TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/triton_cases.py -q   # CPU, interpreter
    python -m pytest tests/triton_cases.py -q                                 # a CUDA machine

Checked here: values and every gradient against the float64 reference (max abs error <= 1e-5 for
float32 inputs) over every case of the op's contract, float16/bfloat16 inputs, bitwise identical
repeated backward passes, the torch.library operators (opcheck) and torch.compile without graph
breaks. Not checked by the interpreter: that the kernels compile for a GPU (see
tests/test_triton_kernel.py), and their speed.
"""
import copy
import os

import pytest
import torch

from sasa_det.layers import LocalSelfAttention2d
from sasa_det.ops import local_attention_2d, local_attention_2d_reference, triton_op

if os.environ.get('TRITON_INTERPRET') == '1':
    if not triton_op.INTERPRETED:
        raise RuntimeError('sasa_det.ops.triton_op was imported before TRITON_INTERPRET=1 was set')
    DEVICE = 'cpu'
elif torch.cuda.is_available():
    DEVICE = 'cuda'
else:
    raise RuntimeError('tests/triton_cases.py needs TRITON_INTERPRET=1 (set before Python '
                       'starts) or a CUDA GPU; tests/test_triton_kernel.py runs it in the '
                       'interpreter')

TOLERANCE = 1e-5  # max abs error of float32 inputs against the float64 reference


def _inputs(b, h, w, heads, d, k, keys=True, rel=True, bias=False, stride=1, value_dim=None,
            seed=0):
    """float64 leaf tensors (q, k, v, row, col, bias) of the op's contract; absent ones None."""
    g = torch.Generator().manual_seed(seed)
    ho, wo = -(-h // stride), -(-w // stride)

    def rand(*shape):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        return x.to(DEVICE).requires_grad_()

    q = rand(b, ho, wo, heads, d)
    key = rand(b, h, w, heads, d) if keys else None
    v = rand(b, h, w, heads, value_dim or d)
    row = rand(b, ho, wo, heads, k) if rel else None
    col = rand(b, ho, wo, heads, k) if rel else None
    position_bias = rand(heads, k, k) if bias else None
    if not keys:
        q.requires_grad_(False)  # without keys the op reads q through row/col only
    return q, key, v, row, col, position_bias


def _run(fn, inputs, kernel_size, padding_mode, stride, grad_out, dtype=None):
    """Output and the gradients of every input that requires one (cast to ``dtype`` first)."""
    if dtype is not None:
        inputs = [None if t is None else t.detach().to(dtype).requires_grad_(t.requires_grad)
                  for t in inputs]
        grad_out = grad_out.to(dtype)
    q, key, v, row, col, bias = inputs
    out = fn(q, key, v, kernel_size, row, col, padding_mode, bias, stride)
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    return out, torch.autograd.grad(out, wanted, grad_out)


def _triton(q, k, v, kernel_size, row, col, padding_mode, bias, stride):
    return local_attention_2d(q, k, v, kernel_size, row, col, padding_mode, 'triton', bias, stride)


# (batch, height, width, heads, head dim, kernel size): borders, k = 3, 5, 7, k larger than the
# map, batch 1, a single pixel, head dims that are not powers of two.
SHAPES = [
    (2, 4, 5, 2, 4, 3),
    (1, 5, 4, 1, 3, 5),
    (1, 2, 3, 2, 5, 5),  # window larger than the map in both directions
    (1, 3, 2, 1, 6, 7),
    (1, 1, 1, 1, 2, 3),  # a single pixel attends only to itself
]
LOGIT_TERMS = [  # (keys, relative logits, position bias)
    (True, True, True), (True, True, False), (True, False, False), (False, True, False),
    (False, False, True), (False, False, False),
]


def _compare(inputs, kernel_size, padding_mode, stride=1):
    grad_out_shape = (*inputs[0].shape[:4], inputs[2].shape[-1])
    grad_out = torch.randn(grad_out_shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1)).to(DEVICE)
    expected, expected_grads = _run(local_attention_2d_reference, inputs, kernel_size,
                                    padding_mode, stride, grad_out)
    actual, grads = _run(_triton, inputs, kernel_size, padding_mode, stride, grad_out,
                         torch.float32)
    assert actual.dtype == torch.float32 and len(grads) == len(expected_grads)
    errors = [(actual.double() - expected).abs().max().item()]
    errors += [(g.double() - e).abs().max().item() for g, e in zip(grads, expected_grads)]
    assert max(errors) <= TOLERANCE, f'max abs errors (output, then gradients): {errors}'


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
def test_values_and_gradients_equal_the_reference(shape, padding_mode):
    _compare(_inputs(*shape, bias=True), shape[-1], padding_mode)


@pytest.mark.parametrize('keys,rel,bias', LOGIT_TERMS)
@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
def test_every_combination_of_logit_terms_equals_the_reference(keys, rel, bias, padding_mode):
    _compare(_inputs(1, 4, 3, 2, 3, 3, keys=keys, rel=rel, bias=bias), 3, padding_mode)


@pytest.mark.parametrize('stride,shape', [(2, (1, 5, 6, 2, 3, 3)), (3, (2, 5, 4, 1, 4, 5)),
                                          (2, (1, 2, 3, 1, 2, 5))])
@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
def test_strided_queries_equal_the_reference(stride, shape, padding_mode):
    """Queries at (s*i, s*j): the key-side gradient kernel keeps only the mirrored-window
    positions that land on the query grid."""
    inputs = _inputs(*shape, bias=True, stride=stride)
    _compare(inputs, shape[-1], padding_mode, stride)


def test_value_dim_may_differ_from_the_key_dim():
    _compare(_inputs(1, 4, 5, 2, 3, 3, value_dim=5, bias=True), 3, 'mask')


def test_many_programs_per_image_give_the_same_result(monkeypatch):
    """Blocks of 4 queries: block borders inside rows, and the position-bias gradient summed
    over many per-program partial sums."""
    monkeypatch.setattr(triton_op, 'MAX_BLOCK', 4)
    _compare(_inputs(2, 3, 5, 1, 3, 3, bias=True), 3, 'mask')
    _compare(_inputs(1, 5, 6, 1, 3, 3, bias=True, stride=2), 3, 'zeros', 2)


@pytest.mark.parametrize('dtype,tolerance', [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_inputs_lose_only_a_few_roundings(dtype, tolerance):
    """Against the float64 reference on the same (rounded) inputs, the error left is the
    rounding of the stored results plus that of the stored output y in delta = dy . y (as in
    FlashAttention): a few units in the last place (2^-8 bfloat16, 2^-11 float16) of each
    tensor's largest element."""
    inputs = [None if t is None else t.detach().to(dtype).double().requires_grad_()
              for t in _inputs(1, 4, 5, 2, 8, 3, bias=True)]
    grad_out = torch.randn(1, 4, 5, 2, 8, device=DEVICE).to(dtype)
    expected, expected_grads = _run(local_attention_2d_reference, inputs, 3, 'mask', 1,
                                    grad_out.double())
    actual, grads = _run(_triton, inputs, 3, 'mask', 1, grad_out, dtype)
    assert actual.dtype == dtype and all(g.dtype == dtype for g in grads)
    for ours, ref in zip((actual, *grads), (expected, *expected_grads)):
        scale = ref.abs().max().item()
        torch.testing.assert_close(ours.double(), ref, rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_summed_in_float32(dtype):
    """|q . k| ~ 1e5 overflows float16 (max 65504) unless the products are summed in float32."""
    q, key, v, row, col, bias = (t.detach() for t in _inputs(1, 4, 5, 1, 8, 3, bias=True))
    q, key = q * 100, key * 100
    out = local_attention_2d(q.to(dtype), key.to(dtype), v.to(dtype), 3, row.to(dtype),
                             col.to(dtype), 'mask', 'triton', bias.to(dtype))
    assert torch.isfinite(out).all()
    expected = local_attention_2d_reference(q, key, v, 3, row, col, 'mask', bias)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=0.1)


def test_two_backward_passes_are_bitwise_identical():
    inputs = _inputs(2, 5, 6, 2, 3, 3, bias=True)
    grad_out = torch.randn(2, 5, 6, 2, 3, device=DEVICE)
    _, first = _run(_triton, inputs, 3, 'mask', 1, grad_out, torch.float32)
    _, second = _run(_triton, inputs, 3, 'mask', 1, grad_out, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize('keys,rel,bias,mask,stride', [
    (True, True, True, True, 1), (False, True, False, False, 1), (True, False, False, True, 2)])
def test_the_operators_pass_opcheck(keys, rel, bias, mask, stride):
    """Schema, fake (shape-only) implementations, autograd registration and AOT dispatch of
    both operators."""
    q, key, v, row, col, position_bias = (
        None if t is None else t.detach().float().requires_grad_(t.requires_grad)
        for t in _inputs(1, 4, 5, 2, 3, 3, keys, rel, bias, stride))
    forward_args = (q, key, v, row, col, position_bias, 3, mask, stride)
    torch.library.opcheck(torch.ops.sasa_det.local_attention_triton.default, forward_args)
    out, lse = torch.ops.sasa_det.local_attention_triton(*forward_args)
    # The backward operator has no gradient of its own (no double backward): detached inputs.
    detached = [None if t is None else t.detach() for t in (q, key, v, row, col, position_bias)]
    backward_args = (torch.randn_like(out), *detached, out.detach(), lse.detach(), 3, mask,
                     stride)
    torch.library.opcheck(torch.ops.sasa_det.local_attention_triton_backward.default,
                          backward_args)


def test_a_sasa_layer_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) fails on any graph break; outputs and gradients match the
    uncompiled layer."""
    layer = LocalSelfAttention2d(8, 8, kernel_size=3, heads=2, implementation='triton').to(DEVICE)
    x = torch.randn(2, 8, 5, 6, device=DEVICE, requires_grad=True)
    # On a GPU, Inductor sees into the triton_ops; interpreted kernels stay opaque calls.
    backend = 'inductor' if DEVICE == 'cuda' else 'aot_eager'
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    expected = layer(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, *layer.parameters()])
    actual = compiled(x)
    grads = torch.autograd.grad(actual.square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(actual, expected)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_a_layer_with_every_option_equals_the_reference_layer():
    """The layer's later options reach the kernel intact: strided queries (downsample='query'),
    a position bias, per-head relative tables; float32 against a float64 reference copy."""
    options = dict(kernel_size=3, stride=2, heads=2, position_bias=True, downsample='query',
                   relative_tables='per_head')
    layer = LocalSelfAttention2d(8, 8, implementation='triton', **options).to(DEVICE)
    with torch.no_grad():
        layer.position_bias.normal_()  # zero at init: make its gradient path matter
    reference = copy.deepcopy(layer).double()
    reference.implementation = 'reference'
    x = torch.randn(2, 8, 5, 6, device=DEVICE, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 8, 3, 3, device=DEVICE, dtype=torch.float64)
    expected = reference(x)
    expected_grads = torch.autograd.grad(expected, [x, *reference.parameters()], grad)
    actual = layer(x.float())
    grads = torch.autograd.grad(actual, [x, *layer.parameters()], grad.float())
    errors = [(a.double() - e).abs().max().item()
              for a, e in zip((actual, *grads), (expected, *expected_grads))]
    assert max(errors) <= TOLERANCE, errors


def test_float64_inputs_are_refused_with_the_allowed_dtypes():
    q, key, v, row, col, _ = _inputs(1, 3, 3, 1, 2, 3)
    with pytest.raises(ValueError, match='float16/bfloat16/float32.*torch.float64'):
        local_attention_2d(q, key, v, 3, row, col, implementation='triton')
