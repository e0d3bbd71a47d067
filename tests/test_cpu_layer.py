"""The whole-layer CPU Function equals the layer's composed path and the reference, and the layer
takes it exactly where it applies."""
import copy
import itertools

import pytest
import torch

from sasa_det.layers import LocalSelfAttention2d
from sasa_det.ops import cpu_kernel, cpu_layer


@pytest.fixture(scope='module', autouse=True)
def kernel():
    if not cpu_kernel.is_available():
        pytest.skip('the C++ CPU kernel could not be built here')


CASES = [dict(similarity=s, position_bias=b, relative_tables=t, padding_mode=p)
         for s, b, t, p in itertools.product(('dot', 'cosine'), (False, True),
                                             ('shared', 'per_head'), ('mask', 'zeros'))]
CASES += [dict(scale=0.5), dict(stride=2), dict(stride=2, similarity='cosine'), dict(bias=True)]


def _random_layer(kernel_size=3, dtype=torch.float64, **options):
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(8, 16, kernel_size, heads=4, **options).to(dtype)
    with torch.no_grad():  # every parameter away from its initial value, logit scales included
        for parameter in layer.parameters():
            parameter.normal_()
    return layer


def _values_and_grads(layer, x, grad):
    x = x.detach().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    y.backward(grad)
    return [y.detach(), x.grad] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize('options', CASES)
# (2, 2) and (1, 1): maps small enough for the projections' 2-D matmuls; the others batched.
@pytest.mark.parametrize('size,kernel_size', [((5, 6), 3), ((4, 3), 7), ((2, 2), 3), ((1, 1), 3)])
def test_values_and_float64_gradients_equal_the_reference(options, size, kernel_size):
    layer = _random_layer(kernel_size, **options)
    reference = copy.deepcopy(layer)
    reference.implementation = 'reference'
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    assert layer._takes_cpu_layer(x) and not reference._takes_cpu_layer(x)
    grad = torch.randn_like(reference(x))
    for got, want in zip(_values_and_grads(layer, x, grad), _values_and_grads(reference, x, grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('options', [{}, dict(similarity='cosine', position_bias=True)])
def test_float32_values_and_gradients_equal_the_composed_path(options):
    layer = _random_layer(7, torch.float32, **options)
    composed = copy.deepcopy(layer)
    composed._takes_cpu_layer = lambda x: False
    x = torch.randn(3, 8, 9, 10)
    grad = torch.randn(3, 16, 9, 10)
    for got, want in zip(_values_and_grads(layer, x, grad), _values_and_grads(composed, x, grad)):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)


def test_cosine_of_vectors_below_eps_equals_the_reference():
    """Pixels whose q and k have norms below eps (clamped: dx = f dy there, no radial term) and
    pixels where they are zero give the reference's values and float64 gradients."""
    layer = _random_layer(3, similarity='cosine', position_bias=True)
    reference = copy.deepcopy(layer)
    reference.implementation = 'reference'
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    x[:, :, 1:3, 2:4] *= 1e-14  # |q|, |k| ~ 1e-13 < eps = 1e-12
    x[:, :, 4, :2] = 0
    grad = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    for got, want in zip(_values_and_grads(layer, x, grad), _values_and_grads(reference, x, grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_cosine_normalisation_refuses_a_wrong_layout_by_name():
    projected = torch.randn(2, 3, 4, 2, 6)
    with pytest.raises(RuntimeError, match='temperature must be contiguous'):
        cpu_kernel._load().cosine_qk_forward(projected, torch.ones(3), 1e-12)
    with pytest.raises(RuntimeError, match='contiguous \\(B, 3, heads, d, P\\) projection'):
        cpu_kernel._load().cosine_qk_forward(projected.transpose(3, 4), torch.ones(4), 1e-12)


def test_function_passes_gradcheck_with_every_input():
    """Finite differences of every input (x, weight, both tables, the bias, the logit scale)
    agree with the written-out backward, the temperature's clamp on one head included."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    logit_scale = torch.tensor([[1.0], [5.0]], dtype=torch.float64, requires_grad=True)
    inputs = (rand(2, 3, 4, 5), rand(12, 3), rand(3, 1), rand(3, 1), rand(2, 3, 3), logit_scale)

    def layer(x, weight, rel_row, rel_col, bias, scale):
        return cpu_layer.sasa_layer_cpu(x, weight, 2, 3, rel_row, rel_col, bias, scale,
                                        max_logit_scale=4.0)

    assert torch.autograd.gradcheck(layer, inputs)


@pytest.mark.parametrize('tables', ['shared', 'per_head'])
def test_backward_is_bitwise_repeatable_across_runs_and_thread_counts(tables):
    """Every gradient, the tables' (summed per plane in the kernel, then over images and heads in
    a fixed order) included, is bitwise the same on a second pass and with one thread."""
    layer = _random_layer(7, torch.float32, similarity='cosine', position_bias=True,
                          relative_tables=tables)
    x, grad = torch.randn(2, 8, 12, 11), torch.randn(2, 16, 12, 11)
    threads = torch.get_num_threads()
    try:
        runs = [_values_and_grads(layer, x, grad) for _ in range(2)]
        torch.set_num_threads(1)
        runs.append(_values_and_grads(layer, x, grad))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


def test_frozen_layer_still_passes_the_input_gradient():
    layer = _random_layer(3, similarity='cosine', position_bias=True).requires_grad_(False)
    composed = copy.deepcopy(layer)
    composed._takes_cpu_layer = lambda x: False
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    grad = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    got, want = _values_and_grads(layer, x, grad), _values_and_grads(composed, x, grad)
    torch.testing.assert_close(got[:2], want[:2], rtol=1e-10, atol=1e-10)
    assert all(p.grad is None for p in layer.parameters())


@pytest.mark.parametrize('options,dtype', [
    (dict(positional_encoding='absolute'), torch.float64),
    (dict(logits='relative'), torch.float64),
    (dict(positional_encoding='none', logits='content'), torch.float64),
    (dict(stride=2, downsample='query'), torch.float64),
    (dict(implementation='sliced'), torch.float64),
    ({}, torch.bfloat16),
])
def test_other_options_and_dtypes_take_the_composed_path(options, dtype):
    layer = _random_layer(3, dtype, **options)
    assert not layer._takes_cpu_layer(torch.randn(1, 8, 4, 4, dtype=dtype))


def test_autocast_takes_the_composed_path():
    layer = _random_layer(3, torch.float32)
    x = torch.randn(1, 8, 4, 4)
    assert layer._takes_cpu_layer(x)
    with torch.autocast('cpu', torch.bfloat16):
        assert not layer._takes_cpu_layer(x)


def test_composed_block_switches_the_function_off_and_back_on():
    layer = _random_layer(3, torch.float32)
    x = torch.randn(1, 8, 4, 4)
    with cpu_layer.composed():
        assert not layer._takes_cpu_layer(x)
        assert 'SasaLayerCpu' not in type(layer(x).grad_fn).__name__
    assert layer._takes_cpu_layer(x)
    assert type(layer(x).grad_fn).__name__ == '_SasaLayerCpuBackward'


def test_unsupported_inputs_are_refused_by_name():
    weight = torch.randn(12, 3, dtype=torch.float64)
    tables = torch.randn(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match='got x torch.float32 on cpu, weight torch.float64'):
        cpu_layer.sasa_layer_cpu(torch.randn(1, 3, 4, 4), weight, 2, 3, tables, tables)


def test_inference_forward_equals_the_training_forward_bitwise():
    """Under no_grad the Function saves no attention weights; its output is the same."""
    layer = _random_layer(7, torch.float32, similarity='cosine', position_bias=True)
    x = torch.randn(2, 8, 9, 10)
    assert layer._takes_cpu_layer(x)
    with torch.no_grad():
        inference = layer(x)
    assert torch.equal(inference, layer(x.requires_grad_()).detach())
