"""The reference's ``bio_transformations.bio_module`` module path (also ``biofx.bio_module``)."""

from . import BioModule

__all__ = ["BioModule"]
