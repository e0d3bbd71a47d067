# The SASA demo model with convolution in the first stage and attention from stage 2 on, the
# paper's best mix (its Table 3: convolution in the early stage(s), attention in the later ones).
_base_ = '../retinanet_sasa_r26w16_demo.py'

model = dict(backbone=dict(stage_with_attention=(False, True, True, True)))
