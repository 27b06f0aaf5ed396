"""The package's shape: no module imports upward, and a new feature extractor is one module plus one entry."""

import ast
import importlib
import pathlib
import re

import numpy as np

import gandl
from gandl.features import registry

# Pipeline order; a module may import its own layer and the ones before it, never a later one.
LAYERS = ["_tf", "errors", "console", "fileio", "workdir", "defaults", "sharding", "data", "models", "train",
          "features", "profiles", "embed", "cost", "check", "analysis", "probe", "inspection", "sweep", "main"]
PACKAGE = pathlib.Path(gandl.__file__).parent


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else -1  # bare `gandl` (its version) comes first


def _imports(path: pathlib.Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gandl"):
            out |= {f"{node.module}.{a.name}" if node.module == "gandl" else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("gandl")}
    return out


def test_no_module_imports_upward():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "gandl." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module.endswith(".__init__") or module == "gandl.__main__":
            continue
        for imported in _imports(path):
            if _layer(imported) > _layer(module):
                upward.append(f"{module} imports {imported}")
    assert not upward, upward


def test_a_new_extractor_is_one_module_and_one_registry_entry(monkeypatch, tmp_path):
    """Register an extractor living in its own module and build it by name, as the embed stage does."""
    module = PACKAGE / "features" / "_test_mean_intensity.py"
    module.write_text("import numpy as np\n\n\ndef extractor(context):\n"
                      "    return lambda images: images.mean(axis=(1, 2))\n")
    try:
        monkeypatch.setitem(registry.EXTRACTORS, "mean", registry.Extractor("mean intensity",
                                                                           "_test_mean_intensity:extractor"))
        fn = registry.build("mean", context=None)
        images = np.random.default_rng(0).uniform(-1, 1, (3, 4, 4, 2)).astype(np.float32)
        np.testing.assert_allclose(fn(images), images.mean(axis=(1, 2)))
        assert registry.get("mean").label == "mean intensity"
    finally:
        module.unlink()


# Where a registry name may appear as a string outside the registry: the config's defaults list feature sets by
# name (as configs/*.py do), and "gandl" is also the package's own name.
_NAMED_ELSEWHERE = {("defaults.py", name) for name in registry.EXTRACTORS} | {
    ("cost.py", "gandl"),  # the report cache's folder, ~/.cache/gandl
    ("check.py", "gandl"),  # the example value the config check shows for embed.feature_sets
}


def _spelled_names(path: pathlib.Path) -> set[str]:
    """The registry names `path` spells: a string that is one, or one's file or folder (`imagenet.npz`,
    `imagenet_folds`)."""
    names = "|".join(sorted(map(re.escape, registry.EXTRACTORS), key=len, reverse=True))
    spelled = re.compile(rf"({names})(\.(npz|parquet|h5ad)|_folds)?")
    return {m[1] for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (m := spelled.fullmatch(node.value))}


def test_no_module_but_the_registry_spells_an_extractor_name():
    """What an extractor is (its label, whether it is fitted per fold) is a registry entry's; a module spelling a
    name would have to change with every new extractor."""
    spelled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative == pathlib.Path("features", "registry.py"):
            continue
        spelled += [f"{relative}: {name!r}" for name in sorted(_spelled_names(path))
                    if (relative.as_posix(), name) not in _NAMED_ELSEWHERE]
    assert not spelled, spelled


def test_main_stays_a_page_of_flags_modes_and_hand_over():
    """Each stage's runner lives in its stage (`main.runner` returns it, plain code); main.py fits on one screen."""
    from gandl import main

    lines = [line for line in (PACKAGE / "main.py").read_text().splitlines() if line.strip()]
    assert len(lines) < 150, f"gandl/main.py has {len(lines)} non-blank lines"
    for mode in main.flags.FLAGS["mode"].parser.enum_values:
        if mode == "check":
            continue
        run = main.runner(mode)
        # main's own runners (train with its probe, all) are composed of the stages'
        assert run.__module__.endswith(".stage") or run in (main.run_train, main.run_all), (mode, run)


def test_every_error_said_in_one_line_is_a_user_error():
    """The entry point says a fault in one line exactly when its class derives from `errors.UserError` (or it is
    a fault outside GAN-DL, an OSError): no table of names to keep in step with the classes."""
    import inspect

    from gandl import errors

    for path in sorted(PACKAGE.rglob("*.py")):
        module = "gandl." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module.endswith((".__init__", ".__main__")) or module == "gandl.main":
            continue
        loaded = importlib.import_module(module)
        for name, cls in inspect.getmembers(loaded, inspect.isclass):
            if cls.__module__ != module or not issubclass(cls, Exception):
                continue
            internal = name in ("CVError", "JoinError", "TrainingDiverged")  # caught within the analysis / a bug
            assert internal or issubclass(cls, errors.UserError), f"{module}.{name} is said in one line by no rule"


def test_an_unknown_feature_set_is_named():
    import pytest

    with pytest.raises(ValueError, match="unknown feature set 'gan_dl'.*'gandl'"):
        registry.get("gan_dl")


def _loaded_by(modules: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of `candidates` a fresh interpreter holds after importing `modules` (comma-separated)."""
    import subprocess
    import sys

    code = f"import sys; import {modules}; print([m for m in {candidates!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    return ast.literal_eval(out)


def test_the_screen_schema_and_vocabulary_load_without_tensorflow():
    """The analysis and the config check read the schema and control roles; they must not pull TensorFlow in."""
    assert _loaded_by("gandl.data.screen, gandl.data.vocabulary", ("tensorflow", "jax", "zarr")) == []


def test_the_synthetic_truth_loads_without_the_drawing_code():
    """The analysis scores a synthetic screen against its hidden truth; that needs neither the painting code nor
    TensorFlow."""
    assert _loaded_by("gandl.data.synthetic.truth",
                      ("gandl.data.synthetic.cells", "scipy", "PIL", "tensorflow", "jax")) == []


def test_the_import_graph_has_no_cycle():
    """No two modules import each other, directly or round a loop, not even inside a function (packages'
    `__init__` re-exports aside)."""
    modules = {"gandl." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py"}
    def imported(path: pathlib.Path) -> set[str]:  # `from gandl.data import rxrx` imports gandl.data.rxrx
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gandl"):
                out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                        for a in node.names}
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
        return out

    graph = {m: {i for i in imported(p) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for nxt in sorted(graph[module]):
            if state.get(nxt) == 1:
                return path + [module, nxt]
            if nxt not in state and (loop := visit(nxt, path + [module])):
                return loop
        state[module] = 2
        return None

    loops = [loop for m in sorted(graph) if m not in state and (loop := visit(m, []))]
    assert not loops, loops


def test_settings_dataclasses_take_their_defaults_from_base_config():
    """One source of each default: a dataclass built from a config block defaults to that block's values."""
    import dataclasses

    from gandl.analysis.tasks import AnalysisConfig
    from gandl.defaults import base_config
    from gandl.features.imagenet import FineTuneConfig
    from gandl.models.config import ModelConfig

    config = base_config()
    model = dict(config.model.to_dict(), resolution=config.data.image_size)  # the records' side unless set
    for name, made, block in (("ModelConfig", ModelConfig.of_run(config), model),
                              ("FineTuneConfig", FineTuneConfig(), config.embed.imagenet.to_dict()),
                              ("AnalysisConfig", AnalysisConfig(), config.analysis.to_dict())):
        defaults = dataclasses.asdict(made)
        differing = {k: (defaults.get(k), v) for k, v in block.items() if defaults.get(k) != v}
        assert not differing, (name, differing)


def _attribute_reads(path: pathlib.Path, name: str) -> list[int]:
    """Lines of `path` reading an attribute `name` (`config.analysis`, `run.analysis`, ...)."""
    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr == name]


def test_no_stage_below_the_analysis_reads_its_section_but_the_embed_stage_once():
    """Settings do not cross stages: the data, model, training and feature code never read `.analysis`; the embed
    stage takes the analysis' fold settings once (`gandl.data.folds.FoldSettings`) for the per-fold fits."""
    below = [p for layer in ("data", "models", "train", "features", "embed") for p in (PACKAGE / layer).rglob("*.py")]
    reads = {str(p.relative_to(PACKAGE)): lines for p in below if (lines := _attribute_reads(p, "analysis"))}
    assert list(reads) == ["embed/stage.py"] and len(reads["embed/stage.py"]) == 1, reads
