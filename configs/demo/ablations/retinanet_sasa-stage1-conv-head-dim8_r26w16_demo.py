# The SASA demo model with the two best-scoring of the paper's levers together (neither alone beat
# the SASA demo model): convolution in stage 1, and 8 channels per head in the attention stages
# (4, 8 and 16 heads in stages 2 to 4).
_base_ = './retinanet_sasa-stage1-conv_r26w16_demo.py'

model = dict(backbone=dict(attention_cfg=dict(heads=None, head_dim=8)))
