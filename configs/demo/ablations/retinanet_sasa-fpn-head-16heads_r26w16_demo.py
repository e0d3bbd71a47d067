# The SASA demo model with 16 heads (head dim 4) in the FPN and head instead of 8: trained, each of
# their heads attends to one or two window offsets, so more heads cover more offsets per layer.
_base_ = '../retinanet_sasa_r26w16_demo.py'

model = dict(neck=dict(attention_cfg=dict(heads=16)), bbox_head=dict(attention_cfg=dict(heads=16)))
