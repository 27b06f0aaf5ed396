"""The settings schema (gandl.defaults): a setting declared once gives the default, the check's rule, the typed
settings' validation and the docs' table row."""

import dataclasses
import importlib.util
import pathlib
import subprocess
import sys

import pytest

import gandl
from gandl import check, defaults
from gandl.analysis.tasks import AnalysisConfig
from gandl.models.config import ModelConfig

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def _fresh_check():
    """gandl/check.py executed anew (its RULES built from the schema as it is now), leaving gandl.check alone."""
    spec = importlib.util.spec_from_file_location("_fresh_gandl_check", check.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_setting_line_gives_the_default_the_rule_and_the_docs_row(monkeypatch):
    dpi = defaults.setting(72, defaults.integer(1), "dots per inch of the preview grid")
    preview = dataclasses.make_dataclass("Preview", [("dpi", int, dpi)], bases=(defaults.Preview,), frozen=True,
                                         namespace={"__doc__": defaults.Preview.__doc__})
    config_cls = dataclasses.make_dataclass("Config", [("preview", preview, defaults.section(preview))],
                                            bases=(defaults.Config,), frozen=True)
    monkeypatch.setattr(defaults, "Config", config_cls)

    config = defaults.base_config()
    assert config.preview.to_dict() == {"num_images": 32, "cols": 8, "dpi": 72}

    fresh = _fresh_check()
    assert fresh.RULES["preview.dpi"].wanted == "an integer >= 1"
    assert fresh._field_failures(config) == {}
    config.preview.dpi = 0
    with pytest.raises(fresh.ConfigCheckError, match=r"preview\.dpi=0: must be an integer >= 1; use preview\.dpi=72"):
        fresh.check_fields(config)
    assert "preview.dpi" not in check.RULES  # the schema as shipped has no such setting

    monkeypatch.setattr(gandl, "check", fresh)
    monkeypatch.syspath_prepend(str(DOCS))
    import settings_table

    assert "| `preview.dpi` | `72` | an integer >= 1 | dots per inch of the preview grid |" in settings_table.table()


def test_the_rules_are_the_schemas():
    """Every setting has its rule in check.RULES, and nothing else does (OMITTED settings included)."""
    paths = [path for path, _ in defaults.settings()]
    assert list(check.RULES) == paths
    assert {path for path, field in defaults.settings() if field.default is not defaults.OMITTED} \
        == set(check.fields(defaults.base_config()))
    assert "screen.viability" in check.RULES and "viability" not in defaults.base_config().screen


def test_registered_rules_are_bound_to_the_registries():
    from gandl.data import screen
    from gandl.data.synthetic import layouts
    from gandl.features import registry

    assert {rule.registry for field in (f for _, f in defaults.settings())
            if isinstance(rule := field.metadata["rule"], defaults.Registered)} == set(check.REGISTRIES)
    for kind in screen.READERS:
        assert check.RULES["data.kind"].ok(kind)
    assert all(check.RULES["screen.preset"].ok(name) for name in ("", *screen.PRESETS))
    assert all(check.RULES["synthetic.control_layout"].ok(name) for name in layouts.CONTROL_LAYOUTS)
    assert check.RULES["embed.feature_sets"].ok(tuple(registry.EXTRACTORS))
    assert not check.RULES["train.probe_features"].ok(("gan_dl",)) and not check.RULES["data.kind"].ok("tiff")


def test_each_list_of_choices_has_one_home():
    """The owners of plain choice tuples use the schema's, the very objects."""
    from gandl import sharding
    from gandl.analysis import classify, hits, io
    from gandl.data import pipeline, screen
    from gandl.features import discriminator
    from gandl.train import augment

    assert pipeline.INTENSITIES is defaults.INTENSITIES
    assert screen.WELL_AGGREGATES is io.WELL_AGGREGATES is defaults.WELL_AGGREGATES
    assert sharding.DISTRIBUTED_MODES is defaults.DISTRIBUTED_MODES
    assert augment.TRANSFORMS is defaults.AUGMENT_TRANSFORMS
    assert discriminator.MBSTD_MODES is defaults.MBSTD_MODES
    assert classify.NORMALIZATIONS is defaults.NORMALIZATIONS and hits.POSITIONS is defaults.POSITIONS


def test_the_screen_section_is_the_screen_schema_with_a_preset():
    from gandl.data.screen import ScreenSchema

    assert {f.name for f in dataclasses.fields(defaults.Screen)} \
        == {"preset"} | {f.name for f in dataclasses.fields(ScreenSchema)}


@pytest.mark.parametrize("cls, values, message", [
    (ModelConfig, dict(resolution=48), "resolution=48: must be None or a power of two >= 8"),
    (ModelConfig, dict(), "resolution=None: a model needs its side"),
    (ModelConfig, dict(z_dim=0), "z_dim=0: must be an integer >= 1"),
    (AnalysisConfig, dict(n_splits=1, c=0.0), "c=0.0: must be a number > 0; n_splits=1: must be an integer >= 2"),
    (AnalysisConfig, dict(well_aggregate="max"), "well_aggregate='max': must be one of ('median', 'mean')"),
])
def test_the_typed_settings_hold_their_fields_to_the_schemas_rules(cls, values, message):
    with pytest.raises(ValueError) as info:
        cls(**values)
    assert message in str(info.value)


def test_a_section_help_text_and_description_for_every_setting():
    assert [path for path, field in defaults.settings() if not field.metadata["help"]] == []
    assert [path for path, cls in defaults.sections() if not (cls.__doc__ or "").strip()] == []


def test_the_config_check_reads_and_validates_a_config_without_jax():
    """Issue #37: `check` needs no JAX (tracing and compiling stay in `cost`): importing it and holding a config to
    every field and device rule loads neither JAX nor TensorFlow."""
    script = ("import sys\nfrom gandl import check\nfrom gandl.defaults import base_config\n"
              "cfg = base_config()\nassert check.validate(cfg, 8) == [], check.validate(cfg, 8)\n"
              "cfg.model.mbstd_num_channels = 3\nassert any('mbstd' in f for f in check.validate(cfg, 8))\n"
              "print(sorted(m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_model_takes_the_training_records_side_unless_its_own_is_set():
    """One image-side setting per meaning: the demo states only data.image_size; the model, the input pipeline and the
    check read the same derived side, a crop is the records' side, and an explicit model.resolution still wins."""
    from gandl.data.pipeline import InputOptions

    config = defaults.call_in_file(str(DOCS.parent / "configs" / "demo.py"), "get_config")
    assert config.model.resolution is None and config.data.image_size == 32
    assert ModelConfig.of_run(config).resolution == InputOptions.from_config(config).resolution == 32
    config.data.crop_size = 16
    assert ModelConfig.of_run(config).resolution == InputOptions.from_config(config).resolution == 16
    config.data.crop_size, config.model.resolution = 0, 16  # below the records' side: a whole downscale factor
    assert ModelConfig.of_run(config).resolution == InputOptions.from_config(config).resolution == 16
    assert check.validate(config, 1) == []
    config.model.resolution, config.data.shards, config.data.image_size = None, "/elsewhere/shards", 0
    assert defaults.model_resolution(config) is None
    assert any(f.startswith("model.resolution=None: the config does not say") for f in check.validate(config, 1))


def _tuples(value):
    """A config's values with lists as tuples (ml_collections keeps what the file wrote; the sections hold tuples)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@pytest.mark.parametrize("path", sorted(str(p) for p in (DOCS.parent / "configs").glob("*.py")))
def test_every_config_file_is_a_typed_run_config_the_stages_receive(path):
    """The ConfigDict stops at the check: `check_fields` returns the typed `Config` (frozen sections, nested ones
    too), which says every value the file set, leaves the writer arguments a file did not set OMITTED (the writer's
    own default holds) and refuses a section rule the field rules cannot see."""
    config = defaults.call_in_file(path, "get_config")
    typed = check.check_fields(config)
    assert isinstance(typed, defaults.Config) and isinstance(typed.embed.imagenet, defaults.Imagenet)
    assert defaults.values(typed) == _tuples(config.to_dict())
    assert typed.synthetic.plates_per_experiment is defaults.OMITTED
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.train.steps = 1
    config.model.update(channel_base=64, channel_max=64, mbstd_num_channels=3)  # 16 channels at 4x4: 3 cannot divide
    with pytest.raises(check.ConfigCheckError, match="mbstd_num_channels must divide"):
        check.check_fields(config)
