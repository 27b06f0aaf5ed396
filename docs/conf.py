"""Sphinx configuration of GAN-DL's documentation: MyST markdown pages, API pages from the docstrings.

Build (warnings are errors, so a broken reference fails):  sphinx-build -W --keep-going -b html docs docs/_build/html
"""

import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `import gandl` from this checkout (autodoc, the settings table)
sys.path.insert(0, str(HERE))
# autodoc imports gandl, which imports JAX and TensorFlow: on the CPU, without their start-up lines.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import api_modules  # noqa: E402
import settings_table  # noqa: E402

settings_table.write()  # docs/_generated/settings_table.md, from the schema in gandl.defaults
api_modules.write()  # docs/_generated/api_modules.md: an automodule for every public module of gandl

project = "GAN-DL"
author = "GAN-DL contributors"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
root_doc = "index"
# _generated/ and test_beds.md are included into settings.md, api.md and results.md, not pages of their own.
exclude_patterns = ["_build", "_generated", "test_beds.md", "settings_table.py", "api_modules.py", "conf.py"]

myst_heading_anchors = 4  # [text](page.md#a-heading) links, as on GitHub
myst_enable_extensions = ["colon_fence"]

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False

html_theme = "furo"
html_title = "GAN-DL"
html_static_path = []
napoleon_use_ivar = True  # a class's "Attributes:" as fields, not a second description of its dataclass fields


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Methods a class inherits from scikit-learn (set_fit_request, ...) are scikit-learn's to document."""
    if callable(obj) and getattr(obj, "__module__", "").startswith("sklearn"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)
