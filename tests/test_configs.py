"""Configuration files and models: shipped YAML files validate, bad input is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from bench.config import BenchConfig, FrontierConfig
from n2n.demo import DemoConfig
from streamer.dashboard import DashConfig
from streamer.micromanager.config import MicroManagerConfig
from streamer.offline.config import DenoiseConfig
from streamer.server import ServeConfig
from streamer.sources import SimulatedCameraConfig
from trainer.config import (
    ConfigError,
    EvaluateConfig,
    ExportConfig,
    SimulateConfig,
    TrainConfig,
    load_config,
    save_config,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_FILES = sorted([*CONFIG_DIR.glob("*.yaml"), *CONFIG_DIR.glob("*.yml")])

# Filename prefix → the model that file configures. A new prefix must be added here.
PREFIXES: dict[str, type[BaseModel]] = {
    "train": TrainConfig,
    "quickstart": TrainConfig,
    "simulate": SimulateConfig,
    "export": ExportConfig,
    "evaluate": EvaluateConfig,
    "serve": ServeConfig,
    "micromanager": MicroManagerConfig,
    "demo": DemoConfig,
    "bench": BenchConfig,
    "dash": DashConfig,
    "frontier": FrontierConfig,
    "denoise": DenoiseConfig,
}


def _model_for(path: Path) -> type[BaseModel]:
    for prefix, cls in PREFIXES.items():
        if path.name.startswith(prefix):
            return cls
    pytest.fail(f"{path.name}: no config model mapped for this file name; add its prefix to PREFIXES")


def test_configs_folder_has_yaml_files() -> None:
    """configs/ ships at least one YAML file."""
    assert CONFIG_FILES, f"no *.yaml in {CONFIG_DIR}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path) -> None:
    """Each configs/*.yaml loads and validates with the model its name prefix selects."""
    cls = _model_for(path)

    cfg = load_config(cls, path)

    assert isinstance(cfg, cls)
    raw = yaml.safe_load(path.read_text())
    assert raw.get("version") == 1, "shipped configs should state their schema version"


def test_quickstart_values_are_read_from_file() -> None:
    """The quickstart config's values (not defaults) end up in the model."""
    cfg = load_config(TrainConfig, CONFIG_DIR / "quickstart.yaml")

    assert cfg.data.source == "simulated"
    assert cfg.data.camera.height == 256
    assert cfg.data.patch_size % 2**cfg.model.depth == 0


@pytest.mark.parametrize("cls", [TrainConfig, SimulateConfig, ExportConfig, EvaluateConfig])
def test_defaults_validate(cls: type[BaseModel]) -> None:
    """Every config model validates with no file (all defaults) and has version 1."""
    cfg = load_config(cls, None)

    assert cfg.version == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("cls", "data", "bad"),
    [
        (TrainConfig, {"epochs": 3}, "epochs"),
        (TrainConfig, {"optim": {"epochz": 3}}, "epochz"),
        (TrainConfig, {"data": {"camera": {"hieght": 64}}}, "hieght"),
        (ExportConfig, {"fromat": "onnx"}, "fromat"),
        (EvaluateConfig, {"gaussian_sigma": [1.0]}, "gaussian_sigma"),
        (SimulateConfig, {"camera": {"exposure": 5}}, "exposure"),
    ],
)
def test_extra_keys_rejected(tmp_path: Path, cls: type[BaseModel], data: dict, bad: str) -> None:
    """Unknown keys at any level raise ConfigError naming the file, the keys expected and the bad key."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))

    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: .*expected one of the keys .*, got '{bad}'"):
        load_config(cls, path)


@pytest.mark.parametrize("version", [0, 2, "1.0"])
def test_wrong_version_rejected(tmp_path: Path, version: object) -> None:
    """A config with a version other than 1 is refused."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"version": version}))

    with pytest.raises(ConfigError, match="version"):
        load_config(TrainConfig, path)


@pytest.mark.parametrize(("depth", "patch"), [(3, 20), (2, 18), (5, 48)])
def test_patch_size_must_fit_depth(depth: int, patch: int) -> None:
    """patch_size not a multiple of 2**depth is refused with both numbers in the message."""
    expected = rf"patch_size \({patch}\) must be a multiple of the model's size multiple {2**depth} \(2\*\*model.depth"
    with pytest.raises(ValidationError, match=expected):
        TrainConfig.model_validate({"model": {"depth": depth}, "data": {"patch_size": patch}})


def test_patch_size_multiple_accepted() -> None:
    """patch_size a multiple of 2**depth is accepted."""
    cfg = TrainConfig.model_validate({"model": {"depth": 3}, "data": {"patch_size": 24}})

    assert cfg.data.patch_size == 24


def test_min_learning_rate_above_learning_rate_rejected() -> None:
    """min_learning_rate larger than learning_rate is refused."""
    with pytest.raises(ValidationError, match="min_learning_rate"):
        TrainConfig.model_validate({"optim": {"learning_rate": 1e-4, "min_learning_rate": 1e-3}})


def test_save_load_round_trip(tmp_path: Path) -> None:
    """save_config then load_config gives back an equal config (non-default values included)."""
    cfg = TrainConfig.model_validate({
        "mode": "supervised",
        "model": {"depth": 3, "base_filters": 12, "residual": False},
        "data": {"source": "simulated", "patch_size": 48, "val_fraction": 0.2,
                 "camera": {"height": 96, "drift_px_per_frame": [0.25, -0.5], "bleach_half_life_s": 3.5}},
        "optim": {"learning_rate": 2.5e-4, "min_learning_rate": 1e-6, "max_minutes": 1.5, "seed": 7},
    })
    path = tmp_path / "saved.yaml"

    save_config(cfg, path)
    back = load_config(TrainConfig, path)

    assert back == cfg
    assert back.data.camera.drift_px_per_frame == (0.25, -0.5)


@pytest.mark.parametrize("cls", [SimulateConfig, ExportConfig, EvaluateConfig])
def test_save_load_round_trip_other_models(tmp_path: Path, cls: type[BaseModel]) -> None:
    """save_config/load_config round-trips the other config models too."""
    cfg = cls()
    path = tmp_path / "c.yaml"

    save_config(cfg, path)

    assert load_config(cls, path) == cfg


def test_dotted_overrides_apply(tmp_path: Path) -> None:
    """Dotted-key overrides replace file values at any depth; None overrides are ignored."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"optim": {"epochs": 5, "seed": 1}, "data": {"camera": {"height": 64}}}))

    cfg = load_config(TrainConfig, path, **{"optim.epochs": 9, "data.camera.width": 48,
                                            "model.depth": 1, "optim.seed": None, "mode": "supervised"})

    assert cfg.optim.epochs == 9
    assert cfg.optim.seed == 1
    assert cfg.data.camera.height == 64 and cfg.data.camera.width == 48
    assert cfg.model.depth == 1
    assert cfg.mode == "supervised"


def test_override_is_validated() -> None:
    """An override with an invalid value is refused like a bad file value."""
    with pytest.raises(ConfigError, match="epochs"):
        load_config(TrainConfig, None, **{"optim.epochs": 0})


@pytest.mark.parametrize(
    ("text", "message"),
    [("optim: [1, 2\n", r"not valid YAML at line 2, column 1: expected ',' or '\]', but got '<stream end>'$"),
     ("- 1\n- 2\n", r"expected a mapping of settings \(key: value lines\), got a list \(\[1, 2\]\)$"),
     ("just words\n", r"got a string \('just words'\)$")],
)
def test_malformed_yaml_rejected(tmp_path: Path, text: str, message: str) -> None:
    """Broken YAML or a non-mapping top level raises ConfigError with a clear message."""
    path = tmp_path / "c.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, path)


def test_missing_config_file(tmp_path: Path) -> None:
    """A missing config file raises ConfigError naming the path."""
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(TrainConfig, tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["", "\n  \n", "# nothing here\n"])
def test_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    """An empty YAML file (or one of comments only) is refused: a config names at least its version."""
    path = tmp_path / "c.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError, match=r"c\.yaml: expected a mapping of settings .*, got an empty file$"):
        load_config(TrainConfig, path)


@pytest.mark.parametrize("data", [b"II*\x00\x08\x00\x00\x00" + bytes(range(256)), b"\xff\xfe\x00v\x00"])
def test_binary_file_is_an_error(tmp_path: Path, data: bytes) -> None:
    """A binary file given as the config (a TIFF, UTF-16) is refused in one line, not a UnicodeDecodeError."""
    path = tmp_path / "some.tif"
    path.write_bytes(data)

    with pytest.raises(ConfigError, match=r"some\.tif: expected a YAML config \(text\), got a binary file$"):
        load_config(TrainConfig, path)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"format": "tensorrt"}, "--format: expected 'onnx', 'torchscript', 'int8' or 'bioimageio', got 'tensorrt'"),
    ({"opset": 9}, "--opset: expected a number >= 18, got 9"),
    ({"opset": "x"}, "--opset: expected a valid integer, got 'x'"),
])
def test_error_in_a_flag_names_the_flag(overrides: dict, message: str) -> None:
    """A bad value that came from a flag is named by the flag, in one line without pydantic's text."""
    with pytest.raises(ConfigError) as info:
        load_config(ExportConfig, None, origins={k: f"--{k}" for k in overrides}, **overrides)

    assert str(info.value) == message


def test_several_errors_report_the_first_and_list_the_rest(tmp_path: Path) -> None:
    """Several bad values: the first one, then how many more and each of them, on one line."""
    path = tmp_path / "c.yaml"
    path.write_text("version: 1\noptim: {epochs: 0, batch_size: 0, seed: x}\n")

    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, path)

    assert str(info.value) == (f"{path}: optim.batch_size: expected a number >= 1, got 0 (and 2 more errors: "
                               f"{path}: optim.epochs: expected a number >= 1, got 0; {path}: optim.seed: expected "
                               "a valid integer, got 'x')")


def test_cross_key_error_names_the_file_and_the_flags() -> None:
    """A check across keys (a validator) names where its keys came from."""
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, None, origins={"model.filters": "--set model.filters"}, **{"model.filters": [4, 8]})

    assert str(info.value).startswith("--set model.filters: model: model.filters needs depth + 1 = 3 values")


@pytest.mark.parametrize("section", ["optim:\n", "optim: 5\n"])
def test_override_into_non_mapping_section_is_a_config_error(tmp_path: Path, section: str) -> None:
    """An override into an empty/scalar YAML section gives ConfigError (as without it), not a crash."""
    path = tmp_path / "c.yaml"
    path.write_text("version: 1\n" + section)

    with pytest.raises(ConfigError, match="optim"):
        load_config(TrainConfig, path, **{"optim.epochs": 3})


def test_camera_offset_must_be_below_adc_max() -> None:
    """SimulatedCameraConfig refuses an offset at or above the ADC maximum."""
    with pytest.raises(ValidationError, match="offset_adu"):
        SimulatedCameraConfig(bit_depth=8, offset_adu=255)
    assert SimulatedCameraConfig(bit_depth=8, offset_adu=254).offset_adu == 254


def test_fast_preset_file_matches_the_demo_model() -> None:
    """configs/train_fast.yaml and n2n demo train the same real-time model (one preset, not two)."""
    from trainer.config import FAST_MODEL

    cfg = load_config(TrainConfig, CONFIG_DIR / "train_fast.yaml")

    assert cfg.model == FAST_MODEL
    assert cfg.model.filters is not None and cfg.model.filters[0] <= 8  # thin at full resolution
