"""Write the API reference's module list (docs/_generated/api_modules.md) from the package, so that none is left out.

Every module of `gandl` whose dotted name has no part with a leading underscore (packages and their modules, as
`pkgutil.walk_packages` finds them), one `automodule` each, grouped under its top-level package. docs/conf.py runs
it at every build; `python docs/api_modules.py` writes it by hand.
"""

from __future__ import annotations

import pathlib
import pkgutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = pathlib.Path(__file__).resolve().parent / "_generated" / "api_modules.md"


def public_modules() -> dict[str, bool]:
    """{name: is a package} for every public module of `gandl`, sorted (walking imports the packages, as autodoc
    will)."""
    sys.path.insert(0, str(ROOT))
    import gandl

    found = {"gandl": True, **{m.name: m.ispkg for m in pkgutil.walk_packages(gandl.__path__, "gandl.")}}
    return {n: found[n] for n in sorted(found) if not any(part.startswith("_") for part in n.split("."))}


def _group(name: str, modules: dict[str, bool]) -> str:
    """The section a module is listed under: its top-level subpackage (gandl.analysis), else the package."""
    top = ".".join(name.split(".")[:2])
    return top if modules.get(top) else "gandl"


def text() -> str:
    out = ["<!-- Written by docs/api_modules.py from the gandl package: do not edit. -->"]
    modules = public_modules()
    current = None
    for name in sorted(modules, key=lambda n: (_group(n, modules) != "gandl", _group(n, modules), n)):
        group = _group(name, modules)
        if group != current:
            current = group
            out += ["", f"## {group}"]
        out += ["", f"### {name}", "", "```{eval-rst}", f".. automodule:: {name}", "   :members:", "```"]
    return "\n".join(out) + "\n"


def write(path: pathlib.Path = OUT) -> pathlib.Path:
    from settings_table import write_generated  # docs/ is on sys.path: conf.py's, or this script's folder

    return write_generated(path, text())


if __name__ == "__main__":
    print(write())
