"""The reference's ``bio_transformations.bio_converter`` module path (also ``biofx.bio_converter``)."""

from . import BioConverter

__all__ = ["BioConverter"]
