# Attention backbone (convolutional stem), attention FPN and attention head: the paper's
# headline COCO model.
_base_ = './retinanet_sasa_r50_fpn_convhead.py'

# The FPN and head layers are the backbone's (`attention` in ./retinanet_sasa_r50_fpn_convhead.py);
# the paper's exact layer sets similarity=dot and position_bias=False in model.neck.attention_cfg
# and model.bbox_head.attention_cfg too.
model = dict(
    neck=dict(type='SASAFPN', attention_cfg={{_base_.attention}}),
    bbox_head=dict(type='SASARetinaHead', attention_cfg={{_base_.attention}},
                   head_mixing='extra'))
