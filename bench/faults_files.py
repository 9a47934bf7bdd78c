"""Faults of files, disks, the hook and the client (issue 31, items 9-11), re-made as the audit made them and run
through the real commands: ``run_file_faults(model, workdir)`` returns what each case did.

* ``n2n denoise`` on a 20-plane OME-TIFF cut short (its OME-XML, written last, is lost with the tail), on one whose
  OME-XML lists 20 planes but whose page chain holds 1, and on a zlib-compressed TIFF cut in half;
* ``n2n train`` on a float64 and on an int8 stack, and on a full disk (a 1 MiB tmpfs where ``mount`` works here,
  else RLIMIT_FSIZE, whose EFBIG the trainer treats as ENOSPC);
* the pycromanager hook with the server down for 3,000 frames (metadata bytes per frame), and ``keep_raw`` of
  int8 and NaN float images into a uint16 file;
* :class:`StreamClient` with a CURVE key the server does not know: ``status()`` twice and ``control()``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = ["damaged_recordings", "limited_command", "run_file_faults"]

_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of a kill
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
from n2n.cli import main
sys.argv = ["n2n", *sys.argv[2:]]
main()
"""


def limited_command(max_file_bytes: int, *args: str) -> list[str]:
    """``n2n ARGS`` in a process whose files cannot grow past ``max_file_bytes`` (RLIMIT_FSIZE: a write past it
    fails with EFBIG, as a full disk fails with ENOSPC)."""
    return [sys.executable, "-c", _LIMITED, str(max_file_bytes), *args]


def _n2n(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "n2n", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in _lines(proc.stdout + proc.stderr) if line.startswith("error:")]


def _frames(n: int, dtype: str = "uint16", size: int = 64) -> np.ndarray:
    from streamer.sources import SimulatedCameraConfig, simulate_stack

    raw = simulate_stack(SimulatedCameraConfig(height=size, width=size, exposure_ms=10.0, seed=3), n)[0]
    return raw.astype(dtype) if dtype != "uint16" else raw


# --- n2n denoise on damaged recordings -----------------------------------------------------------------------

def _cut_chain(path: Path, out: Path) -> None:
    """A copy of an OME-TIFF whose first page ends the page chain (its OME-XML still lists every plane)."""
    import tifffile

    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        first, tiff = tif.pages.first, tif.tiff
        count = struct.unpack_from(tiff.tagnoformat, data, first.offset)[0]
        where = first.offset + tiff.tagnosize + count * tiff.tagsize
        data[where:where + tiff.offsetsize] = bytes(tiff.offsetsize)
    out.write_bytes(bytes(data))


def _denoise_case(model: Path, workdir: Path, name: str, source: Path) -> dict[str, Any]:
    import tifffile

    output = workdir / f"{name}_denoised.ome.tif"
    summary = workdir / f"{name}.json"
    proc = _n2n("denoise", source, "--model", model, "--out", output, "--json", summary)
    report = json.loads(summary.read_text()) if summary.is_file() else {}
    written = 0
    if output.is_file():
        planes = tifffile.imread(output)
        planes = planes.reshape(-1, *planes.shape[-2:])
        written = int(sum(1 for p in planes if p.any()))
    errors = _error_lines(proc)
    return {"exit_code": proc.returncode, "planes_declared": report.get("planes"), "planes_written": written,
            "planes_named_missing": report.get("planes_unreadable"), "input_damage": report.get("input_damage"),
            "error_lines": len(errors), "error": errors[0] if errors else None,
            "stderr_lines": len(_lines(proc.stderr)), "traceback": "Traceback" in proc.stdout + proc.stderr}


def _denoise_cases(model: Path, workdir: Path) -> dict[str, Any]:

    from streamer.core.card import ModelCard

    dtype = ModelCard.load(model).input_dtype or "uint16"
    made = damaged_recordings(_frames(20, str(dtype)), workdir)
    return {"truncated_ome_tiff": _denoise_case(model, workdir, "truncated_ome", made["cut"]),
            "ome_xml_20_pages_1": _denoise_case(model, workdir, "chain_of_one", made["chain"]),
            "truncated_compressed_tiff": _denoise_case(model, workdir, "truncated_zlib", made["cut_zlib"])}


def damaged_recordings(stack: np.ndarray, folder: Path) -> dict[str, Path]:
    """The audit's damaged recordings of ``stack`` in ``folder``: ``full`` (the OME-TIFF whole), ``cut`` (its first
    half: the OME-XML, written last, lost with the tail), ``chain`` (its OME-XML listing every plane, its chain of
    pages holding one) and ``cut_zlib`` (a zlib-compressed TIFF cut in half)."""
    import tifffile

    full = folder / "full.ome.tif"
    tifffile.imwrite(full, stack, ome=True, metadata={"axes": "TYX"})
    cut = folder / "truncated.ome.tif"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    chain = folder / "chain_of_one.ome.tif"
    _cut_chain(full, chain)
    zipped = folder / "full_zlib.tif"
    tifffile.imwrite(zipped, stack, compression="zlib")
    cut_zip = folder / "truncated_zlib.tif"
    cut_zip.write_bytes(zipped.read_bytes()[: zipped.stat().st_size // 2])
    return {"full": full, "cut": cut, "chain": chain, "cut_zlib": cut_zip}


# --- n2n train: refused pixel types, a full disk ------------------------------------------------------------

_TINY = {"version": 1, "mode": "n2n", "model": {"depth": 1, "base_filters": 8, "residual": True},
         "data": {"patch_size": 32, "val_pairs": 2},
         "optim": {"batch_size": 4, "epochs": 1, "steps_per_epoch": 3, "warmup_steps": 1, "precision": "fp32",
                   "device": "cpu", "num_threads": 1, "seed": 0},
         "quantize": {"int8": False}}


def _train_config(workdir: Path, epochs: int = 1) -> Path:
    path = workdir / f"tiny_train_{epochs}.yaml"
    cfg = json.loads(json.dumps(_TINY))
    cfg["optim"]["epochs"] = epochs
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_dtype(workdir: Path, dtype: str) -> dict[str, Any]:
    import tifffile

    frames = _frames(6).astype(np.float64)
    stack = workdir / f"stack_{dtype}.tif"
    tifffile.imwrite(stack, (frames - 300).astype(dtype) if dtype == "int8" else frames.astype(dtype))
    proc = _n2n("train", "--config", _train_config(workdir), "--data", stack, "--out", workdir / f"run_{dtype}")
    lines = _lines(proc.stdout + proc.stderr)
    return {"exit_code": proc.returncode, "lines": len(lines), "one_line": len(lines) == 1,
            "message": lines[0] if lines else None, "traceback": "Traceback" in proc.stdout + proc.stderr}


def _mounted_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _train_full_disk(workdir: Path) -> dict[str, Any]:
    """Epoch 1 saved with room to spare; then a resume to 2 epochs with no room for the second checkpoint."""
    import tifffile

    stack = workdir / "stack_uint16.tif"
    tifffile.imwrite(stack, _frames(6))
    disk = workdir / "small_disk"
    tmpfs = _mounted_tmpfs(disk, "4m")
    run_dir = disk / "run"
    try:
        first = _n2n("train", "--config", _train_config(workdir), "--data", stack, "--out", run_dir)
        checkpoint = run_dir / "checkpoint.pt"
        before = _digest(checkpoint)
        args = ["train", "--resume", "--config", str(_train_config(workdir, 2)), "--data", str(stack), "--out",
                str(run_dir)]
        if tmpfs:  # fill the disk but for less than a checkpoint
            free = shutil.disk_usage(disk).free
            room = max(0, free - checkpoint.stat().st_size // 2)
            with open(disk / "filler.bin", "wb") as filler:
                filler.write(b"\0" * room)
            proc = subprocess.run([sys.executable, "-m", "n2n", *args], capture_output=True, text=True, timeout=600)
            how = "tmpfs of 4 MiB (mount), filled to within half a checkpoint: ENOSPC"
        else:
            proc = subprocess.run(limited_command(checkpoint.stat().st_size // 2, *args), capture_output=True,
                                  text=True, timeout=600)
            how = "RLIMIT_FSIZE of half a checkpoint (SIGXFSZ ignored): EFBIG, treated as ENOSPC"
        lines = _lines(proc.stdout + proc.stderr)
        errors = [line for line in lines if line.startswith("error:")]
        return {"simulated_by": how, "first_run_exit_code": first.returncode, "exit_code": proc.returncode,
                "error_lines": len(errors), "message": errors[0] if errors else (lines[-1] if lines else None),
                "says_no_space": any("no space left" in line for line in errors),
                "tmp_left": sorted(p.name for p in run_dir.glob("*.tmp")),
                "checkpoint_intact": before is not None and _digest(checkpoint) == before,
                "traceback": "Traceback" in proc.stdout + proc.stderr,
                "inline_container": "inline_container" in proc.stdout + proc.stderr}
    finally:
        if tmpfs:
            subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)


# --- the hook -----------------------------------------------------------------------------------------------

def _hook_server_down(frames: int = 3000) -> dict[str, Any]:
    from streamer.micromanager import denoise_hook

    image = np.zeros((64, 64), np.uint16)
    sizes = []
    with denoise_hook("tcp://127.0.0.1:47997", timeout_s=0.2) as hook:
        for i in range(frames):
            _, meta = hook(image, {"ImageNumber": str(i)})
            sizes.append(len(json.dumps({k: v for k, v in meta.items() if k.startswith("n2n-")})))
    return {"frames": frames, "errors": hook.errors, "skipped": hook.skipped,
            "n2n_metadata_bytes_max": max(sizes), "n2n_metadata_bytes_first": sizes[0],
            "n2n_metadata_bytes_total": sum(sizes)}


def _hook_keep_raw(workdir: Path) -> dict[str, Any]:
    from streamer.micromanager import denoise_hook
    from streamer.sources import read_stack

    path = workdir / "kept_raw.ome.tif"
    first = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    nan = np.full((64, 64), 100.0, np.float32)
    nan[0, 0] = np.nan
    metas = []
    with denoise_hook("tcp://127.0.0.1:47997", timeout_s=0.2, keep_raw=path) as hook:
        for image in (first, np.full((64, 64), -5, np.int8), nan, first + 1):
            metas.append(hook(image, {})[1])
    stored = read_stack(path)
    return {"images": 4, "file_dtype": str(stored.dtype), "saved": hook.raw_saved, "refused": hook.raw_refused,
            "frames_in_file": int(stored.shape[0]),
            "reported_saved": sum(m.get("n2n-raw-saved") is True for m in metas),
            "reasons": [m.get("n2n-raw-error") for m in metas if m.get("n2n-raw-saved") is False]}


# --- StreamClient with an unknown CURVE key -----------------------------------------------------------------

def _client_unknown_key(model: Path, workdir: Path, timeout_s: float = 1.0) -> dict[str, Any]:
    import zmq.auth

    from streamer.client import StreamClient
    from streamer.endpoints import Endpoints
    from streamer.security import ClientKeys, make_keys
    from streamer.server import ServeConfig, running_server

    keys = workdir / "keys"
    make_keys(keys)
    zmq.auth.create_certificates(keys, "stranger")
    config = ServeConfig.model_validate({"num_threads": 1, "precision": "fp32", "endpoints": Endpoints.local(),
                                         "curve_keys": str(keys)})
    calls: list[dict[str, Any]] = []
    with running_server(model, config) as server, \
            StreamClient(server.endpoints, timeout=timeout_s, keys=ClientKeys.load(keys, "stranger")) as client:
        for name, call in (("status", client.status), ("status again", client.status),
                           ("control", lambda: client.control("status"))):
            outcome: dict[str, Any] = {}

            def target(call: Any = call, outcome: dict[str, Any] = outcome) -> None:
                try:
                    call()
                    outcome["error"] = None
                except Exception as exc:
                    outcome["error"] = f"{type(exc).__name__}: {exc}"

            t0 = time.perf_counter()
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            thread.join(10 * timeout_s + 5)
            calls.append({"call": name, "returned": not thread.is_alive(),
                          "seconds": round(time.perf_counter() - t0, 3), **outcome})
    return {"timeout_s": timeout_s, "calls": calls}


def run_file_faults(model: Path, workdir: Path) -> dict[str, Any]:
    """Every case above; ``model`` a run folder made by ``n2n train``, ``workdir`` an empty folder to write in."""
    model, workdir = Path(model), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return {"denoise": _denoise_cases(model, workdir),
            "train_float64": _train_dtype(workdir, "float64"), "train_int8": _train_dtype(workdir, "int8"),
            "train_full_disk": _train_full_disk(workdir),
            "hook_server_down": _hook_server_down(), "hook_keep_raw": _hook_keep_raw(workdir),
            "client_unknown_curve_key": _client_unknown_key(model, workdir)}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(run_file_faults(args.model, args.workdir), indent=2))
