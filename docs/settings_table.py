"""Write the settings table (docs/_generated/settings_table.md) from the code, so that it cannot drift.

Every field of `gandl.defaults.base_config()` with its default, the rule `gandl.check.RULES` holds it to and the
comment beside it in gandl/defaults.py; then the fields a config may add that the defaults leave out (they have
a rule, not a default). docs/conf.py runs it at every build; `python docs/settings_table.py` writes it by hand.
"""

from __future__ import annotations

import ast
import io
import pathlib
import sys
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = pathlib.Path(__file__).resolve().parent / "_generated" / "settings_table.md"


def _comments(source: str) -> dict[int, str]:
    """{line: comment text} for every comment in `source`."""
    return {tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}


def _block_above(line: int, comments: dict[int, str], lines: list[str]) -> str:
    """The whole-line comments directly above `line`, joined."""
    block = []
    while line - 1 in comments and lines[line - 2].strip().startswith("#"):
        line -= 1
        block.insert(0, comments[line])
    return " ".join(block)


def _section_call(node: ast.AST) -> ast.Call | None:
    """The `dict(...)` inside `ml_collections.ConfigDict(dict(...))`, or None."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Call):
        inner = node.args[0]
        if isinstance(inner.func, ast.Name) and inner.func.id == "dict":
            return inner
    return None


def field_notes(source: str) -> tuple[dict[str, str], dict[str, str]]:
    """({field: its comment}, {section: the comment above it}) from defaults.py's source."""
    comments, lines = _comments(source), source.splitlines()
    notes, sections = {}, {}

    def walk(call: ast.Call, prefix: str) -> None:
        starts = [kw.value.lineno for kw in call.keywords]
        for kw in call.keywords:
            name, line = prefix + kw.arg, kw.value.lineno
            text = []
            if kw is next(k for k in call.keywords if k.value.lineno == line):
                text.append(_block_above(line, comments, lines))  # a block comment: the line's first field
            if starts.count(line) == 1 and line in comments and not lines[line - 1].strip().startswith("#"):
                text.append(comments[line])  # a trailing comment: the line's only field
            notes[name] = " ".join(t for t in text if t)
            if (inner := _section_call(kw.value)) is not None:
                walk(inner, name + ".")

    function = next(n for n in ast.walk(ast.parse(source))
                    if isinstance(n, ast.FunctionDef) and n.name == "base_config")
    for statement in function.body:
        if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Attribute):
            section = statement.targets[0].attr
            if (call := _section_call(statement.value)) is not None:
                sections[section] = _block_above(statement.lineno, comments, lines)
                walk(call, section + ".")
    return notes, sections


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table() -> str:
    sys.path.insert(0, str(ROOT))
    from gandl import check, defaults

    notes, sections = field_notes((ROOT / "gandl" / "defaults.py").read_text())
    values = check.fields(defaults.base_config())
    out = ["<!-- Written by docs/settings_table.py from gandl.defaults and gandl.check.RULES: do not edit. -->", ""]
    current = None
    order = [f for f in values if "." not in f] + [f for f in notes if f in values]  # top level, then source order
    order += [f for f in values if f not in order]
    for field in order:
        value = values[field]
        section = field.split(".")[0] if "." in field else ""
        if section != current:
            current = section
            out += ["", f"### `{section}`" if section else "### top level", ""]
            if sections.get(section):
                out += [_cell(sections[section]), ""]
            out += ["| field | default | must be | what it is |", "|---|---|---|---|"]
        rule = check.RULES.get(field)
        out.append(f"| `{field}` | `{_cell(repr(value))}` | {_cell(rule.wanted) if rule else ''} "
                   f"| {_cell(notes.get(field, ''))} |")
    extra = [f for f in check.RULES if f not in values]
    if extra:
        out += ["", "### Fields without a default", "",
                "A config may set these (the synthetic writers' arguments); left out, the writer's own default holds.",
                "", "| field | must be |", "|---|---|"]
        out += [f"| `{f}` | {_cell(check.RULES[f].wanted)} |" for f in extra]
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
