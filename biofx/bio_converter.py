"""``biofx.bio_converter``, the reference's module path that the migration guide imports: it is
:mod:`biofx.compat.bio_converter` itself (the same module object, under both names)."""

import sys

from .compat import bio_converter

sys.modules[__name__] = bio_converter
