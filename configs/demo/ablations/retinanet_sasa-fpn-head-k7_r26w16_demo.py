# The SASA demo model with a 7 x 7 window in the FPN and head instead of 3 x 3, the backbone's
# window. At 128 px only P3 (16 x 16) is larger than the window; on P4 (8 x 8) and below it covers
# (almost) the whole map.
_base_ = '../retinanet_sasa_r26w16_demo.py'

model = dict(neck=dict(attention_cfg=dict(kernel_size=7)),
             bbox_head=dict(attention_cfg=dict(kernel_size=7)))
