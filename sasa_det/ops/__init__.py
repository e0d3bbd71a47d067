"""Functional core: local 2D self-attention on tensors (no parameters, no modules)."""
from .local_attention import local_attention_2d
from .reference import (local_attention_2d_reference, local_attention_logits_reference,
                        local_attention_weights_reference, window_validity)
from .sliced import local_attention_2d_sliced

__all__ = ['local_attention_2d', 'local_attention_2d_reference', 'local_attention_2d_sliced',
           'local_attention_logits_reference', 'local_attention_weights_reference',
           'window_validity']
