"""SpatiallyAwareStem: the paper's spatially-aware attention stem, against an explicit reference."""
import math

import pytest
import torch

from sasa_det.layers import SpatiallyAwareStem


def reference_attend(stem: SpatiallyAwareStem, x: torch.Tensor) -> torch.Tensor:
    """Section 3 written out pixel by pixel: attention among the real pixels of each block.

    p(a, b, m) = softmax_m((emb_row(a) + emb_col(b)) . nu_m);  v_ab = (sum_m p W_V^m) x_ab;
    y_ij = sum_{ab in block(ij), real} softmax_ab(q_ij . k_ab) v_ab, per head.
    """
    n, _, h, w = x.shape
    s, heads, d = stem.block_size, stem.heads, stem.head_dim
    w_q, w_k = stem.qk.weight.chunk(2, dim=0)
    y = x.new_zeros(n, stem.out_channels, h, w)
    for by in range(0, h, s):
        for bx in range(0, w, s):
            pixels = [(by + a, bx + b, a, b) for a in range(s) for b in range(s)
                      if by + a < h and bx + b < w]
            values = []
            for i, j, a, b in pixels:
                logit = torch.stack([(stem.emb_row[a] + stem.emb_col[b]) @ stem.nu[m]
                                     for m in range(stem.num_value_mixtures)])
                p = torch.softmax(logit, dim=0)
                w_v = sum(p[m] * stem.value_weights[m] for m in range(stem.num_value_mixtures))
                values.append(x[:, :, i, j] @ w_v.t())  # (N, C_out)
            keys = [x[:, :, i, j] @ w_k.t() for i, j, _, _ in pixels]
            for i, j, _, _ in pixels:
                q = x[:, :, i, j] @ w_q.t()
                for hd in range(heads):
                    c = slice(hd * d, (hd + 1) * d)
                    logits = torch.stack([(q[:, c] * key[:, c]).sum(-1) for key in keys], -1)
                    attn = torch.softmax(logits, dim=-1)  # (N, pixels in the block)
                    y[:, c, i, j] = sum(attn[:, t, None] * values[t][:, c]
                                        for t in range(len(pixels)))
    return y


@pytest.mark.parametrize('size', [(8, 8), (6, 7), (5, 2)])
def test_attend_matches_pixelwise_reference_including_partial_blocks(size):
    """Block attention, mixture values and the masking of partial blocks follow the formula."""
    torch.manual_seed(0)
    stem = SpatiallyAwareStem(3, 16, heads=4, num_value_mixtures=3, embed_dim=5)
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(stem.attend(x), reference_attend(stem, x), rtol=1e-4, atol=1e-5)


def test_scale_option_multiplies_logits():
    """scale=c equals the unscaled stem with W_Q multiplied by c (q . k is linear in q)."""
    torch.manual_seed(0)
    scaled = SpatiallyAwareStem(3, 16, heads=4, scale=0.25)
    plain = SpatiallyAwareStem(3, 16, heads=4)
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        plain.qk.weight[:16] *= 0.25
    x = torch.randn(1, 3, 7, 9)
    torch.testing.assert_close(scaled.attend(x), plain.attend(x))


def test_attention_stays_inside_the_pooling_block():
    """Changing one pixel changes the pre-pool output only inside its own aligned 4x4 block."""
    torch.manual_seed(0)
    stem = SpatiallyAwareStem(3, 16, heads=4)
    x = torch.randn(1, 3, 13, 11)
    x2 = x.clone()
    x2[:, :, 5, 9] += 1.0  # block rows 4..7, block cols 8..10 (partial)
    changed = (stem.attend(x2) - stem.attend(x)).abs().amax(dim=(0, 1)) > 0
    expected = torch.zeros(13, 11, dtype=torch.bool)
    expected[4:8, 8:11] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize('size', [(32, 32), (33, 47), (3, 5), (224, 224)])
def test_output_shape_matches_resnet_stem(size):
    """64 channels at ceil(H/4) x ceil(W/4), as 7x7/2 conv + 3x3/2 max pool give."""
    stem = SpatiallyAwareStem()
    conv_h = math.ceil(math.ceil(size[0] / 2) / 2)
    conv_w = math.ceil(math.ceil(size[1] / 2) / 2)
    with torch.no_grad():
        y = stem(torch.randn(1, 3, *size))
    assert y.shape == (1, 64, conv_h, conv_w)
    assert (y >= 0).all()  # ReLU before the pool


def test_forward_pools_normalised_real_pixels_only():
    """forward = maxpool4(relu(BN(attend(x)))) with BN statistics over real pixels only."""
    torch.manual_seed(0)
    stem = SpatiallyAwareStem(3, 16, heads=4)
    x = torch.randn(2, 3, 9, 6)
    pre = stem.attend(x)
    mean = pre.mean(dim=(0, 2, 3))
    var = pre.var(dim=(0, 2, 3), unbiased=False)
    expected = torch.nn.functional.max_pool2d(
        torch.relu((pre - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)),
        4, 4, ceil_mode=True)
    torch.testing.assert_close(stem(x), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stem.norm.running_mean, 0.1 * mean.detach())


def test_backward_reaches_every_parameter_at_odd_size():
    torch.manual_seed(0)
    stem = SpatiallyAwareStem()
    x = torch.randn(2, 3, 33, 47, requires_grad=True)
    stem(x).square().mean().backward()
    for name, param in stem.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()


def test_mixture_weights_are_convex_per_position():
    stem = SpatiallyAwareStem(num_value_mixtures=5)
    p = stem.mixture_weights()
    assert p.shape == (4, 4, 5)
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 4))
    assert (p > 0).all()


@pytest.mark.parametrize('kwargs, match', [
    (dict(out_channels=30, heads=4), 'divisible by heads'),
    (dict(block_size=0), 'block_size'),
    (dict(num_value_mixtures=0), 'num_value_mixtures'),
    (dict(heads=2.0), 'heads'),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpatiallyAwareStem(**kwargs)
