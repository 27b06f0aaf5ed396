"""Write the settings table (docs/_generated/settings_table.md) from the code, so that it cannot drift.

Every setting of the schema in gandl/defaults.py (`gandl.defaults.settings()`): its default, the rule it is held to
(`gandl.check.RULES`, where the registry-backed rules are bound) and its help text, one table per section under the
section's description; then the settings a config may add that the defaults leave out (they have a rule, not a
default). docs/conf.py runs it at every build; `python docs/settings_table.py` writes it by hand.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = pathlib.Path(__file__).resolve().parent / "_generated" / "settings_table.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table() -> str:
    sys.path.insert(0, str(ROOT))
    from gandl import check, defaults

    descriptions = {path: " ".join(cls.__doc__.split()) for path, cls in defaults.sections()}
    out = ["<!-- Written by docs/settings_table.py from the schema in gandl.defaults: do not edit. -->", ""]
    current, omitted = None, []
    for field, setting in defaults.settings():
        if setting.default is defaults.OMITTED:
            omitted.append((field, setting))
            continue
        section = field.split(".")[0] if "." in field else ""
        if section != current:
            current = section
            out += ["", f"### `{section}`" if section else "### top level", ""]
            if descriptions.get(section):
                out += [_cell(descriptions[section]), ""]
            out += ["| field | default | must be | what it is |", "|---|---|---|---|"]
        out.append(f"| `{field}` | `{_cell(repr(setting.default))}` | {_cell(check.RULES[field].wanted)} "
                   f"| {_cell(setting.metadata['help'])} |")
    if omitted:
        out += ["", "### Fields without a default", "",
                "A config may set these (the synthetic writers' arguments); left out, the writer's own default holds.",
                "", "| field | must be | what it is |", "|---|---|---|"]
        out += [f"| `{f}` | {_cell(check.RULES[f].wanted)} | {_cell(s.metadata['help'])} |" for f, s in omitted]
    return "\n".join(out).strip() + "\n"


def write_generated(path: pathlib.Path, text: str) -> pathlib.Path:
    """Write a generated include file, only when its text changed (unchanged: Sphinx keeps its cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def write(path: pathlib.Path = OUT) -> pathlib.Path:
    return write_generated(path, table())


if __name__ == "__main__":
    print(write())
