# ruff: noqa: F811 - the fixtures of test_zoo (package, cache) taken as arguments
"""A downloaded model is data, not a program (issue 31): a zoo package never runs code of its own without
--trust-code, never reaches the network, is parsed and unpacked within budgets, and every refusal is one line
naming the file. Each hostile package is a real package of the session's tiny model, rewritten."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_cli import n2n
from test_zoo import cache, package, sample  # noqa: F401 - fixtures: the tiny model's package, a cache per test

from bench.faults_packages import MARKER, _alias_bomb, _evil_torchscript, _rebuild, run_package_faults
from streamer.core import trust, zoo
from streamer.core.card import ModelCard
from streamer.core.zoo import ZooError, open_package
from streamer.denoiser import Denoiser
from streamer.engines import CodeNotTrusted, EngineUnavailable


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every attempt to connect anywhere is recorded and fails."""
    tried: list = []

    def refuse(self: socket.socket, address: object) -> None:
        tried.append(address)
        raise OSError("network refused by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return tried


def _nothing_left(cache_root: Path) -> None:
    zoo_dir = cache_root / "zoo"
    assert not zoo_dir.exists() or not any(zoo_dir.iterdir()), list(zoo_dir.iterdir())


# --- (a) TorchScript is a program ---------------------------------------------------------------------------------
def test_our_own_torchscript_runs_and_is_unpacked_only_when_asked_for(package: Path) -> None:
    """The session's package was exported by this install: its TorchScript is trusted; it is unpacked only when
    the TorchScript engine runs it (the ONNX engines never write it to disk)."""
    folder = open_package(package)
    assert not (folder / "model.ts").exists() and (folder / "model.onnx").exists()
    den = Denoiser.from_model_dir(package, engine="torch", precision="fp32")
    assert den.engine.name == "torch" and (folder / "model.ts").exists()


def test_a_torchscript_this_install_did_not_write_is_refused_before_it_is_loaded(package: Path, tmp_path: Path
                                                                                  ) -> None:
    """A package whose TorchScript would overwrite a file when run: --engine torch refuses it in one line (garbage
    bytes are refused the same: it is never loaded); auto serves the ONNX weights; the marker is untouched. Only
    --trust-code runs it, and then it does write: the refusal is what stands between."""
    marker = tmp_path / "marker.bin"
    marker.write_bytes(MARKER)
    evil = _evil_torchscript(marker)

    def declare(data: bytes):
        def edit(d: dict) -> None:
            d["weights"]["torchscript"]["sha256"] = _sha(data)
        return edit

    hostile = _rebuild(package, tmp_path / "evil.zip", declare(evil), {"model.ts": evil})
    garbage = _rebuild(package, tmp_path / "garbage.zip", declare(b"not torchscript" * 99),
                       {"model.ts": b"not torchscript" * 99})
    for pkg in (hostile, garbage):
        with pytest.raises(CodeNotTrusted, match="--trust-code") as info:
            Denoiser.from_model_dir(pkg, engine="torch")
        assert "\n" not in str(info.value) and "TorchScript file is a program" in str(info.value)
        assert not (open_package(pkg) / "model.ts").exists()  # refused before it was even unpacked
    den = Denoiser.from_model_dir(hostile, engine="auto", precision="fp32")
    den(np.full((64, 64), 120, np.uint16))
    assert den.engine.name in ("openvino", "onnxruntime") and marker.read_bytes() == MARKER

    trusted = Denoiser.from_model_dir(hostile, engine="torch", precision="fp32", trust_code=True)
    trusted(np.full((64, 64), 120, np.uint16))
    assert marker.read_bytes() != MARKER  # run as a program, it wrote: what the refusal prevents


def test_a_torchscript_only_package_says_so_through_the_cli(package: Path, tmp_path: Path,
                                                             trained_run: dict[str, Path]) -> None:
    """A package with TorchScript weights only: every engine refuses it in one line that says it has only
    TorchScript and that --trust-code would run it as code (not `n2n export --model <cache>`)."""
    ts = zipfile.ZipFile(package).read("model.ts") + b"\n"  # not the file this install wrote

    def only_ts(d: dict) -> None:
        d["weights"].pop("onnx")
        d["weights"]["torchscript"].pop("parent", None)
        d["weights"]["torchscript"]["sha256"] = _sha(ts)

    pkg = _rebuild(package, tmp_path / "ts_only.zip", only_ts, {"model.ts": ts}, drop=("model.onnx",))
    for engine in ("auto", "torch", "onnxruntime"):
        result = n2n("denoise", trained_run["raw"], "--model", pkg, "--out", tmp_path / f"{engine}.ome.tif",
                     "--engine", engine)
        errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
        assert "--trust-code" in " ".join(result.output.split()) and "n2n export --model" not in result.output


# --- (b) alias bomb, (g) invalid YAML ------------------------------------------------------------------------------
def test_an_alias_bomb_is_refused_in_one_line(package: Path, tmp_path: Path, cache: Path) -> None:
    rdf = zipfile.ZipFile(package).read("rdf.yaml") + b"\n" + _alias_bomb(9)
    pkg = _rebuild(package, tmp_path / "bomb.zip", rdf_text=rdf)
    with pytest.raises(ZooError, match=r"rdf\.yaml: refused: .*aliases expanded.*alias bomb") as info:
        open_package(pkg)
    assert "\n" not in str(info.value)
    many = b"a: &a [1]\n" + b"".join(f"k{i}: *a\n".encode() for i in range(200))
    with pytest.raises(ZooError, match=r"more than 100 aliases"):
        zoo.parse_rdf(many, "x.yaml")
    with pytest.raises(ZooError, match=r"at most 1\.0 MiB"):
        zoo.parse_rdf(b"#" * (2**20 + 1), "x.yaml")
    with pytest.raises(ZooError, match=r"nested more than"):
        zoo.parse_rdf(b"[" * 200 + b"]" * 200, "x.yaml")
    _nothing_left(cache)


def test_invalid_yaml_is_one_line_naming_the_file_and_line_through_the_cli(package: Path, tmp_path: Path,
                                                                           trained_run: dict[str, Path]) -> None:
    lines = zipfile.ZipFile(package).read("rdf.yaml").decode().splitlines()
    broken = "\n".join([*lines[:10], "name: [unclosed", *lines[10:]]).encode()
    pkg = _rebuild(package, tmp_path / "broken.zip", rdf_text=broken)
    for cmd in (["denoise", trained_run["raw"], "--model", pkg, "--out", tmp_path / "o.ome.tif"],
                ["evaluate", "--model", pkg, "--data", trained_run["raw"], "--reference", trained_run["truth"]]):
        result = n2n(*cmd)
        out = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(out) == 1 and "Traceback" not in result.output, result.output
        assert re.search(r"broken\.zip: rdf\.yaml line \d+: not valid YAML", out[0]), out[0]


# --- (c) zip bombs and budgets ---------------------------------------------------------------------------------------
def test_a_zip_bomb_is_refused_before_anything_is_written(package: Path, tmp_path: Path, cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """64 MiB of zeros as weights (packed ~1000:1) is refused from the zip's declared sizes; a package beyond
    $N2N_ZOO_MAX_BYTES is refused the same; nothing is left in the cache, no .part folder."""
    pkg = tmp_path / "zeros.zip"
    _rebuild(package, pkg, drop=("model.ts",))
    with zipfile.ZipFile(pkg, "a", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.ts", bytes(64 * 2**20))
    with pytest.raises(ZooError, match=r"zeros\.zip: model\.ts: 64\.0 MiB packed into .* zip bomb") as info:
        open_package(pkg)
    assert "\n" not in str(info.value)
    _nothing_left(cache)
    monkeypatch.setenv("N2N_ZOO_MAX_BYTES", "100000")
    with pytest.raises(ZooError, match=r"more than the budget of 97\.7 KiB|more than the budget of 100000 bytes"):
        open_package(package)
    _nothing_left(cache)


def test_an_interrupted_unpack_leaves_nothing(package: Path, cache: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while copying the weights: the partial folder goes (try/finally), the next load succeeds."""
    real = zoo._copy

    def interrupted(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "_copy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        open_package(package)
    _nothing_left(cache)
    monkeypatch.setattr(zoo, "_copy", real)
    assert (open_package(package) / "model.onnx").exists()


# --- (d) files from inside the package only -----------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value", "says"), [
    ("weights.onnx.source", "/etc/hostname", "is an absolute path"),
    ("weights.onnx.source", "http://127.0.0.1:9/model.onnx", "is a URL"),
    ("weights.onnx.source", "../outside/model.onnx", "leads out of the package"),
    ("inputs[0].test_tensor.source", "https://example.org/x.npy", "is a URL"),
    ("covers[0].source", "file:///etc/passwd", "is a URL"),
    ("documentation.source", "C:\\Users\\x\\README.md", "is an absolute path"),
])
def test_files_only_from_inside_the_package(package: Path, tmp_path: Path, cache: Path,
                                            no_network: list, field: str, value: str, says: str) -> None:
    def edit(d: dict) -> None:
        node: object = d
        *path, last = field.replace("[0]", ".0").split(".")
        for key in path:
            node = node[int(key)] if key.isdigit() else node[key]  # type: ignore[index]
        node[last] = value  # type: ignore[index]

    pkg = _rebuild(package, tmp_path / "outside.zip", edit)
    with pytest.raises(ZooError) as info:
        open_package(pkg)
    message = str(info.value)
    assert "\n" not in message and f"{field}: {value!r} {says}" in message and "outside.zip" in message
    assert no_network == []
    _nothing_left(cache)


def test_a_missing_file_is_named(package: Path, tmp_path: Path) -> None:
    pkg = _rebuild(package, tmp_path / "missing.zip", drop=("model.onnx",))
    with pytest.raises(ZooError, match=r"missing\.zip: weights\.onnx\.source: model\.onnx is not in the package"):
        open_package(pkg)


# --- (e) stale partial unpacks, (f) the cache's limit ----------------------------------------------------------------
def test_a_stale_partial_unpack_is_swept(package: Path, cache: Path) -> None:
    stale = cache / "zoo" / "tiny-0123456789abcdef.part-99999999"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.onnx").write_bytes(b"x" * 1000)
    mine = cache / "zoo" / f"other.part-{os.getpid()}"  # a live process's (this one): kept
    mine.mkdir()
    open_package(package)
    assert not stale.exists() and mine.exists()


def test_the_cache_evicts_the_least_recently_used_package(package: Path, tmp_path: Path, cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    copies = []
    for i in range(3):
        def edit(d: dict, i: int = i) -> None:
            d["description"] = f"copy {i}. " + d["description"]
        copies.append(_rebuild(package, tmp_path / f"copy{i}.zip", edit))
    first = open_package(copies[0])
    one = sum(f.stat().st_size for f in first.rglob("*") if f.is_file())
    monkeypatch.setenv("N2N_ZOO_CACHE_MAX_BYTES", str(int(2.5 * one)))
    second = open_package(copies[1])
    os.utime(first, (1, 1))  # the first was used longest ago
    os.utime(second, (2, 2))
    open_package(copies[0])  # used again: now the most recent
    third = open_package(copies[2])
    assert first.exists() and third.exists() and not second.exists()


# --- item 4: the swap folder ------------------------------------------------------------------------------------------
def test_models_root_is_fixed_at_start_for_a_package(package: Path) -> None:
    """Serving a package, swap takes models beside the package (not the cache), and a swap does not move it."""
    from serverkit import config

    from streamer.server import running_server

    with running_server(package, config(engine="onnxruntime")) as server:
        assert server.models_root == package.parent.resolve()
        server.denoiser.card._run_dir = Path("/nowhere/else")  # what a swapped-in model's folder would change
        assert server.models_root == package.parent.resolve()


# --- the trust list -----------------------------------------------------------------------------------------------
def test_the_trust_list_lives_in_the_test_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert trust.config_dir() == Path(os.environ["N2N_CONFIG_DIR"]) and Path.home() not in trust.config_dir().parents
    monkeypatch.setenv("N2N_CONFIG_DIR", str(tmp_path / "cfg"))
    digest = _sha(b"x")
    assert not trust.is_trusted(digest)
    trust.register(digest, "x.ts")
    trust.register(digest, "x.ts")
    assert trust.is_trusted(digest) and (tmp_path / "cfg" / trust.TRUST_FILE).read_text().count(digest) == 1


def test_a_run_folder_from_elsewhere_is_refused_for_torch(run_copy: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """A run folder's TorchScript that this install did not write (another config folder: another install)."""
    monkeypatch.setenv("N2N_CONFIG_DIR", str(tmp_path / "elsewhere"))
    card = ModelCard.load(run_copy)
    from streamer.engines import create_engine

    with pytest.raises(EngineUnavailable, match="--trust-code"):
        create_engine("torch", card)
    assert create_engine("torch", card, trust_code=True).name == "torch"


# --- the bench ------------------------------------------------------------------------------------------------------
def test_the_package_faults_bench_refuses_every_hostile_package(package: Path, tmp_path: Path) -> None:
    report = run_package_faults(package, tmp_path / "faults", zip_bomb_bytes=64 * 2**20, alias_pad_bytes=0,
                                bomb_pad_bytes=0)
    assert report["all_refused"], report
    for case in report["cases"].values():
        assert case["refused"] and not case["marker_touched"] and not case["network_reached"]
        assert case["files_written_outside_cache"] == [] and case["message"].startswith("error:")
