"""``biofx.bio_module``, the reference's module path that the migration guide imports: it is
:mod:`biofx.compat.bio_module` itself (the same module object, under both names)."""

import sys

from .compat import bio_module

sys.modules[__name__] = bio_module
