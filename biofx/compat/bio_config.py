"""The reference's ``bio_transformations.bio_config`` module path (also ``biofx.bio_config``)."""

from ..config import DEFAULT_BIO_CONFIG, BioConfig, Distribution

__all__ = ["BioConfig", "Distribution", "DEFAULT_BIO_CONFIG"]
