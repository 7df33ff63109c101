"""``warn_user``: a warning that points at the user's line.

A fixed ``stacklevel`` breaks whenever a decorator (``torch.no_grad``) or a hook wrapper
(``optimizer.step``'s) adds a frame; the user's line is the first frame outside biofx and torch.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

_INSIDE = (os.path.dirname(__file__) + os.sep, os.path.dirname(torch.__file__) + os.sep)


def warn_user(message: str, category: type = UserWarning) -> None:
    """``warnings.warn`` attributed to the first calling frame outside biofx and torch."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: warn_user's caller's caller
    while frame is not None and frame.f_code.co_filename.startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
