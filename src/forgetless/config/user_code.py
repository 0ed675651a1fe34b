"""User code a config names as 'package.module:function' (`eval.custom_metrics`, `grpo.rewards`),
imported when a run needs it, with one error line naming the config key when it cannot be."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from forgetless.errors import UserError


def load_callable(ref: str, key: str) -> Callable:
    """`package.module:function` -> the function; `key` (e.g. 'grpo.rewards') names the setting in errors."""
    module, sep, name = ref.partition(":")
    if not sep or not module or not name:
        raise UserError(f"{key}: '{ref}' is not 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"{key}: cannot load '{ref}' ({e})") from None
    if not callable(fn):
        raise UserError(f"{key}: '{ref}' is not callable")
    return fn
