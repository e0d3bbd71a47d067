# The SASA demo model with the paper's dot-product attention everywhere (no cosine similarity, no
# position bias); the FPN and head keep k = 3 and scale their logits by head_dim ** -0.5
# (64 channels / 8 heads), without which they do not learn at 128 px (docs/ablations.md).
_base_ = '../retinanet_sasa_r26w16_demo.py'

dot = dict(similarity='dot', position_bias=False)
model = dict(
    backbone=dict(attention_cfg=dot),
    neck=dict(attention_cfg=dict(dot, scale=(64 // 8) ** -0.5)),
    bbox_head=dict(attention_cfg=dict(dot, scale=(64 // 8) ** -0.5)))
