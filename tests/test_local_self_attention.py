"""LocalSelfAttention2d: the paper's formula, its symmetries, its options and its argument checks."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from sasa_det.layers import LocalSelfAttention2d, sinusoidal_2d

OPTIONS = [
    dict(positional_encoding='relative', logits='content+relative'),
    dict(positional_encoding='relative', logits='relative'),
    dict(positional_encoding='absolute', logits='content+relative'),
    dict(positional_encoding='absolute', logits='relative'),
    dict(positional_encoding='none', logits='content'),
]


def _layer(in_channels=6, out_channels=8, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault('heads', 2)
    return LocalSelfAttention2d(in_channels, out_channels, **kwargs).double()


def _paper_formula(layer: LocalSelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    """The SASA layer written pixel by pixel from the paper."""
    n, _, height, width = x.shape
    heads, d, k, r = layer.heads, layer.head_dim, layer.kernel_size, layer.kernel_size // 2
    w_q, *w_rest = layer.qkv.weight.split(layer.out_channels)
    w_k, w_v = (w_rest if layer.uses_content else (None, w_rest[0]))
    scale = layer.scale or 1.0
    pos = sinusoidal_2d(height, width, d, dtype=x.dtype)
    y = torch.zeros(n, layer.out_channels, height, width, dtype=x.dtype)
    for b, i, j, m in itertools.product(range(n), range(height), range(width), range(heads)):
        head = slice(m * d, (m + 1) * d)
        q = scale * (w_q[head] @ x[b, :, i, j])
        logits, values = [], []
        for a, c in itertools.product(range(i - r, i + r + 1), range(j - r, j + r + 1)):
            if not (0 <= a < height and 0 <= c < width):
                continue  # outside the image: excluded from the softmax
            logit = q.new_zeros(())
            if layer.uses_content:
                logit = logit + q @ (w_k[head] @ x[b, :, a, c])
            if layer.positional_encoding == 'relative':
                rel = torch.cat([layer.rel_row[a - i + r], layer.rel_col[c - j + r]])
                logit = logit + q @ rel
            elif layer.positional_encoding == 'absolute':
                logit = logit + q @ pos[a, c]
            logits.append(logit)
            values.append(w_v[head] @ x[b, :, a, c])
        weights = torch.softmax(torch.stack(logits), 0)
        y[b, head, i, j] = (weights[:, None] * torch.stack(values)).sum(0)
    return y


@pytest.mark.parametrize('options', OPTIONS)
def test_layer_computes_the_papers_formula(options):
    layer = _layer(kernel_size=3, heads=2, **options)
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _paper_formula(layer, x))


def test_scale_multiplies_every_logit():
    layer = _layer(kernel_size=5, heads=2, scale=0.25)
    x = torch.randn(1, 6, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _paper_formula(layer, x))


@pytest.mark.parametrize('options', OPTIONS)
def test_constant_input_gives_constant_output_because_borders_are_masked(options):
    # Every value vector is the same, so any softmax mixture of in-image values equals it.
    layer = _layer(kernel_size=5, **options)
    x = torch.ones(1, 6, 7, 6, dtype=torch.float64) * torch.randn(1, 6, 1, 1, dtype=torch.float64)
    y = layer(x)
    torch.testing.assert_close(y, y[:, :, :1, :1].expand_as(y))


def test_zero_padding_changes_only_border_pixels_of_a_constant_input():
    layer = _layer(kernel_size=3, padding_mode='zeros')
    x = torch.ones(1, 6, 6, 6, dtype=torch.float64)
    y = layer(x)
    interior = y[:, :, 1:-1, 1:-1]
    torch.testing.assert_close(interior, y[:, :, 2:3, 2:3].expand_as(interior))
    assert not torch.allclose(y[:, :, 0, 0], y[:, :, 2, 2])


@pytest.mark.parametrize('options', [OPTIONS[0], OPTIONS[1], OPTIONS[4]])
def test_translation_equivariance_in_the_interior(options):
    # Relative and content logits see only offsets: shifting the input shifts the output, for
    # every pixel whose window lies inside both images.
    layer = _layer(kernel_size=3, **options)
    x = torch.randn(1, 6, 9, 10, dtype=torch.float64)
    shift = (2, 3)
    y_full = layer(x)
    y_crop = layer(x[:, :, shift[0]:, shift[1]:])
    r = 1
    torch.testing.assert_close(y_crop[:, :, r:-r, r:-r],
                               y_full[:, :, shift[0] + r:-r, shift[1] + r:-r])


@pytest.mark.parametrize('kernel_size', [3, 5])
def test_output_pixel_depends_on_exactly_its_window(kernel_size):
    layer = _layer(kernel_size=kernel_size)
    x = torch.randn(1, 6, 9, 8, dtype=torch.float64, requires_grad=True)
    i, j, r = 4, 1, kernel_size // 2
    layer(x)[0, :, i, j].sum().backward()
    depends = x.grad[0].abs().sum(0) > 0
    window = torch.zeros_like(depends)
    window[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1] = True
    assert torch.equal(depends, window)


@pytest.mark.parametrize('size', [(8, 8), (7, 9)])
def test_stride_two_is_average_pooled_stride_one(size):
    strided = _layer(kernel_size=3, stride=2)
    plain = _layer(kernel_size=3, stride=1)
    plain.load_state_dict(strided.state_dict())
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    expected = F.avg_pool2d(plain(x), 2, 2, ceil_mode=True)
    y = strided(x)
    torch.testing.assert_close(y, expected)
    # Same output size as the 3x3 stride-2 convolution it replaces.
    assert y.shape[-2:] == F.conv2d(x, torch.zeros(1, 6, 3, 3, dtype=x.dtype), stride=2,
                                    padding=1).shape[-2:]


@pytest.mark.parametrize('kernel_size', [3, 7, 11])
def test_parameter_count_is_three_dense_projections_plus_relative_tables(kernel_size):
    c_in, c_out, heads = 16, 32, 8
    layer = LocalSelfAttention2d(c_in, c_out, kernel_size=kernel_size, heads=heads)
    d = c_out // heads
    assert sum(p.numel() for p in layer.parameters()) == 3 * c_in * c_out + 2 * kernel_size * d // 2
    no_keys = LocalSelfAttention2d(c_in, c_out, kernel_size=kernel_size, heads=heads,
                                   logits='relative')
    assert sum(p.numel() for p in no_keys.parameters()) == 2 * c_in * c_out + 2 * kernel_size * d // 2


def test_window_larger_than_the_feature_map_and_batch_one():
    layer = _layer(kernel_size=9)
    x = torch.randn(1, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, _paper_formula(layer, x))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_gives_finite_outputs_and_gradients(dtype):
    layer = LocalSelfAttention2d(16, 32, kernel_size=7, heads=4)
    x = (10 * torch.randn(2, 16, 11, 9)).requires_grad_()
    with torch.autocast('cpu', dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_bias_option_adds_a_learned_per_channel_offset():
    layer = _layer(bias=True)
    x = torch.randn(1, 6, 4, 4, dtype=torch.float64)
    without = layer(x)
    with torch.no_grad():
        layer.bias.fill_(1.5)
    torch.testing.assert_close(layer(x), without + 1.5)


@pytest.mark.parametrize('kwargs,message', [
    (dict(kernel_size=4), 'kernel_size must be a positive odd integer, got 4'),
    (dict(kernel_size=0), 'kernel_size must be a positive odd integer, got 0'),
    (dict(kernel_size=-3), 'kernel_size must be a positive odd integer, got -3'),
    (dict(heads=3), r'out_channels \(8\) must be divisible by heads \(3\)'),
    (dict(heads=8), 'out_channels / heads must be even, got 1'),
    (dict(positional_encoding='learned'), "positional_encoding must be one of .*got 'learned'"),
    (dict(logits='dot'), "logits must be one of .*got 'dot'"),
    (dict(padding_mode='reflect'), "padding_mode must be one of .*got 'reflect'"),
    (dict(stride=3), 'stride must be 1 or 2, got 3'),
    (dict(logits='content'), "logits='content' needs positional_encoding = none"),
    (dict(positional_encoding='none'), "needs positional_encoding in"),
    (dict(dilation=2), 'dilation and groups must be 1'),
])
def test_bad_arguments_raise_value_errors_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LocalSelfAttention2d(6, 8, **kwargs)


def test_registered_as_conv_type_sasa_for_build_conv_layer_and_conv_module():
    from mmcv.cnn import ConvModule, build_conv_layer

    import sasa_det  # noqa: F401  (registers the conv type)
    layer = build_conv_layer(dict(type='SASA', heads=4), 8, 16, kernel_size=5, stride=2,
                             padding=2, bias=False)
    assert isinstance(layer, LocalSelfAttention2d) and layer.kernel_size == 5
    block = ConvModule(8, 16, 3, padding=1, conv_cfg=dict(type='SASA', heads=4),
                       norm_cfg=dict(type='BN'))
    assert isinstance(block.conv, LocalSelfAttention2d)
    assert block(torch.randn(2, 8, 7, 6)).shape == (2, 16, 7, 6)
