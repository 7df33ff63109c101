"""The reference library's API (``pytorch_bio_transformations``), on top of :func:`biofx.transform`.

Code written for the reference runs with only its import changed::

    from bio_transformations import BioConverter, BioConfig   # before
    from biofx import BioConverter, BioConfig                 # after

``BioConverter`` converts instances and classes (also as a class decorator) and exposes
the model-level methods. ``BioModule`` is the reference's per-layer module: a
:class:`~biofx.BioSynapses` whose methods have the model level's names. Where the
reference's code and documentation disagree, biofx follows the documentation (see the
migration page of the docs).

The reference's module paths are modules of this package (:mod:`biofx.compat.bio_config`,
:mod:`~biofx.compat.bio_converter`, :mod:`~biofx.compat.bio_module`); ``biofx`` also
registers them as ``biofx.bio_config``, ``biofx.bio_converter`` and ``biofx.bio_module``,
the paths the migration guide tells users to import.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Optional, Type, Union

import torch
import torch.nn as nn

from .. import registry
from ..config import DEFAULT_BIO_CONFIG, BioConfig
from ..layers import kind_of
from ..state import BioSynapses
from ..transform import transform

__all__ = ["BioConverter", "BioModule"]


class BioModule(BioSynapses):
    """The reference's per-layer module: bio state and methods of one layer.

    ``BioModule(lambda: layer, config)`` works standalone, as in the reference, and
    subclasses may add methods listed in ``exposed_functions``; a :class:`BioConverter`
    subclass that attaches them in ``_bio_modulize`` exposes them at model level.
    """

    managed = False  # standalone: not driven by the model-level methods or optimizer hooks

    #: the reference's list: every mechanism's method, and the ones without a mechanism entry
    exposed_functions = tuple(
        sorted(
            {m.method for m in registry.REGISTRY.values() if m.method}
            | {"update_fuzzy_learning_rates", "l1_reg", "dalian_network_initialization"}
        )
    )

    def __init__(self, parent: Callable[[], nn.Module], config: BioConfig = DEFAULT_BIO_CONFIG) -> None:
        if not callable(parent):
            raise TypeError("parent must be a Callable returning an nn.Module instance")
        layer = parent()
        kind = kind_of(layer)
        if kind is None:
            raise TypeError(f"BioModule supports Linear and Conv layers, got {type(layer).__name__}")
        seed = config.seed if config.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        super().__init__("", layer, kind, config, 0, 1, seed)
        self.get_parent = parent

    def update_fuzzy_learning_rates(self, x: Optional[torch.Tensor] = None) -> None:
        """One update of dynamic fuzzy rates (``x`` is accepted as in the reference, not needed)."""
        super().update_fuzzy_learning_rates()

    def dalian_network_initialization(self, module: Optional[nn.Module] = None) -> None:
        """Balanced Dale initialization (``module`` is accepted as in the reference, not needed)."""
        if not registry.DALE.is_on(self.config):
            raise AttributeError(f"Can not use dalians network initialization on {type(self)}")
        super().dalian_network_initialization()


class BioConverter:
    """Convert models to bio models (the reference's API).

    Args:
        config: a :class:`~biofx.BioConfig` (``None``: defaults).
        **kwargs: BioConfig fields overriding ``config``.
    """

    def __init__(self, config: Optional[BioConfig] = None, **kwargs: Any) -> None:
        config = DEFAULT_BIO_CONFIG if config is None else config
        if not isinstance(config, BioConfig):
            raise TypeError(f"config must be a BioConfig, got {type(config).__name__}")
        self.config = config.replace(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict) -> "BioConverter":
        """A converter from a dict of BioConfig fields."""
        return cls(BioConfig.from_dict(config_dict))

    def get_config(self) -> BioConfig:
        return self.config

    def update_config(self, **kwargs: Any) -> None:
        """Change config fields (validated)."""
        self.config = self.config.replace(**kwargs)

    @property
    def bio_module_params(self) -> dict:
        """Keyword arguments for a :class:`BioModule` built by a custom ``_bio_modulize``."""
        return {"config": self.config}

    def convert(self, module_class_or_instance: Union[Type[nn.Module], nn.Module]):
        """Convert an ``nn.Module`` instance (returns the bio model) or class (returns a class
        whose instances come out converted)."""
        if isinstance(module_class_or_instance, nn.Module):
            return self._convert_instance(module_class_or_instance)
        if isinstance(module_class_or_instance, type) and issubclass(module_class_or_instance, nn.Module):
            return self._convert_class(module_class_or_instance)
        raise TypeError(f"Unsupported type for module_class_or_instance: {type(module_class_or_instance)}")

    def __call__(self, module_class_or_instance: Union[Type[nn.Module], nn.Module]):
        return self.convert(module_class_or_instance)

    def _bio_modulize(self, module: nn.Module) -> None:
        """Hook for subclasses: attach a custom ``bio_mod`` (a :class:`BioModule`) to a layer."""

    def _convert_instance(self, module: nn.Module):
        module.apply(self._bio_modulize)
        bio = transform(module, self.config)
        _expose_custom_functions(bio)
        return bio

    def _convert_class(self, module_class: Type[nn.Module]) -> Type[nn.Module]:
        converter = self

        def __new__(cls, *args, **kwargs):
            return converter._convert_instance(module_class(*args, **kwargs))

        converted = type(module_class.__name__, (module_class,), {"__new__": __new__})
        converted.__qualname__ = module_class.__qualname__
        converted.__module__ = module_class.__module__
        converted.__doc__ = module_class.__doc__
        return converted

    @staticmethod
    def mark_skip_weight_splitting(module: nn.Module) -> nn.Module:
        """Keep ``module`` unsplit by weight splitting (returns it, for chaining)."""
        module._biofx_skip_split = True
        return module

    set_last_module_token_for_module = mark_skip_weight_splitting  # the reference's name


def _expose_custom_functions(bio: nn.Module) -> None:
    """Model-level methods for functions of custom ``bio_mod`` modules (the reference's recipe)."""
    custom = [m for m in bio.modules() if isinstance(getattr(m, "bio_mod", None), BioModule)]
    names = {name for m in custom for name in type(m.bio_mod).exposed_functions}
    for name in sorted(names):
        if hasattr(type(bio), name):
            continue

        def method(self, *args, _name=name, **kwargs):
            for layer in custom:
                if hasattr(layer.bio_mod, _name):
                    getattr(layer.bio_mod, _name)(*args, **kwargs)

        method.__name__ = name
        setattr(bio, name, types.MethodType(method, bio))
