"""Triton kernels for local 2D self-attention: a fused forward and a two-kernel backward.

Notation as in :func:`sasa_det.ops.local_attention_weights_reference`: query (i, j) of the
(Ho, Wo) grid sits at input position (s*i, s*j); its neighbour at window offset (u, w) is key
(a, c) = (s*i + u - r, s*j + w - r), r = k // 2, with

    logit_uw = q_ij . k_ac + row_ij[u] + col_ij[w] + bias[n, u, w]    (each term optional)

Forward (one program per block of queries of one image and head): an online softmax over the
k*k offsets keeps a running maximum m, a running sum l and an unnormalised output,

    m' = max(m, logit),  l' = l e^(m - m') + e^(logit - m'),
    acc' = acc e^(m - m') + e^(logit - m') v_ac

so it stores only y = acc / l and the log-sum-exp lse = m + log l per query and head, not the
(B, Ho, Wo, heads, k*k) weights. The backward recomputes p_uw = exp(logit_uw - lse) and, with
delta_ij = dy_ij . y_ij, the logit gradient ds_uw = p_uw (dy_ij . v_ac - delta_ij):

* the query-side kernel sums over each query's own window: dq = sum_uw ds_uw k_ac,
  d row[u] = sum_w ds_uw, d col[w] = sum_u ds_uw, and one partial sum of ds_uw per program and
  offset for d bias (summed over programs in PyTorch, so the order is fixed);
* the key-side kernel gathers, for each key (a, c), over the queries that see it. Out-of-image
  neighbours are masked or zero, never clamped, so those queries are exactly the mirrored window
  (s*i, s*j) = (a + r - u, c + r - w) that lands on the query grid:
  dk_ac = sum ds_uw q_ij, dv_ac = sum p_uw dy_ij.

Every output element is written by exactly one program and summed in a fixed order: no atomics,
so two backward passes give bitwise identical gradients. Inputs of any float type are loaded and
cast to float32 at once; all arithmetic is float32. Head dims are padded to powers of two with
masked lanes. Under ``TRITON_INTERPRET=1`` (read when this module is imported) the kernels run on
CPU tensors in Triton's numpy interpreter, which is how the tests check them without a GPU.
"""
import triton
import triton.language as tl

from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _load_tile(row_ptrs, cols, col_stride, row_ok, col_ok):
    """[rows, cols] float32 tile at row_ptrs[r] + cols[c] * col_stride; zero where masked."""
    ptrs = row_ptrs[:, None] + cols[None, :] * col_stride
    return tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _query_block(heads, q_height, q_width, BLOCK: tl.constexpr):
    """This program's image b, head n, and its block of flat query indices idx = i * Wo + j."""
    pid_bn = tl.program_id(1)
    b = (pid_bn // heads).to(tl.int64)
    n = pid_bn % heads
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    return b, n, idx, idx < q_height * q_width, idx // q_width, idx % q_width


@triton.jit
def _positional_logit(logit, row_u, col_ptrs, c_sk, bias_ptr, p_sn, p_su, p_sw, n, u, w, lane_ok,
                      HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr, HAS_BIAS: tl.constexpr):
    """logit + row[u] + col[w] + bias[n, u, w], each where present (row[u] is loaded already)."""
    if HAS_ROW:
        logit += row_u
    if HAS_COL:
        logit += tl.load(col_ptrs + w * c_sk, mask=lane_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        logit += tl.load(bias_ptr + n * p_sn + u * p_su + w * p_sw).to(tl.float32)
    return logit


@triton.jit
def _window_logit(q, k_base, a, c, inside, d, head_dim, k_sh, k_sw, k_sd, row_u, col_ptrs, c_sk,
                  bias_ptr, p_sn, p_su, p_sw, n, u, w, lane_ok, MASK: tl.constexpr,
                  HAS_KEYS: tl.constexpr, HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr,
                  HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """(logit [BLOCK], key tile [BLOCK, BLOCK_D]) of each query of the block and its neighbour
    (a, c) at offset (u, w): -inf outside the image under MASK; the key tile is zero without
    keys (and then unused)."""
    logit = tl.zeros([BLOCK], tl.float32)
    key = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    if HAS_KEYS:
        key = _load_tile(k_base + a * k_sh + c * k_sw, d, k_sd, inside, d < head_dim)
        logit += tl.sum(q * key, axis=1)
    logit = _positional_logit(logit, row_u, col_ptrs, c_sk, bias_ptr, p_sn, p_su, p_sw, n, u, w,
                              lane_ok, HAS_ROW, HAS_COL, HAS_BIAS)
    if MASK:
        logit = tl.where(inside, logit, float('-inf'))
    return logit, key


@triton.jit
def _forward_kernel(
        q_ptr, k_ptr, v_ptr, row_ptr, col_ptr, bias_ptr, out_ptr, lse_ptr,
        q_sb, q_sh, q_sw, q_sn, q_sd, k_sb, k_sh, k_sw, k_sn, k_sd,
        v_sb, v_sh, v_sw, v_sn, v_sd, r_sb, r_sh, r_sw, r_sn, r_sk,
        c_sb, c_sh, c_sw, c_sn, c_sk, p_sn, p_su, p_sw,
        heads, height, width, q_height, q_width, head_dim, value_dim, query_stride,
        KERNEL_SIZE: tl.constexpr, MASK: tl.constexpr, HAS_KEYS: tl.constexpr,
        HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """out (B, Ho, Wo, heads, dv) = softmax-weighted window sum; lse (B, Ho, Wo, heads)."""
    b, n, idx, lane_ok, i, j = _query_block(heads, q_height, q_width, BLOCK)
    top = i * query_stride - KERNEL_SIZE // 2
    left = j * query_stride - KERNEL_SIZE // 2
    d = tl.arange(0, BLOCK_D)
    e = tl.arange(0, BLOCK_DV)
    k_base = k_ptr + b * k_sb + n * k_sn
    v_base = v_ptr + b * v_sb + n * v_sn
    row_ptrs = row_ptr + b * r_sb + i * r_sh + j * r_sw + n * r_sn
    col_ptrs = col_ptr + b * c_sb + i * c_sh + j * c_sw + n * c_sn
    q = tl.zeros([BLOCK, BLOCK_D], tl.float32)  # read only with keys
    if HAS_KEYS:
        q = _load_tile(q_ptr + b * q_sb + i * q_sh + j * q_sw + n * q_sn, d, q_sd, lane_ok,
                       d < head_dim)
    run_max = tl.full([BLOCK], -1.0e30, tl.float32)  # finite: exp(run_max - run_max) stays 1
    run_sum = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_DV], tl.float32)
    for u in range(KERNEL_SIZE):
        a = top + u
        a_ok = lane_ok & (a >= 0) & (a < height)
        row_u = 0.0
        if HAS_ROW:
            row_u = tl.load(row_ptrs + u * r_sk, mask=lane_ok, other=0.0).to(tl.float32)
        for w in range(KERNEL_SIZE):
            c = left + w
            inside = a_ok & (c >= 0) & (c < width)
            logit, key = _window_logit(q, k_base, a, c, inside, d, head_dim, k_sh, k_sw, k_sd,
                                       row_u, col_ptrs, c_sk, bias_ptr, p_sn, p_su, p_sw, n, u,
                                       w, lane_ok, MASK, HAS_KEYS, HAS_ROW, HAS_COL, HAS_BIAS,
                                       BLOCK, BLOCK_D)
            new_max = tl.maximum(run_max, logit)
            scale = tl.exp(run_max - new_max)
            p = tl.exp(logit - new_max)
            run_sum = run_sum * scale + p
            value = _load_tile(v_base + a * v_sh + c * v_sw, e, v_sd, inside, e < value_dim)
            acc = acc * scale[:, None] + p[:, None] * value
            run_max = new_max
    run_sum = tl.where(lane_ok, run_sum, 1.0)  # lanes past the grid: keep them finite
    slot = (b * q_height * q_width + idx) * heads + n  # flat (b, i, j, n) of out and lse
    out = acc / run_sum[:, None]
    tl.store(out_ptr + slot[:, None] * value_dim + e[None, :],
             out.to(out_ptr.dtype.element_ty), mask=lane_ok[:, None] & (e < value_dim)[None, :])
    tl.store(lse_ptr + slot, run_max + tl.log(run_sum), mask=lane_ok)


@triton.jit
def _backward_query_kernel(
        q_ptr, k_ptr, v_ptr, row_ptr, col_ptr, bias_ptr, grad_ptr, out_ptr, lse_ptr,
        delta_ptr, dq_ptr, drow_ptr, dcol_ptr, dbias_ptr,
        q_sb, q_sh, q_sw, q_sn, q_sd, k_sb, k_sh, k_sw, k_sn, k_sd,
        v_sb, v_sh, v_sw, v_sn, v_sd, r_sb, r_sh, r_sw, r_sn, r_sk,
        c_sb, c_sh, c_sw, c_sn, c_sk, p_sn, p_su, p_sw,
        heads, height, width, q_height, q_width, head_dim, value_dim, query_stride,
        KERNEL_SIZE: tl.constexpr, MASK: tl.constexpr, HAS_KEYS: tl.constexpr,
        HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_K: tl.constexpr):
    """dq, d row, d col (contiguous, shaped like q / row / col), delta = dy . y per query and
    head, and d bias partial sums (B * heads, programs along the grid, k * k)."""
    b, n, idx, lane_ok, i, j = _query_block(heads, q_height, q_width, BLOCK)
    top = i * query_stride - KERNEL_SIZE // 2
    left = j * query_stride - KERNEL_SIZE // 2
    d = tl.arange(0, BLOCK_D)
    e = tl.arange(0, BLOCK_DV)
    k_base = k_ptr + b * k_sb + n * k_sn
    v_base = v_ptr + b * v_sb + n * v_sn
    row_ptrs = row_ptr + b * r_sb + i * r_sh + j * r_sw + n * r_sn
    col_ptrs = col_ptr + b * c_sb + i * c_sh + j * c_sw + n * c_sn
    q = tl.zeros([BLOCK, BLOCK_D], tl.float32)  # read only with keys
    if HAS_KEYS:
        q = _load_tile(q_ptr + b * q_sb + i * q_sh + j * q_sw + n * q_sn, d, q_sd, lane_ok,
                       d < head_dim)
    slot = (b * q_height * q_width + idx) * heads + n
    value_ok = lane_ok[:, None] & (e < value_dim)[None, :]
    grad = tl.load(grad_ptr + slot[:, None] * value_dim + e[None, :], mask=value_ok,
                   other=0.0).to(tl.float32)
    out = tl.load(out_ptr + slot[:, None] * value_dim + e[None, :], mask=value_ok,
                  other=0.0).to(tl.float32)
    delta = tl.sum(grad * out, axis=1)
    tl.store(delta_ptr + slot, delta, mask=lane_ok)
    lse = tl.load(lse_ptr + slot, mask=lane_ok, other=0.0)
    dq = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    offsets = tl.arange(0, BLOCK_K)
    dcol = tl.zeros([BLOCK, BLOCK_K], tl.float32)
    partial_ptr = dbias_ptr + (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)) \
        * (KERNEL_SIZE * KERNEL_SIZE)
    for u in range(KERNEL_SIZE):
        a = top + u
        a_ok = lane_ok & (a >= 0) & (a < height)
        row_u = 0.0
        if HAS_ROW:
            row_u = tl.load(row_ptrs + u * r_sk, mask=lane_ok, other=0.0).to(tl.float32)
        drow = tl.zeros([BLOCK], tl.float32)
        for w in range(KERNEL_SIZE):
            c = left + w
            inside = a_ok & (c >= 0) & (c < width)
            logit, key = _window_logit(q, k_base, a, c, inside, d, head_dim, k_sh, k_sw, k_sd,
                                       row_u, col_ptrs, c_sk, bias_ptr, p_sn, p_su, p_sw, n, u,
                                       w, lane_ok, MASK, HAS_KEYS, HAS_ROW, HAS_COL, HAS_BIAS,
                                       BLOCK, BLOCK_D)
            p = tl.where(lane_ok, tl.exp(logit - lse), 0.0)
            value = _load_tile(v_base + a * v_sh + c * v_sw, e, v_sd, inside, e < value_dim)
            ds = p * (tl.sum(grad * value, axis=1) - delta)
            if HAS_KEYS:
                dq += ds[:, None] * key
            drow += ds
            dcol += tl.where(offsets[None, :] == w, ds[:, None], 0.0)
            if HAS_BIAS:
                tl.store(partial_ptr + u * KERNEL_SIZE + w, tl.sum(ds, axis=0))
        if HAS_ROW:
            tl.store(drow_ptr + slot * KERNEL_SIZE + u, drow.to(drow_ptr.dtype.element_ty),
                     mask=lane_ok)
    if HAS_COL:
        tl.store(dcol_ptr + slot[:, None] * KERNEL_SIZE + offsets[None, :],
                 dcol.to(dcol_ptr.dtype.element_ty),
                 mask=lane_ok[:, None] & (offsets < KERNEL_SIZE)[None, :])
    if HAS_KEYS:
        tl.store(dq_ptr + slot[:, None] * head_dim + d[None, :], dq.to(dq_ptr.dtype.element_ty),
                 mask=lane_ok[:, None] & (d < head_dim)[None, :])


@triton.jit
def _backward_key_kernel(
        q_ptr, k_ptr, v_ptr, row_ptr, col_ptr, bias_ptr, grad_ptr, lse_ptr, delta_ptr,
        dk_ptr, dv_ptr,
        q_sb, q_sh, q_sw, q_sn, q_sd, k_sb, k_sh, k_sw, k_sn, k_sd,
        v_sb, v_sh, v_sw, v_sn, v_sd, r_sb, r_sh, r_sw, r_sn, r_sk,
        c_sb, c_sh, c_sw, c_sn, c_sk, p_sn, p_su, p_sw,
        heads, height, width, q_height, q_width, head_dim, value_dim, query_stride,
        KERNEL_SIZE: tl.constexpr, HAS_KEYS: tl.constexpr,
        HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """dk, dv (contiguous (B, H, W, heads, d)): per key, a gather over the queries whose window
    holds it. Both padding modes give the same set: an in-image key is never masked."""
    b, n, idx, lane_ok, a, c = _query_block(heads, height, width, BLOCK)  # blocks of keys here
    d = tl.arange(0, BLOCK_D)
    e = tl.arange(0, BLOCK_DV)
    if HAS_KEYS:
        key = _load_tile(k_ptr + b * k_sb + a * k_sh + c * k_sw + n * k_sn, d, k_sd, lane_ok,
                         d < head_dim)
    value = _load_tile(v_ptr + b * v_sb + a * v_sh + c * v_sw + n * v_sn, e, v_sd, lane_ok,
                       e < value_dim)
    dk = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_DV], tl.float32)
    for u in range(KERNEL_SIZE):
        centre_row = a + KERNEL_SIZE // 2 - u  # input row s*i of the query seeing this key at u
        i = centre_row // query_stride
        i_ok = lane_ok & (centre_row >= 0) & (centre_row % query_stride == 0) & (i < q_height)
        for w in range(KERNEL_SIZE):
            centre_col = c + KERNEL_SIZE // 2 - w
            j = centre_col // query_stride
            sees = i_ok & (centre_col >= 0) & (centre_col % query_stride == 0) & (j < q_width)
            slot = ((b * q_height + i) * q_width + j) * heads + n
            logit = tl.zeros([BLOCK], tl.float32)
            if HAS_KEYS:
                q = _load_tile(q_ptr + b * q_sb + i * q_sh + j * q_sw + n * q_sn, d, q_sd, sees,
                               d < head_dim)
                logit += tl.sum(q * key, axis=1)
            row_u = 0.0
            if HAS_ROW:
                row_u = tl.load(row_ptr + b * r_sb + i * r_sh + j * r_sw + n * r_sn + u * r_sk,
                                mask=sees, other=0.0).to(tl.float32)
            col_ptrs = col_ptr + b * c_sb + i * c_sh + j * c_sw + n * c_sn
            logit = _positional_logit(logit, row_u, col_ptrs, c_sk, bias_ptr, p_sn, p_su, p_sw,
                                      n, u, w, sees, HAS_ROW, HAS_COL, HAS_BIAS)
            lse = tl.load(lse_ptr + slot, mask=sees, other=0.0)
            p = tl.where(sees, tl.exp(logit - lse), 0.0)
            grad = tl.load(grad_ptr + slot[:, None] * value_dim + e[None, :],
                           mask=sees[:, None] & (e < value_dim)[None, :], other=0.0).to(tl.float32)
            dv += p[:, None] * grad
            if HAS_KEYS:
                delta = tl.load(delta_ptr + slot, mask=sees, other=0.0)
                ds = p * (tl.sum(grad * value, axis=1) - delta)
                dk += ds[:, None] * q
    slot = (b * height * width + idx) * heads + n
    tl.store(dv_ptr + slot[:, None] * value_dim + e[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=lane_ok[:, None] & (e < value_dim)[None, :])
    if HAS_KEYS:
        tl.store(dk_ptr + slot[:, None] * head_dim + d[None, :], dk.to(dk_ptr.dtype.element_ty),
                 mask=lane_ok[:, None] & (d < head_dim)[None, :])


INTERPRETED = isinstance(_forward_kernel, InterpretedFunction)
"""True when this module was imported under TRITON_INTERPRET=1: the kernels take CPU tensors."""
