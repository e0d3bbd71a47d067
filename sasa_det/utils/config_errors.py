"""Name the config key behind a ValueError raised while building from a config.

The layers and backbones validate their arguments at construction and raise
``ValueError('<argument> must be ..., got <value>')``. Built through mmengine's registries the
argument is several levels below the config the user wrote (``model.backbone.attention_cfg.
kernel_size``). :func:`explain_config_errors` turns such an error into a
:class:`ConfigValueError` that starts with the full config key and its value:

    model.backbone.attention_cfg.kernel_size = 4: kernel_size must be a positive odd integer, got 4

How the key is found, without changing the layers: the traceback's ``build_from_cfg`` frames
(mmengine's registry builder) hold the config dicts being built, outermost first. The innermost
of them that occurs in the user's config locates the component (``model.backbone``); within it,
the leaf whose key is a word of the error message and whose value appears in the message is the
culprit. If no leaf matches, the error is re-raised unchanged.
"""
import re
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Tuple


class ConfigValueError(ValueError):
    """A bad config value; ``key`` is its dotted config path, ``value`` the value."""

    def __init__(self, key: str, value: Any, reason: str) -> None:
        super().__init__(f'{key} = {value!r}: {reason}')
        self.key, self.value, self.reason = key, value, reason


def _children(node: Any, prefix: str) -> Iterator[Tuple[str, Any, Any]]:
    """(path, key, value) of the direct children of a dict or list node."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (f'{prefix}.{key}' if prefix else str(key)), key, value
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield f'{prefix}[{index}]', None, value


def _walk(node: Any, prefix: str) -> Iterator[Tuple[str, Any, Any]]:
    """Every (path, key, value) below ``node``, depth first."""
    for path, key, value in _children(node, prefix):
        yield path, key, value
        if isinstance(value, (dict, list, tuple)):
            yield from _walk(value, path)


def _path_of(root: Any, prefix: str, target: dict) -> Optional[str]:
    """The path of ``target`` inside ``root``: by identity, else by equality, else the dict of
    ``root`` that ``target`` extends (builders add keys, e.g. a detector gives its head the
    train_cfg, and Runner.from_cfg builds from a deep copy)."""
    nodes = [(prefix, root)] + [(p, v) for p, _, v in _walk(root, prefix)]
    for same in (lambda v: v is target, lambda v: isinstance(v, dict) and v == target,
                 lambda v: isinstance(v, dict) and 'type' in v and all(
                     k in target and target[k] == x for k, x in v.items())):
        for path, value in nodes:
            if same(value):
                return path
    return None


def _built_configs(error: BaseException) -> List[dict]:
    """The cfg dicts of the ``build_from_cfg`` frames in the tracebacks of ``error`` and the
    errors it was raised from, innermost first."""
    configs, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            cfg = tb.tb_frame.f_locals.get('cfg')
            if tb.tb_frame.f_code.co_name == 'build_from_cfg' and isinstance(cfg, dict):
                configs.append(cfg)
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    return configs[::-1]


def _mentions(message: str, key: Any, value: Any) -> bool:
    """Whether the message names ``key`` as a word and shows ``value`` (as repr or str)."""
    if not isinstance(key, str) or not re.search(rf'\b{re.escape(key)}\b', message):
        return False
    if isinstance(value, (dict, list, tuple)) and not value:
        return False
    shown = {repr(value), str(value)}
    return any(re.search(rf'(?<![\w.]){re.escape(s)}(?![\w])', message) for s in shown if s)


def locate_config_key(cfg: Any, error: BaseException, root: str = '') -> Optional[Tuple[str, Any]]:
    """The (dotted key, value) in ``cfg`` that ``error`` complains about, or None."""
    message = str(error)
    cfg = getattr(cfg, '_cfg_dict', cfg)  # mmengine's Config wraps its ConfigDict
    scopes = []
    for built in _built_configs(error):
        path = _path_of(cfg, root, built)
        if path is not None:
            scopes.append((path, built))
    scopes.append((root, cfg))  # the whole config last
    for prefix, node in scopes:
        matches = [(p, v) for p, k, v in _walk(node, prefix)
                   if not isinstance(v, dict) and _mentions(message, k, v)]
        if matches:
            return matches[0]
    return None


@contextmanager
def explain_config_errors(cfg: Any, root: str = ''):
    """Re-raise a ValueError from building ``cfg`` as :class:`ConfigValueError` with the key.

    ``cfg`` is the (whole) config the objects are built from, e.g. mmengine's Config; ``root``
    prefixes the keys when ``cfg`` is a part of it (``root='model'`` for ``cfg.model``).
    """
    try:
        yield
    except ConfigValueError:
        raise
    except ValueError as err:
        located = locate_config_key(cfg, err, root)
        if located is None:
            raise
        key, value = located
        raise ConfigValueError(key, value, str(err)) from err

