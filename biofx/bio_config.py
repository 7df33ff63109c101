"""``biofx.bio_config``, the reference's module path that the migration guide imports: it is
:mod:`biofx.compat.bio_config` itself (the same module object, under both names)."""

import sys

from .compat import bio_config

sys.modules[__name__] = bio_config
