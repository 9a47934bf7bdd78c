"""Hostile BioImage Model Zoo packages (issue 31: a downloaded model is data, not a program), each rebuilt from a
real package of the model and given to a real ``n2n denoise --model PKG.zip`` process, as the audit sent them:

- ``torchscript_program``: TorchScript weights only, a scripted module whose forward writes 16 bytes into a file
  (``torch.from_file(..., shared=True)``, the audit's write), asked for with ``--engine torch`` (no --trust-code);
- ``torchscript_only_auto``: the same package with ``--engine auto``;
- ``alias_bomb``: an rdf.yaml whose aliases name ~10⁹ nodes (a zip of ~3.5 MB with padding);
- ``zip_bomb``: ~1.5 GB of zeros as weights in a zip of ~4.6 MB;
- ``absolute_path`` / ``url``: ONNX weights named by an absolute path outside the package / an http URL (a local
  listener counts whether anything connects);
- ``invalid_yaml``, ``missing_file``: a broken rdf.yaml, weights named but not in the zip.

For each: refused (exit status not 0, one ``error:`` line), the line, seconds, the process's peak RSS (wait4),
bytes written in its cache, files written outside the cache, whether the marker file changed, whether the
network was reached. ``run_package_faults(model, workdir)``; bench/faults.py calls it."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench.processes import peak_mb

__all__ = ["run_package_faults"]

MARKER = b"\0" * 16


class Writes(torch.nn.Module):
    """Were it run: overwrites the first 16 bytes of the file ``path`` (a memory map shared with the file)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8)
        t.fill_(65)
        return x + t.sum().to(x.dtype) * 0


def _evil_torchscript(marker: Path) -> bytes:
    """A scripted :class:`Writes` on ``marker``, as bytes (never registered as written by this install)."""
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Writes(str(marker))), buf)
    return buf.getvalue()


def _rebuild(base: Path, out: Path, edit: Any = None, replace: dict[str, bytes] | None = None,
             drop: tuple[str, ...] = (), rdf_text: bytes | None = None, pad: int = 0) -> Path:
    """``base`` with its rdf edited (``edit(dict)``) or replaced, members replaced or dropped, and ``pad`` random
    bytes attached."""
    replace = replace or {}
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        rdf = yaml.safe_load(src.read("rdf.yaml"))
        for name in src.namelist():
            if name in drop or name == "rdf.yaml" or name in replace:
                continue
            dst.writestr(name, src.read(name))
        for name, data in replace.items():
            dst.writestr(name, data)
        if edit is not None:
            edit(rdf)
        dst.writestr("rdf.yaml", rdf_text if rdf_text is not None else yaml.safe_dump(rdf, sort_keys=False))
        if pad:
            dst.writestr("padding.bin", np.random.default_rng(0).bytes(pad), zipfile.ZIP_STORED)
    return out


def _zip_bomb(base: Path, out: Path, zeros: int, pad: int) -> Path:
    """``base`` whose TorchScript weights are ``zeros`` bytes of zeros (streamed: never held in memory)."""
    def edit(d: dict) -> None:
        d["weights"]["torchscript"]["sha256"] = hashlib.sha256(b"").hexdigest()

    _rebuild(base, out, edit, drop=("model.ts",), pad=pad)
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        block = bytes(1 << 24)
        info = zipfile.ZipInfo("model.ts")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            left = zeros
            while left > 0:
                f.write(block[:min(left, len(block))])
                left -= len(block)
    return out


def _alias_bomb(levels: int = 9) -> bytes:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return ("\n".join(lines) + "\n").encode()


class _Listener:
    """A local TCP port that counts connections (a weights URL pointing here shows whether loading reached out)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _files(root: Path, skip: tuple[Path, ...]) -> dict[str, int]:
    out = {}
    for f in root.rglob("*"):
        if f.is_file() and not any(s == f or s in f.parents for s in skip):
            out[str(f.relative_to(root))] = f.stat().st_mtime_ns
    return out


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def _n2n() -> list[str]:
    return [sys.executable, "-m", "n2n"]


def _run(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, float, float]:
    """Exit status, output, seconds and peak RSS (MB) of one process: its VmHWM read every 10 ms while it runs
    (wait4's ru_maxrss would not do: on Linux a child starts with its parent's peak, this benchmark's own)."""
    t0 = time.perf_counter()
    with open(os.devnull, "rb") as null, subprocess.Popen(args, stdin=null, stdout=subprocess.PIPE,
                                                          stderr=subprocess.STDOUT, env=env) as p:
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(p.stdout.read() if p.stdout else b""), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        peak = 0.0
        while True:
            peak = max(peak, peak_mb(p.pid) or 0.0)
            pid, status, _ = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                pid, status, _ = os.wait4(p.pid, 0)
                break
            time.sleep(0.01)
        p.returncode = os.waitstatus_to_exitcode(status)
        reader.join(5)
    return p.returncode, (out[0] if out else b"").decode(errors="replace"), time.perf_counter() - t0, peak


def run_package_faults(model: Path, workdir: Path, zip_bomb_bytes: int = 1_500_000_000,
                       alias_pad_bytes: int = 3_400_000, bomb_pad_bytes: int = 3_000_000,
                       timeout_s: float = 300.0) -> dict[str, Any]:
    """Each hostile package of issue 31 against ``n2n denoise --model PKG.zip``; ``model``: a run folder (its
    package is exported here) or a package (.zip). Returns ``{"cases": {name: {...}}, "all_refused": bool}``."""
    import tifffile

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    base = Path(model)
    if base.suffix != ".zip":
        base = workdir / "base.zip"
        done = subprocess.run([*_n2n(), "export", "--model", str(model), "--format", "bioimageio", "--out",
                               str(base)], capture_output=True, text=True, env=env, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"n2n export --format bioimageio failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    rdf = yaml.safe_load(zipfile.ZipFile(base).read("rdf.yaml"))
    marker = workdir / "marker.bin"
    marker.write_bytes(MARKER)
    outside = workdir / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "model.onnx").write_bytes(zipfile.ZipFile(base).read(rdf["weights"]["onnx"]["source"]))
    frames = workdir / "frames.ome.tif"
    rng = np.random.default_rng(1)
    tifffile.imwrite(frames, rng.integers(90, 200, (2, 64, 64), dtype=np.uint16), ome=True,
                     metadata={"axes": "TYX"})
    listener = _Listener()
    evil = _evil_torchscript(marker)
    pk = workdir / "packages"
    pk.mkdir(exist_ok=True)

    def ts_only(d: dict) -> None:
        d["weights"].pop("onnx")
        d["weights"]["torchscript"].pop("parent", None)
        d["weights"]["torchscript"]["sha256"] = hashlib.sha256(evil).hexdigest()

    def absolute(d: dict) -> None:
        d["weights"]["onnx"]["source"] = str(outside / "model.onnx")

    def url(d: dict) -> None:
        d["weights"]["onnx"]["source"] = f"http://127.0.0.1:{listener.port}/model.onnx"

    text = zipfile.ZipFile(base).read("rdf.yaml").decode().splitlines()
    broken = "\n".join([*text[:20], "inputs: [unclosed, {", *text[20:]]).encode()
    try:
        t0 = time.perf_counter()
        packages = {
            "torchscript_program": (_rebuild(base, pk / "torchscript.zip", ts_only, {"model.ts": evil},
                                             drop=("model.onnx",)), ["--engine", "torch"]),
            "torchscript_only_auto": (pk / "torchscript.zip", ["--engine", "auto"]),
            "alias_bomb": (_rebuild(base, pk / "alias_bomb.zip", rdf_text=zipfile.ZipFile(base).read("rdf.yaml")
                                    + b"\n" + _alias_bomb(), pad=alias_pad_bytes), []),
            "zip_bomb": (_zip_bomb(base, pk / "zip_bomb.zip", zip_bomb_bytes, bomb_pad_bytes), []),
            "absolute_path": (_rebuild(base, pk / "absolute.zip", absolute, drop=("model.onnx",)), []),
            "url": (_rebuild(base, pk / "url.zip", url, drop=("model.onnx",)), []),
            "invalid_yaml": (_rebuild(base, pk / "invalid_yaml.zip", rdf_text=broken), []),
            "missing_file": (_rebuild(base, pk / "missing.zip", drop=("model.onnx",)), []),
        }
        built_s = time.perf_counter() - t0
        cases = {}
        for name, (package, extra) in packages.items():
            cache = workdir / f"cache-{name}"
            shutil.rmtree(cache, ignore_errors=True)
            out = workdir / f"out-{name}.ome.tif"
            before = _files(workdir, (cache, out))
            run_env = {**env, "N2N_CACHE_DIR": str(cache)}
            connections = listener.connections
            code, output, seconds, peak = _run([*_n2n(), "denoise", str(frames), "--model", str(package), "--out",
                                                str(out), *extra], run_env, timeout_s)
            after = _files(workdir, (cache, out))
            errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
            cases[name] = {
                "package_mb": round(package.stat().st_size / 2**20, 2),
                "refused": code != 0 and len(errors) == 1 and "Traceback" not in output,
                "exit_status": code,
                "message": errors[0] if errors else output.strip().splitlines()[-1:] or "",
                "output_lines": len(output.strip().splitlines()),
                "seconds": round(seconds, 3),
                "peak_rss_mb": round(peak, 1),
                "cache_bytes": _bytes(cache),
                "files_written_outside_cache": sorted(k for k in after if before.get(k) != after[k]),
                "marker_touched": marker.read_bytes() != MARKER,
                "network_reached": listener.connections > connections,
                "output_written": out.exists(),
            }
    finally:
        listener.close()
    return {"cases": cases, "build_s": round(built_s, 2),
            "all_refused": all(c["refused"] and not c["marker_touched"] and not c["network_reached"]
                               and not c["files_written_outside_cache"] and not c["output_written"]
                               for c in cases.values())}


if __name__ == "__main__":  # python -m bench.faults_packages RUN_OR_PACKAGE WORKDIR
    import json

    print(json.dumps(run_package_faults(Path(sys.argv[1]), Path(sys.argv[2])), indent=2))
