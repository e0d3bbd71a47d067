"""Exact multiply-add counts of the attention layers' own arithmetic, from the shapes in one pass.

Each rule counts what the layer's ``forward`` computes itself; the child modules it calls (the
stem's and AA's projections, norms, pools) are counted by the standard rules like any other
module. The SASA layer applies its projection weight itself (W_Q at the queries only, W_K and
W_V everywhere), so its rule counts the projections.
Conventions (those :mod:`sasa_det.analysis.standard_rules` applies to convolutions):

- A dot product of length n is n multiply-adds. Softmax, masking, the logit scale (foldable into
  W_Q), biases and additions of logit terms are not multiply-adds and are not counted, as
  mmengine counts neither a convolution's bias nor an activation.
- Windowed attention is counted **per window position**: every query attends to all k x k
  offsets of its window (all s x s pixels of its block in the stem), inside the image or not.
  This is the paper-style count and what a dense kernel computes; it does not depend on
  ``padding_mode`` (masked-out neighbours count) nor on the kernel implementation.
- Relative logits are counted in their factorised form: a query meets k row and k column
  embeddings of d/2 dims (SASA), or W + H embeddings of d_k^h dims (AA), never k^2 or HW
  combined offsets.
- Pools are child modules (``pool``: a 2x2 average pool or an identity), counted by the
  standard rules: average pools 1 per input element, max pools free.
"""
from ..layers import AAConv2d, LocalSelfAttention2d, SpatiallyAwareStem
from .counter import register_module_rule


@register_module_rule(LocalSelfAttention2d)
def local_self_attention(module: LocalSelfAttention2d, inputs, output) -> int:
    """SASA layer on x (N, C_in, H, W): P = N*H*W positions, Q = N*Ho*Wo queries, (Ho, Wo) =
    ceil((H, W) / query_stride) (Q = P unless downsample='query'), window k, C_out = heads * d.

    Counted by the child ``pool`` (the 2x2 average pool of a stride-2 'avgpool' layer). Counted
    here:
    - projections: W_Q at the queries, Q * C_in * C_out; W_K and W_V at every position,
      P * C_in * 2 C_out (P * C_in * C_out with logits='relative', which has no W_K);
    - q.k (q.(k + p) or q.p with absolute encodings): Q * C_out * k^2 (d per window position
      and head);
    - q.r_row and q.r_col: Q * heads * (d/2 * k + d/2 * k) = Q * C_out * k, whether the tables
      are shared or per head;
    - softmax-weighted sum of the values: Q * C_out * k^2.
    - similarity='cosine': the L2 norms of q and k (a square per channel) and the rescaling
      (a multiplication per channel, for q also by the temperature): Q * 3 C_out + P * 2 C_out.
    The learned position bias is an addition to the logits: not a multiply-add. The number of
    heads changes no term (each is per channel), only the parameters.
    """
    n, c_in, h, w = inputs[0].shape
    s, c_out, k = module.query_stride, module.out_channels, module.kernel_size
    positions, queries = n * h * w, n * -(-h // s) * -(-w // s)
    macs = queries * c_in * c_out + positions * c_in * c_out * (2 if module.uses_content else 1)
    macs += queries * c_out * k * k  # softmax-weighted sum of v_ab
    if module.uses_content or module.positional_encoding == 'absolute':
        macs += queries * c_out * k * k  # q . k_ab
    if module.positional_encoding == 'relative':
        macs += queries * c_out * k  # q . r_row[u] + q . r_col[w]
    if module.similarity == 'cosine':
        macs += queries * c_out * 3 + positions * c_out * 2  # normalise q and k, scale q
    return macs


@register_module_rule(SpatiallyAwareStem)
def spatially_aware_stem(module: SpatiallyAwareStem, inputs, output) -> int:
    """Attention stem on x (N, C_in, H, W), blocks of s x s, M value matrices, embeddings of E.

    The input is padded to whole blocks: P = N * ceil(H/s) s * ceil(W/s) s positions.
    Counted by children: ``qk`` (P * C_in * 2 C_out), ``norm``, ``act``, ``pool``. Counted here:
    - mixture logits (emb_row(a) + emb_col(b)) . nu_m: s^2 * M * E;
    - mixed value matrices sum_m p(a, b, m) W_V^m: s^2 * M * C_out * C_in (once per forward,
      cheaper than projecting with all M matrices);
    - values: P * C_in * C_out;
    - q.k and the softmax-weighted sum: P * C_out * s^2 each (every pixel of the block).
    """
    n, c_in, h, w = inputs[0].shape
    s, c_out = module.block_size, module.out_channels
    mixtures, embed_dim = module.value_weights.shape[0], module.nu.shape[1]
    positions = n * -(-h // s) * s * -(-w // s) * s
    macs = s * s * mixtures * embed_dim + s * s * mixtures * c_out * c_in
    macs += positions * c_in * c_out
    macs += 2 * positions * c_out * s * s
    return macs


@register_module_rule(AAConv2d)
def attention_augmented_conv(module: AAConv2d, inputs, output) -> int:
    """AA conv on x (N, C_in, H, W): attention over the L = h*w positions of the output (the
    input, 2x2-average pooled by the child ``pool`` when stride 2), key depth d_k and value
    depth d_v over all heads.

    Counted by children: ``conv``, ``qkv`` and ``proj`` (1x1 convs) and ``pool``. Counted here:
    - q.k over all pairs: N * L^2 * d_k;
    - relative logits S_W, S_H: N * L * (w + h) * d_k (a query meets w width and h height
      embeddings of d_k / heads dims per head);
    - softmax-weighted sum: N * L^2 * d_v.
    """
    n, _, h, w = output.shape
    length = h * w
    macs = n * length * length * (module.dk + module.dv)
    if module.relative:
        macs += n * length * (h + w) * module.dk
    return macs
