"""The reference's ``bio_transformations.bio_module`` module path."""

from .compat import BioModule

__all__ = ["BioModule"]
