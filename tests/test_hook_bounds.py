"""The pycromanager hook's metadata stays bounded while the server is down (a reason and a count, not a reason
wrapped again per frame), and ``keep_raw`` saves a raw image exactly or not at all: refused, counted, and never
reported as saved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamer.micromanager import denoise_hook
from streamer.micromanager.hook import MAX_REASON, lossless_problem
from streamer.sources import read_frame_metadata, read_stack

DOWN = "tcp://127.0.0.1:47991"  # nothing listens here


def test_the_error_metadata_is_a_reason_and_a_count_however_long_the_server_is_down() -> None:
    frame = np.zeros((16, 16), np.uint16)
    with denoise_hook(DOWN, timeout_s=0.1) as hook:
        metas = [hook(frame, {"ImageNumber": str(i)})[1] for i in range(500)]

    sizes = {len(json.dumps(m)) for m in metas[1:]}
    assert hook.errors == 500 and hook.skipped >= 400
    assert max(len(m["n2n-error"]) for m in metas) <= MAX_REASON + len("server unavailable: ")
    assert [m["n2n-errors"] for m in metas] == list(range(1, 501))
    assert metas[-1]["n2n-error"].startswith("server unavailable: no reply")
    assert metas[-1]["n2n-error"].count("server unavailable") == 1
    assert max(sizes) - min(sizes) <= 4, "the metadata must not grow with the frames skipped"


@pytest.mark.parametrize(("image", "why"), [
    (np.full((16, 16), -3, np.int8), "do not fit uint16"),
    (np.where(np.eye(16, dtype=bool), np.nan, 7.0).astype(np.float32), "NaN/infinite pixel(s)"),
    (np.full((16, 16), 2.5, np.float32), "fractions or precision lost"),
    (np.full((16, 16), 70000, np.int32), "do not fit uint16"),
])
def test_keep_raw_refuses_what_it_cannot_store_exactly(tmp_path: Path, image: np.ndarray, why: str) -> None:
    first = np.arange(256, dtype=np.uint16).reshape(16, 16)
    with denoise_hook(DOWN, timeout_s=0.1, keep_raw=tmp_path / "raw.ome.tif") as hook:
        _, saved = hook(first, {"ImageNumber": "0"})
        _, refused = hook(image, {"ImageNumber": "1"})
        _, exact = hook(np.full((16, 16), 9, np.int8), {"ImageNumber": "2"})  # another dtype, held exactly

    assert saved["n2n-raw-saved"] is True and exact["n2n-raw-saved"] is True
    assert refused["n2n-raw-saved"] is False and why in refused["n2n-raw-error"]
    assert hook.raw_refused == 1 and hook.raw_saved == 2 and hook.counts()["raw_refused"] == 1
    stored = read_stack(tmp_path / "raw.ome.tif")
    assert stored.dtype == np.uint16 and np.array_equal(stored, np.stack([first, np.full((16, 16), 9)]))
    assert [m["ImageNumber"] for m in read_frame_metadata(tmp_path / "raw.ome.tif")] == ["0", "2"]


def test_lossless_problem_lets_exact_values_through() -> None:
    assert lossless_problem(np.arange(10, dtype=np.uint8), np.dtype(np.uint16)) is None
    assert lossless_problem(np.arange(10, dtype=np.float64), np.dtype(np.uint16)) is None
    assert lossless_problem(np.array([np.nan], np.float64), np.dtype(np.float32)) is None
    assert lossless_problem(np.array([0.1], np.float64), np.dtype(np.float32)) is not None
    assert lossless_problem(np.zeros(3, np.complex64), np.dtype(np.uint16)) is not None
