"""Sphinx configuration for the biofx documentation.

Build (warnings are errors, as in CI)::

    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

import biofx

project = "biofx"
author = "biofx developers"
copyright = "2025, biofx developers"
version = biofx.__version__
release = biofx.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    # MathJax from the package, copied into _build/html/_static/mathjax: formulas render
    # offline (sphinx.ext.mathjax alone loads it from a CDN). Sets mathjax_path.
    "sphinx-mathjax-offline",
]

exclude_patterns = ["_build"]
templates_path = []

html_theme = "furo"
html_title = f"biofx {release}"
html_static_path = ["_static"]

# autodoc: type hints go into the parameter descriptions; members in source order.
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False
