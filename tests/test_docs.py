"""The docs stay true: every config field, mode, flag and config file README.md and docs/*.md name still exists, and
the API page lists every public module. Fast: nothing trains, nothing is built.

What is read from the markdown:
- config fields: every `--config.a.b=` override and `--where a.b=` (gandl.sweep) anywhere, every dotted name in
  backticks (prose) or in double quotes (python blocks, e.g. a sweep's axes) whose first part is a top-level key of
  `gandl.defaults.base_config()`. It must be a field or section of the config, or a field `gandl.check.RULES`
  accepts; a name that is none is let through only when it names a module (`analysis.hits`: gandl/analysis/hits.py)
  or a file (`analysis.json`). Names with capitals (`--config.FIELD=VALUE`) are placeholders.
- modes: every `--mode X` in backticks or in a shell block is one of gandl.main's `--mode` values.
- flags: every `--name` of a `gandl ...` / `python -m gandl.main ...` command, in a shell block or in backticks, is a
  flag gandl.main (or absl, which parses them) defines; --config.* overrides aside.
- files: every `configs/....py` named, and every `--config X.py` / `--sweep X.py`, exists in the repository.
Each test lists every stale name with its file and line.
"""

from __future__ import annotations

import pathlib
import re
import sys
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "console", "sh", "shell", "shell-session"}
# A name ending in one of these is a file (`analysis.json`, `embeddings.npz`), not a config field.
FILE_SUFFIXES = {"json", "csv", "md", "py", "npz", "npy", "parquet", "h5ad", "png", "html", "txt", "zarr", "tfrecord",
                 "yaml", "toml", "pt", "log", "svg", "pdf", "tsv", "ipynb", "sh"}
# absl's own flags, which every absl program accepts (defined by app.run, not at import).
ABSL_BUILTIN = {"help", "helpfull", "helpshort", "helpxml", "flagfile", "undefok", "only_check_args"}

_NAME = r"[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+"


class Line:
    """One line of a page: where it is, and the fenced block it is in (None: prose)."""

    def __init__(self, page: pathlib.Path, number: int, text: str, block: str | None):
        self.page, self.number, self.text, self.block = page, number, text, block

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.number}"


def _lines() -> Iterator[Line]:
    for page in PAGES:
        block, fence = None, None
        for number, text in enumerate(page.read_text().splitlines(), 1):
            opened = re.match(r"^\s*(`{3,}|~{3,})\s*(\S*)", text)
            if fence is None and opened:
                fence, block = opened.group(1), opened.group(2).lower() or "text"
                continue
            if fence is not None and text.strip() == fence:  # the block's closing fence
                fence, block = None, None
                continue
            yield Line(page, number, text, block)


def _backticked(text: str) -> list[str]:
    """The inline code spans of a markdown line (`x` or ``x``)."""
    return [m.group(2) for m in re.finditer(r"(`+)(.+?)\1", text)]


def _shell_commands(lines: list[Line]) -> Iterator[tuple[Line, str]]:
    """Every command of the shell blocks (a `\\`-continued line joined, comments dropped, split at ; && || |), and
    every command in backticks in prose, with the line it starts on."""
    held: tuple[Line, str] | None = None
    for line in lines:
        if line.block is None:
            for span in _backticked(line.text):
                yield line, span
            continue
        if line.block not in SHELL:
            continue
        text = re.sub(r"(^|\s)#.*$", "", line.text)
        start, joined = held if held else (line, "")
        joined += " " + text.rstrip().removesuffix("\\")
        if text.rstrip().endswith("\\"):
            held = (start, joined)
            continue
        held = None
        for command in re.split(r";|&&|\|\||\||&(?=\s|$)", joined):
            yield start, command


def _invokes_gandl(command: str) -> bool:
    """Whether a command runs GAN-DL's entry point: `gandl ...` or `python -m gandl.main ...`."""
    words = command.split()
    while words and (words[0] in {"do", "then", "time", "!"} or re.match(r"^[A-Z_]+=", words[0])):
        words = words[1:]  # `for ...; do gandl ...`, `JAX_PROCESS_ID=$i python -m gandl.main ...`
    if words[:1] == ["gandl"]:
        return True
    return len(words) >= 3 and re.fullmatch(r"python3?", words[0]) is not None and words[1:3] == ["-m", "gandl.main"]


@pytest.fixture(scope="module")
def lines() -> list[Line]:
    return list(_lines())


@pytest.fixture(scope="module")
def config_names() -> tuple[set[str], set[str]]:
    """(every field and section of base_config(), dotted, with the fields check.RULES accepts; the top-level keys)."""
    from gandl import check, defaults

    config = defaults.base_config()
    names = set()

    def walk(section, prefix: str) -> None:
        for key, value in section.items():
            names.add(prefix + key)
            if hasattr(value, "items"):
                walk(value, f"{prefix}{key}.")

    walk(config, "")
    for field in check.RULES:  # fields without a default (the synthetic writers' arguments), and their sections
        parts = field.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names, set(config.keys())


def _is_module_or_file(name: str) -> bool:
    """`analysis.hits` (gandl/analysis/hits.py), `analysis.io.load_embeddings`, `data.images.read_site_images`,
    `analysis.json`: code or a file, not a config field."""
    parts = name.split(".")
    if parts[-1] in FILE_SUFFIXES:
        return True
    for i in range(2, len(parts) + 1):
        path = ROOT / "gandl" / pathlib.Path(*parts[:i])
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return True
    return False


def _config_mentions(lines: list[Line]) -> Iterator[tuple[Line, str]]:
    """Every dotted name a line may mean as a config field, with its line."""
    for line in lines:
        for m in re.finditer(r"--config\.([\w.]+)=", line.text):
            yield line, m.group(1)
        for m in re.finditer(r"--where[= ]+([\w.]+)=", line.text):
            yield line, m.group(1)
        if line.block is None:
            for span in _backticked(line.text):
                # a name standing alone or as `name=value` (several: comma-separated), not a call or its argument
                for m in re.finditer(rf"(?:^|(?<=[\s,]))({_NAME})(?=$|[\s,=:])", span):
                    yield line, m.group(1)
        elif line.block == "python":
            for m in re.finditer(rf"\"({_NAME})\"", line.text):
                yield line, m.group(1)


def _stale_field(line: Line, name: str, names: set[str], sections: set[str]) -> bool:
    """Whether `name` on `line` is a config field the config lacks. A name whose first part is no config section
    (`gandl.main`, `pd.read_csv`), or that is a module or file, is no field, unless an explicit --config. override
    names it; capitals are a placeholder (--config.FIELD=VALUE)."""
    if name in names or any(c.isupper() for c in name):
        return False
    if f"--config.{name}=" in line.text:
        return True
    return name.split(".")[0] in sections and not _is_module_or_file(name)


def test_config_fields_named_in_the_docs_exist(lines, config_names):
    names, sections = config_names
    stale = [f"{line.where()}: {name}" for line, name in _config_mentions(lines)
             if _stale_field(line, name, names, sections)]
    assert not stale, "config fields named in the docs that gandl.defaults.base_config() lacks:\n" + "\n".join(stale)


def test_modes_named_in_the_docs_exist(lines):
    from absl import flags

    import gandl.main  # noqa: F401  (defines --mode)

    modes = set(flags.FLAGS["mode"].parser.enum_values)
    stale = []
    for line in lines:
        if line.block is None:
            texts = _backticked(line.text)
        elif line.block in SHELL:
            texts = [re.sub(r"(^|\s)#.*$", "", line.text)]
        else:
            continue
        for text in texts:
            for m in re.finditer(r"--mode[= ]+([^\s\]`'\"]+)", text):
                mode = m.group(1)
                if mode.startswith("$") or any(c.isupper() for c in mode) or mode in modes:
                    continue
                stale.append(f"{line.where()}: --mode {mode}")
    assert not stale, f"modes named in the docs that gandl.main lacks ({sorted(modes)}):\n" + "\n".join(stale)


def test_flags_of_gandl_commands_in_the_docs_exist(lines):
    from absl import flags

    import gandl.main  # noqa: F401  (defines its flags)

    by_module = flags.FLAGS.flags_by_module_dict()
    known = set(ABSL_BUILTIN)
    for module in ("gandl.main", "absl.app", "absl.logging"):
        known.update(f.name for f in by_module.get(module, ()))
    assert {"config", "workdir", "mode"} <= known
    stale, commands = [], 0
    for line, command in _shell_commands(lines):
        if not _invokes_gandl(command):
            continue
        commands += 1
        for m in re.finditer(r"(?:^|\s)--([A-Za-z][\w-]*)", command):
            name = m.group(1)
            if name in known or (name.startswith("no") and name[2:] in known):  # --nologtostderr: a boolean's no
                continue
            stale.append(f"{line.where()}: --{name}")
    assert commands > 5, "found too few gandl commands in the docs: is the parser broken?"
    assert not stale, "flags of gandl commands in the docs that gandl.main lacks:\n" + "\n".join(stale)


def test_config_files_named_in_the_docs_exist(lines):
    stale, named = [], 0
    for line in lines:
        paths = re.findall(r"(?<![\w./-])(configs/[\w./-]+\.py)\b", line.text)
        paths += re.findall(r"--(?:config|sweep)[= ]+([\w./-]+\.py)\b", line.text)
        for path in dict.fromkeys(paths):
            named += 1
            if not (ROOT / path).is_file() and not any(c.isupper() for c in path):  # configs/X.py: a placeholder
                stale.append(f"{line.where()}: {path}")
    assert named > 5
    assert not stale, "config files named in the docs that the repository lacks:\n" + "\n".join(stale)


def test_the_parsers_find_what_the_docs_hold():
    """The scanners themselves, on a made-up page: a stale name of each kind is found, a module path is not."""
    page = ROOT / "docs" / "x.md"
    text = ("Set `analysis.fdr` and `train.nope=3`, not `gandl.analysis.hits`, `analysis.hits` or `analysis.json`.\n"
            "```bash\n"
            "gandl --config configs/demo.py --workdir /tmp/x --mode trian \\\n"
            "    --bogus=1 --config.train.steps=5\n"
            "launch/tpu.sh --name gandl-v3 --spot\n"
            "```\n")
    lines, block = [], None
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("```"):
            block = None if block else (raw[3:] or "text")
            continue
        lines.append(Line(page, number, raw, block))
    names, sections = {"analysis", "analysis.fdr", "train", "train.steps"}, {"analysis", "train"}
    stale = [n for line, n in _config_mentions(lines) if _stale_field(line, n, names, sections)]
    assert stale == ["train.nope"]  # not gandl.analysis.hits (a module), analysis.hits (one too), analysis.json
    assert _is_module_or_file("analysis.hits") and _is_module_or_file("analysis.json")
    assert not _is_module_or_file("analysis.fdr")
    commands = [c for _, c in _shell_commands(lines) if _invokes_gandl(c)]
    assert len(commands) == 1 and "--bogus=1" in commands[0] and "--config.train.steps=5" in commands[0]


def test_the_api_page_lists_every_public_module():
    """docs/api.md includes the generated module list, and it names every module under gandl/ (found from the files,
    not by the generator's own walk) whose dotted name has no part with a leading underscore."""
    sys.path.insert(0, str(ROOT / "docs"))
    import api_modules

    assert "_generated/api_modules.md" in (ROOT / "docs" / "api.md").read_text()
    listed = set(re.findall(r"^\.\. automodule:: (\S+)$", api_modules.text(), re.M))
    expected = set()
    for path in (ROOT / "gandl").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts):
            expected.add(".".join(parts))
    assert "gandl.analysis.hits" in expected and "gandl.data.synthetic" in expected
    assert not expected - listed, f"public modules missing from docs/api.md: {sorted(expected - listed)}"


@pytest.mark.slow
def test_the_readme_and_tutorial_commands_run_in_check_mode(lines, tmp_path):
    """The GAN-DL commands of the README and the tutorial (docs/your_screen.md), as written, in a fresh folder: the
    example screen is written, and every `gandl ...` command passes `--mode check` (what each mode runs first)
    with its own config and overrides."""
    import shlex
    import subprocess

    readme = [line for line in lines if line.page.name in ("README.md", "your_screen.md")]
    commands = [command.strip() for line, command in _shell_commands(readme) if line.block in SHELL]
    runs = [c for c in commands if _invokes_gandl(c) or c.startswith("python -m gandl.data.synthetic")]
    assert any(c.startswith("python -m gandl.data.synthetic") for c in runs) and any("--mode" in c for c in runs)
    checked = set()
    for command in runs:
        words = [re.sub(r"^/tmp/", f"{tmp_path}/", w) for w in shlex.split(command)]
        words = [w for w in words if w not in {"do", "done"}]
        words = ["check" if prev == "--mode" else w for prev, w in zip(["", *words], words)]
        if words[0] == "gandl":
            words = ["-m", "gandl.main", *words[1:]]
            if (key := tuple(words)) in checked:
                continue
            checked.add(key)
            if "configs/my_screen.py" in words:  # its data.root names the example screen's /tmp folder
                words.append(f"--config.data.root={tmp_path}/my_screen/metadata.csv")
        else:
            words = words[1:]
        done = subprocess.run([sys.executable, *words], cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    assert len(checked) == 2  # the demo and the example screen
