# Attention backbone (convolutional stem, every 3x3 conv a SASA layer), convolutional FPN and head.
# The paper's layer (k = 7, 8 heads) with two opt-in options that made the demo's attention
# detector learn (docs/ablations.md): cosine similarity with a learned temperature and a learned
# position bias. The paper's exact layer: --cfg-options
# model.backbone.attention_cfg.similarity=dot model.backbone.attention_cfg.position_bias=False
_base_ = './retinanet_r50_fpn.py'

attention = dict(type='SASA', kernel_size=7, heads=8, similarity='cosine', position_bias=True)
model = dict(
    backbone=dict(type='SASAResNet', stem='conv', stage_with_attention=(True, True, True, True),
                  attention_cfg=attention))
