"""The reference's ``bio_transformations.bio_converter`` module path."""

from .compat import BioConverter

__all__ = ["BioConverter"]
