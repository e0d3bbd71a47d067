# The headline SASA RetinaNet of configs/retinanet_sasa_r50.py (attention backbone with a
# convolutional stem, attention FPN and attention head) shrunk as retinanet_r26w16.py is, with the
# same FPN/head GroupNorm. Every attention layer differs from the paper's in two opt-in options,
# measured over three seeds in docs/ablations.md:
# - similarity='cosine': q and k normalised, a learned per-head temperature (from 10, at most
#   100). With the paper's unscaled q.k the trained demo model's stage-4 logits reach |3000|
#   (one-hot attention) while stage 1 stays a near-uniform 7 x 7 blur;
# - position_bias=True: a learned, content-free bias per head over the window offsets.
# The FPN and head use k = 3: at 128 x 128 their maps are 16 x 16 down to 1 x 1.
# The paper's layer: configs/demo/ablations/retinanet_sasa-dot_r26w16_demo.py.
_base_ = '../../../_base_/models/retinanet_sasa_r50_fpn.py'

attention = dict(type='SASA', heads=8, similarity='cosine', position_bias=True)
fpn_head_norm = dict(type='GN', num_groups=8, requires_grad=True)
model = dict(
    backbone=dict(depth=26, base_channels=16, attention_cfg=dict(attention, kernel_size=7)),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64,
              attention_cfg=dict(attention, kernel_size=3), norm_cfg=fpn_head_norm),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=2,
                   attention_cfg=dict(attention, kernel_size=3), norm_cfg=fpn_head_norm,
                   anchor_generator=dict(octave_base_scale=2)))
