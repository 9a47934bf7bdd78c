"""A BioImage Model Zoo package (https://bioimage.io, a ``.zip`` or its ``rdf.yaml``) as a model folder: what lets
``n2n serve``, ``n2n denoise`` and ``n2n evaluate`` take ``--model PACKAGE.zip``.

A package is data, never a program, and comes from anyone: reading one runs no code of its and reaches no network.
:func:`open_package`

1. lists the zip's members (at most :data:`MAX_MEMBERS`) and refuses declared sizes beyond the budget
   (``$N2N_ZOO_MAX_BYTES``, :data:`MAX_BYTES` = 2 GiB, all members together) or a member packed more than
   :data:`MAX_RATIO`:1 (a zip bomb), before reading any;
2. reads ``rdf.yaml`` itself (at most :data:`MAX_RDF_BYTES` = 1 MiB) with a YAML loader that counts what it composes
   (:data:`MAX_YAML_NODES` nodes with aliases expanded, :data:`MAX_YAML_ALIASES` aliases, nesting
   :data:`MAX_YAML_DEPTH`), so an alias bomb is refused in milliseconds;
3. refuses every file the description names (weights, external data, test and sample tensors, covers,
   documentation, attachments, ...) that is a URL, an absolute path or leaves the package (``..``): a package's
   files come from inside it only. Only then ``bioimageio.spec`` validates the description, with its I/O checks off
   (it would download URLs and read every file);
4. checks that it is a 2-D image-to-image model that the Denoiser can run, and writes a model folder for it: its ONNX
   weights (and their external data), each checked against the description's sha256 as it is copied, and a model
   card built from the description. Its TorchScript weights, a program, are unpacked only when the TorchScript engine
   is to run them (:func:`unpack_torchscript`): a file this install wrote, or with ``--trust-code``
   (:mod:`streamer.core.trust`).

The folder lies in the cache (``$N2N_CACHE_DIR``, else ``$XDG_CACHE_HOME/n2n-live``, else ``~/.cache/n2n-live``)
under the package's sha256, so a package is unpacked once and a changed package is a new folder. Unpacking writes
into ``NAME.part-PID`` and renames it when complete; it is removed on any failure (Ctrl-C too), and one left by a
process that no longer runs is removed on the next load. It also keeps :data:`DISK_MARGIN` free on the disk. The
cache holds at most ``$N2N_ZOO_CACHE_MAX_BYTES`` (:data:`CACHE_MAX_BYTES` = 10 GiB): beyond, the least recently
used package folders are removed. A package it cannot serve is refused in one line that names the file and says
why: its YAML, a file source, its budget, its axes, its weights formats, or a processing step the server does not
do.

What maps onto the card: one input and one output with axes batch, channel, y, x (pytorch's order); the input's
channels are one frame, or K consecutive frames where the package says so (``config.n2n_live.input_frames``, as
``n2n export --format bioimageio`` writes); the spatial sizes' step is the size multiple and the output's halo
(if any) the tile overlap; the pre-processing must be fixed affine (``fixed_zero_mean_unit_variance``,
``scale_linear``, ``ensure_dtype``: the card's mean and std) and the post-processing its exact inverse, because
the server normalises every frame of a stream the same way (never by its own statistics). Per-image
normalisation (``zero_mean_unit_variance``, ``scale_range``), ``scale_mean_variance``, ``clip``, ``binarize``,
``sigmoid`` are refused.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import posixpath
import re
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from .card import (
    CARD_NAME,
    ONNX_NAME,
    TORCHSCRIPT_NAME,
    Architecture,
    Artifact,
    CardError,
    InputSpec,
    ModelCard,
    Normalization,
    Tile,
    file_digest,
    unet_reach,
)
from .config import user_folder

__all__ = ["CACHE_MAX_BYTES", "CONFIG_KEY", "MAX_BYTES", "MAX_RATIO", "MAX_RDF_BYTES", "TEST_INPUT_ID",
           "TEST_OUTPUT_ID", "ZooError", "cache_dir", "is_package", "open_package", "package_of", "parse_rdf",
           "spec_files_closed", "torchscript_only", "unpack_torchscript"]

CONFIG_KEY = "n2n_live"
"""The package's ``config`` section that n2n-live writes and reads (``input_frames``, the model card)."""
TEST_INPUT_ID = "raw"
TEST_OUTPUT_ID = "denoised"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
EPS = 1e-6
"""bioimageio.core's ``fixed_zero_mean_unit_variance`` divides by ``std + eps`` with this eps."""

MAX_BYTES = 2 * 2**30
"""Default of ``$N2N_ZOO_MAX_BYTES``: the most a package's members may declare together, and the most written
for one package."""
CACHE_MAX_BYTES = 10 * 2**30
"""Default of ``$N2N_ZOO_CACHE_MAX_BYTES``: the cache's package folders together; beyond, the least recently used go."""
MAX_RATIO = 100
"""A member larger than :data:`RATIO_FLOOR` packed more than this many times is refused (weights pack ~1.1:1)."""
RATIO_FLOOR = 2**20
MAX_MEMBERS = 10_000
MAX_RDF_BYTES = 2**20
MAX_YAML_NODES = 100_000
"""Nodes of ``rdf.yaml`` with every alias expanded (ours has ~400)."""
MAX_YAML_ALIASES = 100
MAX_YAML_DEPTH = 64
DISK_MARGIN = 256 * 2**20
"""Free disk kept after unpacking."""
UNPACKER = 2
"""``package.json``'s ``unpacker``: a folder made by an older loader is made again."""
FILE_KEYS = frozenset({
    "source", "documentation", "covers", "icon", "attachments", "files", "file", "test_tensor", "sample_tensor",
    "test_inputs", "test_outputs", "sample_inputs", "sample_outputs", "external_data", "architecture",
    "dependencies", "rdf_source", "download_url"})
"""Fields of a description (any format version) whose strings name files (alone or in a list)."""


@contextlib.contextmanager
def spec_files_closed() -> Iterator[None]:
    """bioimageio.spec 0.5.12 leaves the files it reads open for the garbage collector; collect them here, where
    their ResourceWarnings are known and silenced, rather than at a random later moment."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            gc.collect()


class ZooError(CardError):
    """A zoo package that cannot be read, or that describes a model n2n-live cannot serve (the message says why)."""


def is_package(path: str | Path) -> bool:
    """A zoo package rather than a model folder: a ``.zip``, an ``rdf.yaml`` / ``*.bioimageio.yaml``, or a folder
    with one of those (a package unpacked; ours carries its ``model.json`` too, but a model folder has no rdf)."""
    p = Path(path)
    if p.is_dir():
        return any((p / n).exists() for n in RDF_NAMES)
    return p.suffix == ".zip" or p.name in RDF_NAMES or p.name.endswith(".bioimageio.yaml")


def cache_dir() -> Path:
    """``$N2N_CACHE_DIR``, else ``$XDG_CACHE_HOME/n2n-live``, else ``~/.cache/n2n-live``."""
    return user_folder("N2N_CACHE_DIR", "XDG_CACHE_HOME", ".cache")


def _affine(ops: list[Any], where: str, allowed: tuple[str, ...]) -> tuple[float, float]:
    """The processing ops as one ``a·x + b``, or a ZooError naming the op that is not a fixed affine map."""
    a, b = 1.0, 0.0
    for op in ops:
        kind = op.id
        if kind == "ensure_dtype":
            if op.kwargs.dtype not in ("float32", "float64"):
                raise ZooError(f"{where}: ensure_dtype to {op.kwargs.dtype}: expected float32 tensors")
            continue
        if kind not in allowed:
            per_image = kind in ("zero_mean_unit_variance", "scale_range", "scale_mean_variance")
            why = ("normalises each image by its own statistics; the server keeps one fixed normalisation for a "
                   "stream (a frame keeps its brightness)") if per_image else "is not a fixed linear map"
            raise ZooError(f"{where}: {kind} {why}; supported: {', '.join(allowed)} (and ensure_dtype)")
        kw = op.kwargs
        if getattr(kw, "axis", None) is not None:
            vals = [*(kw.mean if kind.startswith("fixed") else kw.gain)]
            if len(vals) != 1:
                raise ZooError(f"{where}: {kind} along axis {kw.axis} with {len(vals)} values: expected one channel")
        if kind == "fixed_zero_mean_unit_variance":
            mean, std = (kw.mean, kw.std) if not isinstance(kw.mean, list) else (kw.mean[0], kw.std[0])
            g, o = 1.0 / (float(std) + EPS), -float(mean) / (float(std) + EPS)
        else:  # scale_linear
            gain, offset = kw.gain, kw.offset
            g = float(gain[0] if isinstance(gain, list) else gain)
            o = float(offset[0] if isinstance(offset, list) else offset)
        a, b = g * a, g * b + o
    return a, b


def _spatial(axis: Any, where: str) -> tuple[int, int]:
    """(min, step) of a spatial input axis; a fixed size is (size, 0)."""
    size = axis.size
    if isinstance(size, int):
        return size, 0
    if not hasattr(size, "step"):
        raise ZooError(f"{where}: axis {axis.id}'s size refers to another tensor; expected a fixed size or min and "
                       "step")
    return int(size.min), max(1, int(size.step))


def card_from_description(descr: Any, source: Path, test_shape: list[int] | None = None
                          ) -> tuple[ModelCard, dict[str, Any]]:
    """The model card for a zoo model description, and the weights entries to unpack (by our format name); a
    ZooError when the model is not a 2-D, one-output image-to-image model with ONNX or TorchScript weights.
    ``test_shape``: the shape of the input's test tensor (the frame size a model of any size is planned for)."""
    name = descr.name
    where = f"{source.name} ({name})"
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise ZooError(f"{where}: expected one input and one output tensor, got {len(descr.inputs)} input(s) and "
                       f"{len(descr.outputs)} output(s)")
    inp, outp = descr.inputs[0], descr.outputs[0]
    types = [a.type for a in inp.axes]
    out_types = [a.type for a in outp.axes]
    if types != ["batch", "channel", "space", "space"] or [str(a.id) for a in inp.axes[2:]] != ["y", "x"]:
        ids = ",".join(str(a.id) for a in inp.axes)
        raise ZooError(f"{where}: input axes {ids}: expected batch, channel, y, x (a 2-D model in pytorch's order)")
    if out_types != ["batch", "channel", "space", "space"] or [str(a.id) for a in outp.axes[2:]] != ["y", "x"]:
        ids = ",".join(str(a.id) for a in outp.axes)
        raise ZooError(f"{where}: output axes {ids}: expected batch, channel, y, x")
    ours = (descr.config.model_dump() if hasattr(descr.config, "model_dump") else dict(descr.config or {}))
    ours = ours.get(CONFIG_KEY) or {}
    k = int(ours.get("input_frames", 1))
    channels = len(inp.axes[1].channel_names)
    if channels != k:
        raise ZooError(f"{where}: the input has {channels} channels: expected 1 (one frame)"
                       + (f" or the {k} frames its config.{CONFIG_KEY}.input_frames declares" if k > 1 else
                          f", or K consecutive frames declared as config.{CONFIG_KEY}.input_frames: K"))
    if len(outp.axes[1].channel_names) != 1:
        raise ZooError(f"{where}: the output has {len(outp.axes[1].channel_names)} channels: expected 1")
    for ax in outp.axes[2:]:
        ref = getattr(ax.size, "tensor_id", None)
        same_fixed = isinstance(ax.size, int) and ax.size == next(a for a in inp.axes if a.id == ax.id).size
        if not same_fixed and (ref != inp.id or str(getattr(ax.size, "axis_id", "")) != str(ax.id)
                               or getattr(ax.size, "offset", 0)):
            raise ZooError(f"{where}: output axis {ax.id} is not the input's size: expected an image-to-image model")
        if getattr(ax, "scale", 1.0) != getattr(next(a for a in inp.axes if a.id == ax.id), "scale", 1.0):
            raise ZooError(f"{where}: output axis {ax.id} has another scale than the input's")
    (min_y, step_y), (min_x, step_x) = (_spatial(a, where) for a in inp.axes[2:])
    fixed = [min_y, min_x] if step_y == step_x == 0 else None
    step = max(step_y, step_x, 1)
    if fixed is None and (step & (step - 1) or step_y != step_x):
        raise ZooError(f"{where}: spatial size steps {step_y}×{step_x}: expected one power of two for both axes "
                       "(or fixed sizes for both)")
    levels = int(math.log2(step))
    halo = max(int(getattr(a, "halo", 0) or 0) for a in outp.axes[2:])
    a, b = _affine(list(inp.preprocessing), f"{where}: pre-processing",
                   ("fixed_zero_mean_unit_variance", "scale_linear"))
    c, d = _affine(list(outp.postprocessing), f"{where}: post-processing",
                   ("scale_linear", "fixed_zero_mean_unit_variance"))
    if a <= 0:
        raise ZooError(f"{where}: pre-processing scales by {a:g}: expected a positive scale")
    std, mean = 1.0 / a, -b / a
    if not (math.isclose(c, std, rel_tol=1e-5) and math.isclose(d, mean, rel_tol=1e-5, abs_tol=1e-6 * std)):
        raise ZooError(f"{where}: post-processing maps y to {c:.6g}·y + {d:.6g}: expected the inverse of the "
                       f"pre-processing ({std:.6g}·y + {mean:.6g}), as a denoiser's output is in the input's units")
    weights = {}
    if descr.weights.onnx is not None:
        weights["onnx"] = descr.weights.onnx
    if descr.weights.torchscript is not None:
        weights["torchscript"] = descr.weights.torchscript
    if not weights:
        have = [f for f in ("pytorch_state_dict", "keras_hdf5", "keras_v3", "tensorflow_saved_model_bundle",
                            "tensorflow_js") if getattr(descr.weights, f, None) is not None]
        raise ZooError(f"{where}: weights {', '.join(have) or 'none'}: n2n-live runs onnx or torchscript weights; "
                       "convert them first (docs/zoo.md: bioimageio.core's weight converters)")
    card_src = ours.get("card") or {}
    test_shape = [int(s) for s in test_shape or []]
    arch = Architecture(name="bioimageio", depth=levels, base_filters=1, input_frames=k, pads_input=False)
    spec = InputSpec(dtype=(card_src.get("input") or {}).get("dtype"), shape_hint=fixed or test_shape[-2:] or None,
                     min_side=None if fixed or max(min_y, min_x) <= step else max(min_y, min_x), fixed_shape=fixed)
    tile = Tile(size=max(fixed) if fixed else 2048, overlap=max(halo, unet_reach(levels)))
    try:  # our own package: the card it was made from describes the network (it pads, its reach, its tiling)
        theirs = Architecture.model_validate(card_src["architecture"])
        if theirs.input_frames == k and 2 ** theirs.levels == step and fixed is None:
            arch, tile = theirs, Tile.model_validate(card_src["tile"])
            spec = InputSpec.model_validate(card_src.get("input") or {})
    except (KeyError, TypeError, ValueError):
        pass
    norm = Normalization(mean=mean, std=std)
    try:  # our own package: the card's figures exactly (the zoo's std carries bioimageio.core's eps of 1e-6)
        theirs_norm = Normalization.model_validate(card_src["normalization"])
        if math.isclose(theirs_norm.std + EPS, std, rel_tol=1e-9) and math.isclose(theirs_norm.mean, mean,
                                                                                   rel_tol=1e-9, abs_tol=1e-9):
            norm = theirs_norm
    except (KeyError, TypeError, ValueError):
        pass
    card = ModelCard(
        name=card_src.get("name") or name,
        architecture=arch,
        size_multiple=2 ** arch.levels,
        normalization=norm,
        input=spec,
        tile=tile,
        training={"source": "bioimageio", "package": str(source), "name": name,
                  "id": str(getattr(descr, "id", "") or ""), "authors": [a.name for a in descr.authors],
                  **({"n2n_live": card_src.get("training")} if card_src.get("training") else {})},
        metrics={k_: float(v) for k_, v in (card_src.get("metrics") or {}).items()},
        versions={"bioimageio_format": str(descr.format_version)},
    )
    return card, weights


def _npy_shape(stream: IO[bytes]) -> list[int]:
    """The shape in a ``.npy`` file's header (its data is not read)."""
    import numpy as np

    try:
        version = np.lib.format.read_magic(stream)
        shape, _, _ = (np.lib.format.read_array_header_1_0(stream) if version == (1, 0)
                       else np.lib.format.read_array_header_2_0(stream))
        return [int(s) for s in shape]
    except Exception:
        return []


def _env_bytes(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
        if value <= 0:
            raise ValueError
    except ValueError:
        raise ZooError(f"${name}: expected a positive number of bytes, got {raw!r}") from None
    return value


def max_bytes() -> int:
    """``$N2N_ZOO_MAX_BYTES``, else :data:`MAX_BYTES`."""
    return _env_bytes("N2N_ZOO_MAX_BYTES", MAX_BYTES)


def cache_max_bytes() -> int:
    """``$N2N_ZOO_CACHE_MAX_BYTES``, else :data:`CACHE_MAX_BYTES`."""
    return _env_bytes("N2N_ZOO_CACHE_MAX_BYTES", CACHE_MAX_BYTES)


def _mb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:.0f} bytes"


# --- the package's files: a zip's members or a folder's files, read only through here -------------------------
class _Files:
    """The files of a package (a zip or a folder), looked up by the names its description gives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.root = path.parent if path.is_file() else path
        if path.suffix == ".zip":
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise ZooError(f"{path}: not a zip file ({exc})") from None
            infos = self.zip.infolist()
            if len(infos) > MAX_MEMBERS:
                raise ZooError(f"{path}: {len(infos)} files in the zip: at most {MAX_MEMBERS} in a package")
            self.members = {posixpath.normpath(i.filename): i for i in infos if not i.is_dir()}
            self._check_sizes()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def _check_sizes(self) -> None:
        """Declared sizes and packing ratios, before anything is read: a zip bomb is refused here."""
        budget = max_bytes()
        total = 0
        for name, info in self.members.items():
            total += info.file_size
            if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise ZooError(f"{self.path}: {name}: {_mb(info.file_size)} packed into {_mb(info.compress_size)} "
                               f"(over {MAX_RATIO}:1): not model data (a zip bomb?); refused before unpacking")
        if total > budget:
            raise ZooError(f"{self.path}: its files declare {_mb(total)} unpacked: more than the budget of "
                           f"{_mb(budget)} for a package ($N2N_ZOO_MAX_BYTES); refused before unpacking")

    def rdf_name(self) -> str:
        if self.zip is not None:
            for n in RDF_NAMES:
                if n in self.members:
                    return n
            named = sorted(n for n in self.members if "/" not in n and n.endswith(".bioimageio.yaml"))
            if named:
                return named[0]
            raise ZooError(f"{self.path}: no rdf.yaml in the zip: not a zoo package")
        return self.path.name

    def size(self, name: str, field: str) -> int:
        """The size of the file the description names in ``field``; a ZooError naming it when absent."""
        if self.zip is not None:
            info = self.members.get(posixpath.normpath(name))
            if info is None:
                raise ZooError(f"{self.path}: {field}: {name} is not in the package")
            return info.file_size
        file = self._local(name, field)
        return file.stat().st_size

    def _local(self, name: str, field: str) -> Path:
        root = self.root.resolve()
        file = (root / name).resolve()
        if root not in file.parents:
            raise ZooError(f"{self.path}: {field}: {name} leads out of the package's folder")
        if not file.is_file():
            raise ZooError(f"{self.path}: {field}: {name} is not in the package")
        return file

    def open(self, name: str, field: str, limit: int | None = None) -> IO[bytes]:
        size = self.size(name, field)
        if limit is not None and size > limit:
            raise ZooError(f"{self.path}: {field}: {name} is {_mb(size)}: at most {_mb(limit)}")
        if self.zip is not None:
            try:
                return self.zip.open(self.members[posixpath.normpath(name)])
            except (NotImplementedError, RuntimeError, zipfile.BadZipFile) as exc:
                raise ZooError(f"{self.path}: {name}: cannot be read from the zip ({exc})") from None
        return open(self._local(name, field), "rb")

    def read(self, name: str, field: str, limit: int) -> bytes:
        with self.open(name, field, limit) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ZooError(f"{self.path}: {field}: {name} is larger than {_mb(limit)}")
        return data

    def digest(self, rdf: bytes, names: list[str]) -> str:
        """The package's content digest: the zip's sha256, or the rdf's and the files it uses (a folder)."""
        if self.zip is not None:
            return file_digest(self.path)
        h = hashlib.sha256(rdf)
        for name in sorted(set(names)):
            h.update(b"\0" + name.encode() + b"\0" + file_digest(self._local(name, name)).encode())
        return h.hexdigest()


# --- rdf.yaml: parsed within budgets, its file sources checked ---------------------------------------------------
class _RdfTooLarge(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that counts what it composes: nodes, aliases and nesting, each within a budget."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.n2n_nodes = 0
        self.n2n_aliases = 0
        self.n2n_depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.n2n_aliases += 1
            if self.n2n_aliases > MAX_YAML_ALIASES:
                raise _RdfTooLarge(f"more than {MAX_YAML_ALIASES} aliases (*name)")
        else:
            self.n2n_nodes += 1
            if self.n2n_nodes > MAX_YAML_NODES:
                raise _RdfTooLarge(f"more than {MAX_YAML_NODES} nodes")
        self.n2n_depth += 1
        try:
            if self.n2n_depth > MAX_YAML_DEPTH:
                raise _RdfTooLarge(f"nested more than {MAX_YAML_DEPTH} deep")
            return super().compose_node(parent, index)
        finally:
            self.n2n_depth -= 1


def _expanded(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded (what a consumer walks), without expanding them: an alias
    bomb of a few kB names billions. A recursive alias is refused."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if done:
            open_.discard(key)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), 2 * MAX_YAML_NODES)
            continue
        if key in open_:
            raise _RdfTooLarge("a recursive alias")
        open_.add(key)
        stack.append((node, True))
        for c in children:
            if id(c) in open_:
                raise _RdfTooLarge("a recursive alias")
            if id(c) not in sizes:
                stack.append((c, False))
    return sizes[id(root)]


def parse_rdf(text: bytes, where: str) -> dict[str, Any]:
    """``rdf.yaml``'s content, parsed within budgets (size, nodes with aliases expanded, aliases, nesting), or a
    ZooError in one line naming the file (and the line of a YAML error)."""
    if len(text) > MAX_RDF_BYTES:
        raise ZooError(f"{where}: {_mb(len(text))}: at most {_mb(MAX_RDF_BYTES)} for a description")
    try:
        doc = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ZooError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    loader = _BoundedLoader(doc)
    try:
        node = loader.get_single_node()
        if node is not None and (n := _expanded(node)) > MAX_YAML_NODES:
            raise _RdfTooLarge(f"{n if n < 2 * MAX_YAML_NODES else 'more than ' + str(2 * MAX_YAML_NODES)} nodes "
                               f"with its aliases expanded (at most {MAX_YAML_NODES}): an alias bomb?")
    except _RdfTooLarge as exc:
        raise ZooError(f"{where}: refused: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ZooError(f"{where}{line}: not valid YAML ({exc.problem or exc.context})") from None
    except (yaml.YAMLError, RecursionError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise ZooError(f"{where}: not valid YAML ({type(exc).__name__}: {first})") from None
    finally:
        loader.dispose()
    try:  # within budget: the zoo's own YAML reading (YAML 1.2, as bioimageio.spec reads it)
        from ruyaml import YAML

        content = YAML(typ="safe", pure=True).load(doc)
    except Exception as exc:
        raise ZooError(f"{where}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(content, dict):
        raise ZooError(f"{where}: expected a YAML mapping (a zoo description), got a {type(content).__name__}")
    return content


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")


def _check_source(value: str, field: str, where: str) -> None:
    text = value.strip()
    key = field.rsplit(".", 1)[-1].split("[", 1)[0]
    if key == "dependencies" and re.match(r"^(conda|pip):", text):
        text = text.split(":", 1)[1]
    elif key == "architecture" and ":" in text and "://" not in text:
        text = text.rsplit(":", 1)[0]  # format 0.4: FILE.py:Class or module:Class
    if "://" in text or _SCHEME.match(text):
        raise ZooError(f"{where}: {field}: {value!r} is a URL: a package's files are read from inside the package "
                       "only (n2n-live does not fetch them)")
    if text.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", text) or "\0" in text:
        raise ZooError(f"{where}: {field}: {value!r} is an absolute path: a package's files are read from inside the "
                       "package only")
    if ".." in re.split(r"[\\/]", text):
        raise ZooError(f"{where}: {field}: {value!r} leads out of the package (..): a package's files are read from "
                       "inside the package only")


def check_sources(content: Any, where: str, path: str = "", is_file: bool = False) -> None:
    """Refuse every file the description names (in any format version's fields) that is a URL, an absolute path or
    leads out of the package; ``config`` (free-form, never read as files) is not looked at."""
    if isinstance(content, dict):
        for key, value in content.items():
            if not path and key == "config":
                continue
            check_sources(value, where, f"{path}.{key}" if path else str(key), str(key) in FILE_KEYS)
    elif isinstance(content, list):
        for i, value in enumerate(content):
            check_sources(value, where, f"{path}[{i}]", is_file)
    elif isinstance(content, str) and is_file:
        _check_source(content, path, where)


# --- the cache: unpacked within budgets, partial folders removed, least recently used evicted ---------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid < 2**22  # another user's process (or not a pid at all)
    return True


_PART = re.compile(r"\.part-(\d+)$")


def sweep_partials(zoo: Path) -> list[Path]:
    """Remove what an interrupted unpack left (``NAME.part-PID``, in the cache and in its package folders) whose
    process no longer runs; returns what was removed."""
    removed: list[Path] = []
    if not zoo.is_dir():
        return removed
    for entry in [*zoo.iterdir(), *(f for d in zoo.iterdir() if d.is_dir() for f in d.iterdir())]:
        m = _PART.search(entry.name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
    return removed


def _folder_bytes(folder: Path) -> int:
    total = 0
    for f in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
    return total


def evict(zoo: Path, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used package folders until the cache holds at most ``$N2N_ZOO_CACHE_MAX_BYTES``
    (``keep``, the one in use now, stays); returns what was removed."""
    limit = cache_max_bytes()
    folders = [d for d in zoo.iterdir() if d.is_dir() and not _PART.search(d.name)] if zoo.is_dir() else []
    sizes = {d: _folder_bytes(d) for d in folders}
    total = sum(sizes.values())
    removed = []
    for d in sorted(folders, key=lambda d: d.stat().st_mtime):
        if total <= limit:
            break
        if keep is not None and d.resolve() == keep.resolve():
            continue
        shutil.rmtree(d, ignore_errors=True)
        total -= sizes[d]
        removed.append(d)
    return removed


def _room(target: Path, need: int, where: str) -> None:
    free = shutil.disk_usage(target).free
    if need + DISK_MARGIN > free:
        raise ZooError(f"{where}: unpacking {_mb(need)} would leave less than {_mb(DISK_MARGIN)} free on the disk of "
                       f"{target} ({_mb(free)} free)")


def _copy(reader: IO[bytes], target: Path, limit: int, expected_sha256: str | None, where: str) -> str:
    """Copy ``reader`` into ``target``, at most ``limit`` bytes, and return its sha256; a ZooError when it is larger
    or not the file the description's sha256 names."""
    h = hashlib.sha256()
    written = 0
    with reader, open(target, "wb") as f:
        while block := reader.read(1 << 22):
            written += len(block)
            if written > limit:
                raise ZooError(f"{where}: more than {_mb(limit)} unpacked: over the budget ($N2N_ZOO_MAX_BYTES)")
            h.update(block)
            f.write(block)
    digest = h.hexdigest()
    if expected_sha256 and digest != str(expected_sha256).lower():
        raise ZooError(f"{where}: sha256 {digest[:12]}…, the description says {str(expected_sha256)[:12]}…: not the "
                       "file the package describes")
    return digest


def _meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("unpacker") == UNPACKER else None


def package_of(card: ModelCard) -> str | None:
    """The package a card's folder was unpacked from (None: a model folder of ``n2n train``)."""
    try:
        run_dir = card.run_dir
    except CardError:
        return None
    meta = _meta(run_dir)
    return str(meta["package"]) if meta is not None else None


def torchscript_only(package: str) -> str:
    """The one line for a package with TorchScript weights only (without ``--trust-code``)."""
    return (f"{package}: the package has TorchScript weights only: a TorchScript file is a program, not data, so "
            "n2n-live serves a package from its ONNX weights; `--engine torch --trust-code` runs its TorchScript as "
            "code (only for a package whose source you trust)")


def _entry_name(entry: Any, field: str, where: str) -> str:
    source = getattr(entry, "source", None)
    name = str(getattr(source, "path", None) or source or "")
    if not name or "://" in name or name.startswith("/"):
        raise ZooError(f"{where}: {field}: {name!r}: expected a file inside the package")
    return posixpath.normpath(name)


def open_package(path: str | Path) -> Path:
    """The model folder for a zoo package (made on first use, then found in the cache); see the module docstring."""
    with spec_files_closed():
        try:
            return _open_package(Path(path))
        except ZooError as exc:  # raised again below: its traceback would keep the package's open files alive
            message = str(exc)
    raise ZooError(message)


def _open_package(path: Path) -> Path:
    if path.is_dir():
        found = [path / n for n in RDF_NAMES if (path / n).exists()]
        if not found:
            raise ZooError(f"{path}: no rdf.yaml in the folder: not a zoo package")
        path = found[0]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such zoo package")
    zoo = cache_dir() / "zoo"
    sweep_partials(zoo)
    files = _Files(path)
    try:
        return _unpack(path, files, zoo)
    finally:
        files.close()


def _unpack(src: Path, files: _Files, zoo: Path) -> Path:
    stem = src.stem if src.suffix == ".zip" else src.parent.name
    if files.zip is not None:  # a zip's digest first: a package loaded before is not parsed again
        digest = files.digest(b"", [])
        folder = zoo / f"{stem}-{digest[:16]}"
        if (folder / CARD_NAME).exists() and _meta(folder) is not None:
            with contextlib.suppress(OSError):
                os.utime(folder)  # used now: the last to be evicted
            return folder
    rdf_name = files.rdf_name()
    where = f"{src}" if files.zip is None else f"{src}: {rdf_name}"
    content = parse_rdf(files.read(rdf_name, rdf_name, MAX_RDF_BYTES), where)
    check_sources(content, where)
    descr = _describe(content, files, rdf_name, src)
    test_shape: list[int] = []
    test = getattr(descr.inputs[0], "test_tensor", None) if len(descr.inputs) == 1 else None
    if test is not None:  # its header only
        with contextlib.suppress(ZooError, OSError):
            with files.open(_entry_name(test, "inputs[0].test_tensor", str(src)), "inputs[0].test_tensor") as f:
                test_shape = _npy_shape(f)
        axes = list(descr.inputs[0].axes)
        names = getattr(axes[1], "channel_names", None) if len(axes) > 1 else None
        if len(test_shape) == len(axes) and names is not None and test_shape[1] != len(names):
            raise ZooError(f"{src}: not a valid zoo model package (inputs[0].test_tensor: shape {test_shape} has "
                           f"{test_shape[1]} channel(s), the input's axes name {len(names)})")
    card, weights = card_from_description(descr, src, test_shape)
    wanted: dict[str, tuple[str, str, str | None]] = {}  # target name -> (member, field, sha256)
    ts: dict[str, Any] | None = None
    for fmt, entry in weights.items():
        field = f"weights.{fmt}.source"
        member = _entry_name(entry, field, str(src))
        files.size(member, field)
        sha = str(entry.sha256) if getattr(entry, "sha256", None) else None
        if fmt == "torchscript":
            ts = {"member": member, "sha256": sha}
            continue
        wanted[ONNX_NAME] = (member, field, sha)
        extra = getattr(entry, "external_data", None)
        if extra is not None:
            data_member = _entry_name(extra, f"weights.{fmt}.external_data.source", str(src))
            wanted[Path(data_member).name] = (data_member, f"weights.{fmt}.external_data.source",
                                              str(extra.sha256) if getattr(extra, "sha256", None) else None)
    digest_files = sorted({m for m, _, _ in wanted.values()} | ({ts["member"]} if ts else set()))
    if files.zip is None:
        digest = files.digest(files.read(rdf_name, rdf_name, MAX_RDF_BYTES), digest_files)
    folder = zoo / f"{stem}-{digest[:16]}"
    if (folder / CARD_NAME).exists() and _meta(folder) is not None:
        with contextlib.suppress(OSError):
            os.utime(folder)
        return folder
    budget = max_bytes()
    need = sum(files.size(m, f) for m, f, _ in wanted.values())
    if need > budget:
        raise ZooError(f"{src}: its weights are {_mb(need)}: more than the budget of {_mb(budget)} "
                       "($N2N_ZOO_MAX_BYTES)")
    zoo.mkdir(parents=True, exist_ok=True)
    _room(zoo, need, str(src))
    part = folder.with_name(f"{folder.name}.part-{os.getpid()}")  # one per process: Dask workers may race here
    shutil.rmtree(part, ignore_errors=True)
    try:
        part.mkdir(parents=True)
        written = 0
        digests = {}
        for target, (member, field, sha) in wanted.items():
            digests[target] = _copy(files.open(member, field), part / target, budget - written, sha,
                                    f"{src}: {member}")
            written += (part / target).stat().st_size
        arts = {}
        if ONNX_NAME in wanted:
            entry = weights["onnx"]
            data = next((t for t in wanted if t != ONNX_NAME), None)
            arts["onnx"] = Artifact(path=ONNX_NAME, format="onnx", sha256=digests[ONNX_NAME],
                                    opset=getattr(entry, "opset_version", None),
                                    layout=f"N{card.input_frames}HW float32, normalised",
                                    weights=data, weights_sha256=digests[data] if data else None)
        if ts is not None:  # described, not unpacked: a program, unpacked when it is to run (unpack_torchscript)
            arts["torchscript"] = Artifact(path=TORCHSCRIPT_NAME, format="torchscript", sha256=ts["sha256"] or "",
                                           layout=f"N{card.input_frames}HW float32, normalised")
        card.artifacts = arts
        card.save(part)
        (part / "package.json").write_text(json.dumps({
            "package": str(src.resolve()), "sha256": digest, "unpacker": UNPACKER, "rdf": rdf_name,
            "torchscript": ts, **({"digest_files": digest_files} if files.zip is None else {})}, indent=2) + "\n")
        if folder.exists() and not ((folder / CARD_NAME).exists() and _meta(folder) is not None):
            shutil.rmtree(folder, ignore_errors=True)  # not one of ours (or an older loader's): made again
        try:
            part.replace(folder)
        except OSError:
            if not (folder / CARD_NAME).exists():
                raise
    finally:  # failed, interrupted (Ctrl-C too) or another process was first: nothing half-made stays
        shutil.rmtree(part, ignore_errors=True)
    with contextlib.suppress(OSError):
        evict(zoo, keep=folder)
    return folder


def _describe(content: dict[str, Any], files: _Files, rdf_name: str, src: Path) -> Any:
    """The zoo's description of the (checked) content, validated by bioimageio.spec with its I/O checks off: it
    neither downloads nor reads the package's files."""
    try:
        from bioimageio.spec import InvalidDescr, ValidationContext, build_description
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ZooError("reading a BioImage Model Zoo package needs bioimageio.spec: pip install bioimageio.core") \
            from None
    root: Any = files.zip if files.zip is not None else src.parent
    try:
        ctx = ValidationContext(root=root, file_name=rdf_name, perform_io_checks=False)
        descr = build_description(content, context=ctx, format_version="latest")
    except Exception as exc:  # bioimageio.spec's words, first lines
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise ZooError(f"{src}: not a valid zoo model package ({'; '.join(lines[:2])[:300]})") from None
    if isinstance(descr, InvalidDescr) or getattr(descr, "type", None) != "model":
        errors = list(getattr(descr.validation_summary, "errors", []))
        first = (f"{'.'.join(map(str, errors[0].loc))}: {errors[0].msg}" if errors else
                 f"a {getattr(descr, 'type', '?')} description, not a model")
        raise ZooError(f"{src}: not a valid zoo model package ({' '.join(first.split())})")
    return descr


def unpack_torchscript(card: ModelCard) -> Path:
    """A zoo package's TorchScript file in its folder, unpacked now (within the budgets, checked against the
    description's sha256): called by the TorchScript engine once it may run it (this install wrote it, or
    ``--trust-code``). The package must still be where it was loaded from, unchanged."""
    folder = card.run_dir
    meta = _meta(folder)
    art = card.artifacts.get("torchscript")
    if meta is None or art is None or not meta.get("torchscript"):
        raise ZooError(f"{folder}: not a zoo package with TorchScript weights")
    target = folder / art.path
    if target.exists() and art.sha256 and file_digest(target) == art.sha256:
        return target
    src = Path(meta["package"])
    member = meta["torchscript"]["member"]
    with spec_files_closed():
        message = None
        try:
            if not src.exists():
                raise ZooError(f"{src}: the package is no longer there: its TorchScript weights are unpacked when "
                               "they are to run; load it again")
            files = _Files(src)
            try:
                rdf = files.read(files.rdf_name(), "rdf", MAX_RDF_BYTES) if files.zip is None else b""
                digest = files.digest(rdf, list(meta.get("digest_files") or []))
                if digest != meta["sha256"]:
                    raise ZooError(f"{src}: changed since it was unpacked into {folder}; load it again")
                budget = max_bytes()
                size = files.size(member, "weights.torchscript.source")
                if size > budget:
                    raise ZooError(f"{src}: {member} is {_mb(size)}: more than the budget of {_mb(budget)} "
                                   "($N2N_ZOO_MAX_BYTES)")
                _room(folder, size, str(src))
                part = target.with_name(f"{target.name}.part-{os.getpid()}")
                try:
                    got = _copy(files.open(member, "weights.torchscript.source"), part, budget, art.sha256 or None,
                                f"{src}: {member}")
                    part.replace(target)
                finally:
                    part.unlink(missing_ok=True)
            finally:
                files.close()
        except ZooError as exc:
            message = str(exc)
    if message is not None:
        raise ZooError(message)
    if not art.sha256:  # the description gave none: the card records the file's own
        card.artifacts = {**card.artifacts, "torchscript": art.model_copy(update={"sha256": got})}
        card.save(folder)
    with contextlib.suppress(OSError):
        os.utime(folder)
    return target
