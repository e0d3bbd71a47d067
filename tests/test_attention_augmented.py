"""AAConv2d: attention augmented convolution (Bello et al. 2019) against explicit references."""
import pytest
import torch
import torch.nn.functional as F

from sasa_det.layers import AAConv2d


def explicit_relative_logits(q, rel_h, rel_w, height, width, max_pos):
    """S_H + S_W pair by pair, O((HW)^2): [i, j] = q_i . (r^W[jx - ix] + r^H[jy - iy])."""
    n, heads, hw, _ = q.shape
    out = q.new_zeros(n, heads, hw, hw)
    for i in range(hw):
        iy, ix = divmod(i, width)
        for j in range(hw):
            jy, jx = divmod(j, width)
            dx = max(-max_pos, min(max_pos, jx - ix)) + max_pos
            dy = max(-max_pos, min(max_pos, jy - iy)) + max_pos
            out[:, :, i, j] = (q[:, :, i] * (rel_w[dx] + rel_h[dy])).sum(-1)
    return out


@pytest.mark.parametrize('height, width, max_pos', [(3, 5, 63), (4, 6, 2), (1, 7, 63)])
def test_relative_logits_match_pairwise_definition(height, width, max_pos):
    """The table-indexing form equals S_H + S_W written pair by pair (with clipping past P)."""
    torch.manual_seed(0)
    layer = AAConv2d(8, 16, dk=8, dv=8, heads=2, max_relative_position=max_pos)
    q = torch.randn(2, 2, height * width, 4)
    expected = explicit_relative_logits(q, layer.rel_height, layer.rel_width, height, width,
                                        max_pos)
    torch.testing.assert_close(layer.relative_logits(q, height, width), expected)


def reference_forward(layer: AAConv2d, x: torch.Tensor) -> torch.Tensor:
    """concat(conv(x), W^O concat_h softmax((Q K^T + S_H + S_W) / sqrt(d_k^h)) V), head by head."""
    a = F.avg_pool2d(x, 2, 2, ceil_mode=True) if layer.stride == 2 else x
    n, _, h, w = a.shape
    dkh, dvh = layer.dk // layer.heads, layer.dv // layer.heads
    flat = a.flatten(2).transpose(1, 2)  # (N, HW, C_in)
    weight = layer.qkv.weight[:, :, 0, 0]
    q_all, k_all, v_all = (flat @ weight.t()).split([layer.dk, layer.dk, layer.dv], dim=-1)
    heads = []
    for hd in range(layer.heads):
        q = q_all[..., hd * dkh:(hd + 1) * dkh]
        k = k_all[..., hd * dkh:(hd + 1) * dkh]
        v = v_all[..., hd * dvh:(hd + 1) * dvh]
        logits = q @ k.transpose(1, 2)
        if layer.relative:
            logits = logits + explicit_relative_logits(
                q[:, None], layer.rel_height, layer.rel_width, h, w,
                layer.max_relative_position)[:, 0]
        heads.append(torch.softmax(logits * dkh ** -0.5, dim=-1) @ v)
    attn = torch.cat(heads, dim=-1).transpose(1, 2).reshape(n, layer.dv, h, w)
    attn = layer.proj(attn)
    return attn if layer.conv is None else torch.cat([layer.conv(x), attn], dim=1)


@pytest.mark.parametrize('stride, relative, dv', [(1, True, 8), (2, True, 8), (1, False, 8),
                                                  (2, True, 24)])
def test_forward_matches_reference(stride, relative, dv):
    torch.manual_seed(0)
    layer = AAConv2d(6, 24, kernel_size=3, dk=8, dv=dv, heads=4, relative=relative,
                     stride=stride)
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('size', [(33, 47), (8, 8), (1, 1)])
@pytest.mark.parametrize('stride', [1, 2])
def test_shapes_and_backward(size, stride):
    """Conv part (C_out - d_v) and attention part (d_v) line up at odd sizes and stride 2."""
    torch.manual_seed(0)
    layer = AAConv2d(8, 32, kernel_size=3, dk=0.25, dv=0.25, heads=4, stride=stride,
                     max_relative_position=8)
    assert layer.conv.out_channels == 24 and layer.dv == 8 and layer.dk == 8
    x = torch.randn(2, 8, *size, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 32, -(-size[0] // stride), -(-size[1] // stride))
    y.square().mean().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_fully_attentional_layer_has_no_convolution():
    layer = AAConv2d(8, 16, dk=16, dv=16, heads=4)
    assert layer.conv is None
    assert layer(torch.randn(1, 8, 3, 4)).shape == (1, 16, 3, 4)


def test_without_relative_logits_attention_is_permutation_equivariant():
    """The paper's motivation for S_H + S_W: plain MHA commutes with permuting the pixels."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 4)
    perm = torch.randperm(12)

    def permuted(t):
        return t.flatten(2)[:, :, perm].reshape(t.shape)

    plain = AAConv2d(4, 8, dk=8, dv=8, heads=2, relative=False)
    torch.testing.assert_close(plain(permuted(x)), permuted(plain(x)))
    relative = AAConv2d(4, 8, dk=8, dv=8, heads=2, relative=True)
    assert not torch.allclose(relative(permuted(x)), permuted(relative(x)), atol=1e-4)


def test_ratio_depths_round_to_multiples_of_heads():
    """AA-ResNet's kappa = 2 upsilon = 0.2 on 64 filters with 8 heads: 12.8 -> 16, 6.4 -> 8."""
    layer = AAConv2d(64, 64, dk=0.2, dv=0.1, heads=8)
    assert (layer.dk, layer.dv) == (16, 8)
    assert layer.qkv.out_channels == 2 * 16 + 8 and layer.conv.out_channels == 56


@pytest.mark.parametrize('kwargs, match', [
    (dict(dk=12, heads=8), 'dk must be a positive multiple of heads'),
    (dict(dv=4, heads=8), 'dv must be a positive multiple of heads'),
    (dict(dv=32, heads=8), r'dv \(32\) must not exceed out_channels'),
    (dict(dk=1.5), 'ratio'),
    (dict(stride=3), 'stride'),
    (dict(kernel_size=2), 'kernel_size'),
    (dict(heads=0), 'heads'),
    (dict(groups=2), 'groups'),
    (dict(max_relative_position=0), 'max_relative_position'),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(dk=8, dv=8, heads=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        AAConv2d(16, 16, **args)
