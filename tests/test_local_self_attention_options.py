"""LocalSelfAttention2d's opt-in options (head_dim, position_bias, relative_tables, downsample,
similarity):
values, gradients and attention weights against a per-query Python loop and across the op's
implementations, the properties each option promises, and their argument checks."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from sasa_det.layers import LocalSelfAttention2d, sinusoidal_2d
from sasa_det.ops.local_attention import IMPLEMENTATIONS

OPTIONS = [
    dict(),  # the paper's layer, as a control for the loop
    dict(position_bias=True),
    dict(relative_tables='per_head'),
    dict(heads=None, head_dim=2),
    dict(stride=2, downsample='query'),
    dict(stride=2, downsample='query', kernel_size=5),
    dict(stride=2, downsample='avgpool', position_bias=True, relative_tables='per_head'),
    dict(stride=2, downsample='query', position_bias=True, relative_tables='per_head',
         heads=None, head_dim=4),
    dict(stride=2, downsample='query', positional_encoding='absolute'),
    dict(stride=2, downsample='query', logits='relative', position_bias=True),
    dict(position_bias=True, positional_encoding='none', logits='content', scale=0.5),
    dict(similarity='cosine'),
    dict(similarity='cosine', position_bias=True, stride=2, downsample='query'),
    dict(similarity='cosine', positional_encoding='none', logits='content'),
]


def _layer(in_channels=6, out_channels=8, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault('kernel_size', 3)
    kwargs.setdefault('heads', 2)
    layer = LocalSelfAttention2d(in_channels, out_channels, **kwargs).double()
    with torch.no_grad():  # constant at init: randomise so that they matter
        if layer.position_bias is not None:
            layer.position_bias.normal_()
        if layer.logit_scale is not None:
            layer.logit_scale.uniform_(0.0, 5.0)  # some heads above the clamp at log(100)
    return layer


def loop_attention(layer: LocalSelfAttention2d, x: torch.Tensor):
    """The layer written query by query and head by head from its definition.

    Query (i, j) sits at (s*i, s*j), s = query_stride; for window offset (u, w) its neighbour is
    (a, b) = (s*i + u - k//2, s*j + w - k//2), excluded when outside the image, and
        logit = q . k_ab + q . [r_row(u); r_col(w)] (the head's own tables when per head)
                + position_bias[head, u, w]
    with q = scale W_Q x, k = W_K x; with similarity='cosine', q = t W_Q x / |W_Q x| and
    k = W_K x / |W_K x|, t = min(exp(logit_scale[head]), 100).
    Returns y (N, C_out, Ho, Wo) before the layer's average pool, the weights
    (N, Ho, Wo, heads, k*k), zero outside the image, and the logits, -inf there.
    """
    n, _, height, width = x.shape
    heads, d, k, r, s = (layer.heads, layer.head_dim, layer.kernel_size, layer.kernel_size // 2,
                         layer.query_stride)
    w_q, *w_rest = layer.qkv.weight.split(layer.out_channels)
    w_k, w_v = (w_rest if layer.uses_content else (None, w_rest[0]))
    pos = sinusoidal_2d(height, width, d, dtype=x.dtype)
    ho, wo = math.ceil(height / s), math.ceil(width / s)
    y = x.new_zeros(n, layer.out_channels, ho, wo)
    weights = x.new_zeros(n, ho, wo, heads, k * k)
    all_logits = x.new_full((n, ho, wo, heads, k * k), float('-inf'))
    for b, i, j, m in itertools.product(range(n), range(ho), range(wo), range(heads)):
        head = slice(m * d, (m + 1) * d)
        q = (layer.scale or 1.0) * (w_q[head] @ x[b, :, s * i, s * j])
        if layer.similarity == 'cosine':
            q = q / q.norm() * layer.logit_scale[m, 0].exp().clamp(max=100.0)
        logits, values, slots = [], [], []
        for u, w in itertools.product(range(k), range(k)):
            a, c = s * i + u - r, s * j + w - r
            if not (0 <= a < height and 0 <= c < width):
                continue
            logit = q.new_zeros(())
            if layer.uses_content:
                key = w_k[head] @ x[b, :, a, c]
                if layer.similarity == 'cosine':
                    key = key / key.norm()
                logit = logit + q @ key
            if layer.positional_encoding == 'relative':
                rows, cols = layer.rel_row, layer.rel_col
                if layer.relative_tables == 'per_head':
                    rows, cols = rows[m], cols[m]
                logit = logit + q @ torch.cat([rows[u], cols[w]])
            elif layer.positional_encoding == 'absolute':
                logit = logit + q @ pos[a, c]
            if layer.position_bias is not None:
                logit = logit + layer.position_bias[m, u, w]
            logits.append(logit)
            values.append(w_v[head] @ x[b, :, a, c])
            slots.append(u * k + w)
        p = torch.softmax(torch.stack(logits), 0)
        y[b, head, i, j] = (p[:, None] * torch.stack(values)).sum(0)
        weights[b, i, j, m, slots] = p
        all_logits[b, i, j, m, slots] = torch.stack(logits)
    return y, weights, all_logits


def _grads(layer, x, output_grad, output):
    return torch.autograd.grad(output, [x, *layer.parameters()], output_grad)


@pytest.mark.parametrize('options', OPTIONS)
def test_values_and_gradients_match_the_per_query_loop(options):
    layer = _layer(**options)
    x = torch.randn(2, 6, 5, 6, dtype=torch.float64, requires_grad=True)
    loop_y, _, _ = loop_attention(layer, x)
    expected = layer.pool(loop_y)
    y = layer(x)
    assert y.shape == expected.shape == (2, 8, *(math.ceil(n / layer.stride) for n in (5, 6)))
    torch.testing.assert_close(y, expected)
    output_grad = torch.randn_like(y)
    for got, want in zip(_grads(layer, x, output_grad, y),
                         _grads(layer, x, output_grad, expected)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize('options', OPTIONS)
def test_attention_weights_match_the_per_query_loop(options):
    """attention_weights reads the op's reference weights; the mask marks in-image offsets."""
    layer = _layer(**options)
    x = torch.randn(1, 6, 5, 4, dtype=torch.float64)
    maps = layer.attention_maps(x)
    weights, valid = maps['weights'], maps['valid']
    _, expected, _ = loop_attention(layer, x)
    torch.testing.assert_close(weights, expected)
    assert torch.equal(valid.expand_as(weights), expected > 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))


@pytest.mark.parametrize('options', OPTIONS)
def test_attention_maps_give_the_loops_logits_and_weights(options):
    layer = _layer(**options)
    x = torch.randn(1, 6, 5, 4, dtype=torch.float64)
    maps = layer.attention_maps(x)
    _, weights, logits = loop_attention(layer, x)
    torch.testing.assert_close(maps['weights'], weights)
    torch.testing.assert_close(maps['logits'], logits)
    assert torch.equal(maps['valid'].expand_as(weights), torch.isfinite(logits))


@pytest.mark.parametrize('options', OPTIONS[1:])
def test_every_implementation_gives_the_same_values_and_gradients(options):
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    results = {}
    for implementation in IMPLEMENTATIONS:
        layer = _layer(implementation=implementation, **options)
        try:
            y = layer(x)
        except (RuntimeError, ValueError):  # a kernel not built here or not for CPU tensors
            assert implementation not in ('auto', 'sliced', 'reference')
            continue
        # randn, not randn_like: the output's memory format differs between implementations.
        output_grad = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
        results[implementation] = (y, _grads(layer, x, output_grad, y))
    assert {'auto', 'sliced', 'reference'} <= set(results)
    reference_y, reference_grads = results.pop('reference')
    for implementation, (y, grads) in results.items():
        torch.testing.assert_close(y, reference_y, msg=implementation)
        for got, want in zip(grads, reference_grads):
            torch.testing.assert_close(got, want, msg=implementation)


# ------------------------------------------------------------------------------ head_dim

def test_head_dim_sets_the_number_of_heads():
    layer = LocalSelfAttention2d(8, 32, head_dim=8)
    assert (layer.heads, layer.head_dim) == (4, 8)
    assert LocalSelfAttention2d(8, 32, heads=4, head_dim=8).heads == 4  # agreeing: accepted
    assert LocalSelfAttention2d(8, 32).heads == 8  # neither: the paper's 8 heads


# ------------------------------------------------------------------------- position_bias

def test_position_bias_is_a_zero_initialised_parameter_so_the_layer_starts_as_the_papers():
    with_bias = _layer(kernel_size=5, position_bias=True)
    assert with_bias.position_bias.shape == (2, 5, 5)
    with torch.no_grad():
        with_bias.position_bias.zero_()
    paper = _layer(kernel_size=5)
    assert set(with_bias.state_dict()) - set(paper.state_dict()) == {'position_bias'}
    paper.load_state_dict({k: v for k, v in with_bias.state_dict().items()
                           if k != 'position_bias'})
    x = torch.randn(1, 6, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(with_bias(x), paper(x))


def test_position_bias_alone_gives_content_free_weights():
    """With W_Q = 0 every q-dependent logit vanishes: each interior query's weights are
    softmax(position_bias[head]), the same for every query and input."""
    layer = _layer(kernel_size=3, position_bias=True)
    with torch.no_grad():
        layer.qkv.weight[:layer.out_channels].zero_()
    weights = layer.attention_maps(torch.randn(2, 6, 5, 5, dtype=torch.float64))['weights']
    expected = torch.softmax(layer.position_bias.flatten(1), -1)  # (heads, k*k)
    interior = weights[:, 1:-1, 1:-1]
    torch.testing.assert_close(interior, expected.expand_as(interior))


# ------------------------------------------------------------------------ relative_tables

def test_per_head_tables_have_one_table_per_head_and_equal_tables_give_the_shared_layer():
    per_head = _layer(kernel_size=5, relative_tables='per_head')
    shared = _layer(kernel_size=5)
    assert per_head.rel_row.shape == per_head.rel_col.shape == (2, 5, 2)
    with torch.no_grad():
        per_head.qkv.weight.copy_(shared.qkv.weight)
        per_head.rel_row.copy_(shared.rel_row.expand(2, -1, -1))
        per_head.rel_col.copy_(shared.rel_col.expand(2, -1, -1))
    x = torch.randn(1, 6, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(per_head(x), shared(x))
    with torch.no_grad():
        per_head.rel_row[1].normal_()
    assert not torch.allclose(per_head(x)[:, 4:], shared(x)[:, 4:])  # only head 1 changed
    torch.testing.assert_close(per_head(x)[:, :4], shared(x)[:, :4])


# ----------------------------------------------------------------------------- downsample

@pytest.mark.parametrize('size', [(8, 8), (7, 9), (1, 2)])
def test_query_downsampling_is_stride_one_attention_at_the_even_positions(size):
    """Attending only from (2i, 2j) over full-resolution keys gives exactly the stride-1
    layer's output there, at the size of a 3x3 stride-2 convolution with padding 1."""
    strided = _layer(kernel_size=5, stride=2, downsample='query')
    plain = _layer(kernel_size=5)
    plain.load_state_dict(strided.state_dict())
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    y = strided(x)
    torch.testing.assert_close(y, plain(x)[:, :, ::2, ::2])
    assert y.shape[-2:] == F.conv2d(x, torch.zeros(1, 6, 3, 3, dtype=x.dtype), stride=2,
                                    padding=1).shape[-2:]
    assert isinstance(strided.pool, torch.nn.Identity)


def test_downsample_changes_nothing_at_stride_one():
    query, pool = _layer(downsample='query'), _layer(downsample='avgpool')
    assert query.query_stride == pool.query_stride == 1
    x = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(query(x), pool(x))


# ------------------------------------------------------------------------- parameters, args

@pytest.mark.parametrize('options, extra', [
    (dict(position_bias=True), 4 * 7 * 7),  # (heads, k, k)
    (dict(relative_tables='per_head'), (4 - 1) * 2 * 7 * 4),  # 3 more heads x 2 tables
    (dict(heads=None, head_dim=4), 2 * 7 * (2 - 4)),  # d = 4: tables of 2 dims, not 4
    (dict(stride=2, downsample='query'), 0),
    (dict(similarity='cosine'), 4),  # one temperature per head
])
def test_parameter_count_of_each_option(options, extra):
    """Paper layer, 16 -> 32 channels, 4 heads (d = 8), k = 7: 3 C_in C_out + 2 k d/2."""
    options = dict(dict(heads=4), **options)
    layer = LocalSelfAttention2d(16, 32, kernel_size=7, **options)
    assert sum(p.numel() for p in layer.parameters()) == 3 * 16 * 32 + 2 * 7 * 4 + extra


@pytest.mark.parametrize('kwargs, message', [
    (dict(head_dim=3), r'head_dim must be a positive divisor of out_channels \(8\), got 3'),
    (dict(heads=2, head_dim=2), r'heads=2 and head_dim=2 disagree: .* is 4 heads'),
    (dict(head_dim=0), 'head_dim must be a positive divisor'),
    (dict(position_bias='yes'), "position_bias must be True or False, got 'yes'"),
    (dict(relative_tables='per_row'), "relative_tables must be one of .*got 'per_row'"),
    (dict(relative_tables='per_head', positional_encoding='absolute'),
     "relative_tables='per_head' needs positional_encoding='relative'"),
    (dict(downsample='maxpool'), "downsample must be one of .*got 'maxpool'"),
    (dict(similarity='l2'), "similarity must be one of .*got 'l2'"),
    (dict(similarity='cosine', scale=0.5), "similarity='cosine' .* needs scale=None .*0.5"),
    (dict(similarity='cosine', logits='relative', positional_encoding='relative'),
     "similarity='cosine' .* key logits.*'relative'"),
])
def test_bad_option_values_raise_value_errors_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LocalSelfAttention2d(6, 8, **kwargs)


def test_cosine_similarity_bounds_every_logit_by_the_temperature_whatever_the_input_scale():
    """|q.k| <= t and |q.r| <= t |r| for unit q and k: scaling the input changes no logit."""
    layer = LocalSelfAttention2d(6, 8, kernel_size=3, heads=2, similarity='cosine',
                                 positional_encoding='none', logits='content').double()
    x = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    logits = layer.attention_maps(x)['logits']
    finite = logits[torch.isfinite(logits)]
    assert finite.abs().max() <= 10.0 + 1e-12  # initial temperature 10
    torch.testing.assert_close(layer.attention_maps(100.0 * x)['logits'], logits)
    with torch.no_grad():
        layer.logit_scale.fill_(10.0)  # exp(10) is clamped to 100
    assert layer.attention_maps(x)['logits'].nan_to_num(neginf=0.0).abs().max() <= 100.0 + 1e-9


def test_cosine_normalisation_gradient_equals_autograd_through_its_formula():
    """The hand-written backward of the per-head normalisation equals autograd through
    x * scale / max(|x|, eps), for the input and the per-head scale, zero vectors included (where
    the clamp holds the norm at eps and only the scale passes the gradient on)."""
    from sasa_det.layers.local_self_attention import _unit_channels
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, 6, generator=gen, dtype=torch.float64)
    x[0, 1, :, 2, 3] = 0.0
    x[1, 2, :, 0, 0] = 1e-14  # below eps = 1e-12: clamped too
    scale = torch.rand(3, 1, 1, 1, generator=gen, dtype=torch.float64) + 0.5
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    for with_scale in (True, False):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        sa, sb = scale.clone().requires_grad_(), scale.clone().requires_grad_()
        out = _unit_channels(a, sa if with_scale else None)
        norm = b.square().sum(dim=2, keepdim=True).clamp_min(1e-24).sqrt()
        expected = b / norm * (sb if with_scale else 1.0)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=0)
        leaves_a, leaves_b = ([a, sa], [b, sb]) if with_scale else ([a], [b])
        for got, want in zip(torch.autograd.grad(out, leaves_a, grad),
                             torch.autograd.grad(expected, leaves_b, grad)):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
