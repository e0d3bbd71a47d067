# The SASA demo model with 8 channels per head in the backbone instead of 8 heads per layer: at
# width 16 that is 2 heads in stage 1 (head dim 2 before), 4, 8 and 16 heads in stages 2 to 4.
_base_ = '../retinanet_sasa_r26w16_demo.py'

model = dict(backbone=dict(attention_cfg=dict(heads=None, head_dim=8)))
