"""What the local-attention layers of a model attend to: captured weights and their statistics.

:func:`capture_attention` records, for every SASA layer a forward pass runs through, the weights of
each query over its k x k window (read through the op's reference path, so the formula exists
once). :func:`window_statistics` summarises them; for a query with n keys inside the image:

- normalised entropy H / log n: 1 is a uniform blur over the window, 0 one key (one-hot);
- effective window exp(H): how many keys a query effectively averages;
- centre mass: the weight on the 3 x 3 offsets around the query (a 3 x 3 conv's reach);
- largest |logit|: how far the logits are from the near-uniform softmax of initialisation.
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List

import torch
from torch import Tensor, nn

from ..layers import LocalSelfAttention2d


@contextmanager
def capture_attention(model: nn.Module, layer_names=None) -> Iterator[Dict[str, List[dict]]]:
    """Record every SASA layer's attention while the ``with`` block runs the model.

    Yields a dict: layer name -> list of captures, one per call of the layer (a head layer runs
    once per pyramid level), each ``dict(weights=(B, Ho, Wo, heads, k*k), valid=(Ho, Wo, 1,
    k*k), logits=same as weights, kernel_size=k, input_size=(H, W) of the layer's input)``,
    detached and on the CPU. ``layer_names`` limits the capture to those names
    (``model.named_modules()`` names); unknown names raise.
    """
    layers = {name: m for name, m in model.named_modules()
              if isinstance(m, LocalSelfAttention2d)}
    if layer_names is not None:
        unknown = sorted(set(layer_names) - set(layers))
        if unknown:
            raise ValueError(f'no SASA layer named {unknown} in the model; its SASA layers are '
                             f'{sorted(layers)}')
        layers = {name: layers[name] for name in layer_names}
    captured: Dict[str, List[dict]] = {name: [] for name in layers}

    def hook(name):
        def record(module, inputs, output):
            with torch.no_grad():
                maps = {key: t.cpu() for key, t in module.attention_maps(inputs[0]).items()}
            captured[name].append(dict(maps, kernel_size=module.kernel_size,
                                       input_size=tuple(inputs[0].shape[-2:])))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def window_statistics(weights: Tensor, valid: Tensor, logits: Tensor,
                      kernel_size: int) -> Dict[str, float]:
    """Means over queries and heads of the statistics in this module's docstring.

    Args:
        weights: (B, Ho, Wo, heads, k*k) attention weights (rows sum to 1 over valid keys).
        valid: bool, broadcastable to ``weights``: keys inside the image.
        logits: like ``weights``, the logits before the softmax (masked keys may be -inf).
        kernel_size: k.

    Returns:
        dict(entropy=mean normalised entropy, effective_window=mean exp(entropy),
        centre_mass=mean weight on the centre 3 x 3, max_abs_logit=largest finite |logit|).
    """
    weights = weights.double()
    valid = valid.expand_as(weights)
    n_valid = valid.sum(-1).double()
    plogp = torch.where(weights > 0, weights * weights.clamp_min(1e-300).log(),
                        torch.zeros_like(weights))
    entropy = -plogp.sum(-1)
    # A query with a single key (k = 1 or a 1 x 1 map) has nothing to spread over: count it as 0.
    normalised = torch.where(n_valid > 1, entropy / n_valid.clamp_min(2).log(),
                             torch.zeros_like(entropy))
    r = kernel_size // 2
    centre = torch.zeros(kernel_size, kernel_size, dtype=torch.bool, device=weights.device)
    centre[max(r - 1, 0):r + 2, max(r - 1, 0):r + 2] = True
    centre_mass = weights[..., centre.flatten()].sum(-1)
    finite = logits[valid & torch.isfinite(logits)]
    return dict(entropy=normalised.mean().item(), effective_window=entropy.exp().mean().item(),
                centre_mass=centre_mass.mean().item(),
                max_abs_logit=finite.abs().max().item() if finite.numel() else float('nan'))


def layer_statistics(captures: List[dict]) -> Dict[str, float]:
    """:func:`window_statistics` of one layer over all its captured calls, weighted by queries."""
    totals: Dict[str, float] = {}
    count = 0
    for capture in captures:
        stats = window_statistics(capture['weights'], capture['valid'], capture['logits'],
                                  capture['kernel_size'])
        queries = capture['weights'][..., 0].numel()
        for key, value in stats.items():
            if key == 'max_abs_logit':
                totals[key] = max(totals.get(key, float('-inf')), value)
            else:
                totals[key] = totals.get(key, 0.0) + value * queries
        count += queries
    return {key: value if key == 'max_abs_logit' else value / count
            for key, value in totals.items()}
