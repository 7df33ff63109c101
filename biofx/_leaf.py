"""``graph_leaf``: keep a function one node when code that calls it is traced again."""

from __future__ import annotations

import functools
from typing import Callable

import torch.fx as fx


def graph_leaf(fn: Callable) -> Callable:
    """Record ``fn`` as one ``call_function`` node whenever it is called on fx Proxies.

    Unlike ``torch.fx.wrap`` (which patches the defining module's globals only), this also
    holds for a GraphModule's generated code, e.g. when a pickled bio model is re-traced.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        proxy = next((a for a in (*args, *kwargs.values()) if isinstance(a, fx.Proxy)), None)
        if proxy is not None:
            return proxy.tracer.create_proxy("call_function", wrapper, args, kwargs)
        return fn(*args, **kwargs)

    return wrapper
