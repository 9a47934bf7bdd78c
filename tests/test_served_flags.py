"""Never worse than raw, never silently: what the Denoiser's checks say of a frame (its ``last_flags``) reaches the
user. A real server on 127.0.0.1 sends it in the frame header's ``flags``, counts it in its stats
(``served_float_path``, ``served_raw``, ``served_flags``), the dashboard shows the counts, the pycromanager hook
marks the image's metadata, ``n2n bridge`` each plane's, and ``n2n denoise`` records the planes it wrote raw.

The Denoiser's own checks have their own tests; here a Denoiser subclass flags frames by a marker pixel, as the
contract of :mod:`streamer.denoiser` says (``last_flags``: one tuple per frame returned, in order; ``counts``),
so the paths after it are driven on purpose.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from rich.console import Console
from serverkit import camera_frames, config, stream_all
from waiting import wait_for

from streamer.client import StreamClient
from streamer.dashboard import History, render
from streamer.denoiser import FLAG_FLOAT_PATH, FLAG_RAW_OUTPUT, Denoiser, Timings, is_raw
from streamer.micromanager import denoise_hook
from streamer.server import running_server

RAW_MARK, FLOAT_MARK = 0, 1
"""A frame whose pixel (0, 0) is 0 comes back raw (flagged ``raw:output_range``); 1: ``float_path``."""


def marked(frame: np.ndarray, mark: int | None) -> np.ndarray:
    out = frame.copy()
    if mark is not None:
        out[0, 0] = mark
    return out


def expected_flags(frame: np.ndarray) -> tuple[str, ...]:
    mark = int(frame[0, 0])
    return (FLAG_RAW_OUTPUT,) if mark == RAW_MARK else (FLAG_FLOAT_PATH,) if mark == FLOAT_MARK else ()


class FlaggingDenoiser(Denoiser):
    """The real Denoiser, whose flags for a marked frame are the mark's: a ``raw:`` frame is returned raw."""

    def _mark(self, frames: Sequence[np.ndarray], outs: list[np.ndarray]) -> list[np.ndarray]:
        flags = [tuple(dict.fromkeys([*own, *expected_flags(f)]))
                 for f, own in zip(frames, self.last_flags or [()] * len(frames))]
        self.last_flags = flags
        for f in flags:
            self.counts.update(f)
        return [f.copy() if is_raw(fl) else o for f, o, fl in zip(frames, outs, flags)]

    def __call__(self, pixels: np.ndarray, timings: Timings | None = None,
                 previous: Sequence[np.ndarray] = ()) -> np.ndarray:
        return self._mark([pixels], [super().__call__(pixels, timings, previous)])[0]

    def batch(self, frames: list[np.ndarray], timings: Timings | None = None,
              previous: Sequence[Sequence[np.ndarray]] | None = None) -> list[np.ndarray]:
        return self._mark(frames, super().batch(frames, timings, previous))


@pytest.fixture(scope="module")
def run(trained_run: dict[str, Path]) -> Path:
    """The session's tiny trained run folder."""
    return trained_run["run"]


def flagging(run: Path) -> Denoiser:
    return FlaggingDenoiser.from_model_dir(run, precision="fp32", num_threads=1)


def plain(run: Path) -> Denoiser:
    return Denoiser.from_model_dir(run, precision="fp32", num_threads=1)


MARKS = [None, RAW_MARK, None, FLOAT_MARK, RAW_MARK, None, None, FLOAT_MARK, None, RAW_MARK, None, None]


def shown(renderable: Any) -> str:
    console = Console(record=True, width=80, height=24, force_terminal=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


# --- the server: header and stats ------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batched"])
def test_flags_go_out_in_the_header_and_are_counted(run: Path, batched: bool) -> None:
    """Each frame's header carries its own flags (none: no ``flags`` key), in order also when frames are
    denoised as one engine batch; a raw-flagged frame's pixels are the input's; the stats count frames per flag
    and the dashboard shows the counts on one line within 80 columns."""
    frames = [marked(f, m) for f, m in zip(camera_frames(len(MARKS), seed=31), MARKS)]
    cfg = config(mode="lossless", max_batch=4 if batched else 1, queue_size=8)

    with running_server(run, cfg, denoiser=flagging(run)) as server, StreamClient(server.endpoints) as client:
        results, status = stream_all(client, frames)

    assert [r.seq for r in results] == list(range(len(frames)))
    if batched:
        assert status["batched_frames"] > 0
    reference = plain(run)
    for frame, result in zip(frames, results):
        want = expected_flags(frame)
        assert tuple(result.header.get("flags", ())) == want, (result.seq, result.header)
        assert ("flags" in result.header) == bool(want)
        if is_raw(want):
            assert np.array_equal(result.pixels, frame)  # served raw, and said so
        else:
            assert np.array_equal(result.pixels, reference(frame))
    raw, floats = MARKS.count(RAW_MARK), MARKS.count(FLOAT_MARK)
    assert status["served_raw"] == raw and status["served_float_path"] == floats
    assert status["served_flags"] == {FLAG_RAW_OUTPUT: raw, FLAG_FLOAT_PATH: floats}
    assert status["frames_out"] == len(frames)

    text = shown(render(status, History(), "tcp://127.0.0.1:5558"))
    assert re.search(rf"checks\s+float path {floats} · raw \(output check\) {raw}", text), text
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80, text


def test_unflagged_frames_carry_no_flags(run: Path) -> None:
    """The real Denoiser on camera frames: nothing flagged, no ``flags`` in any header, the counters at zero, and
    the dashboard's checks line says so."""
    frames = camera_frames(6, seed=32)

    with running_server(run, config(mode="lossless")) as server, StreamClient(server.endpoints) as client:
        results, status = stream_all(client, list(frames))

    assert all("flags" not in r.header for r in results)
    assert status["served_raw"] == 0 and status["served_float_path"] == 0 and status["served_flags"] == {}
    assert re.search(r"checks\s+float path 0 · raw 0", shown(render(status, History(), "tcp://127.0.0.1:5558")))


def test_view_messages_carry_the_flags(run: Path) -> None:
    """A viewer's raw | denoised pair has the denoised frame's header, flags included."""
    import zmq

    from streamer.protocol import TOPIC_VIEW, decode_header

    frames = [marked(f, m) for f, m in zip(camera_frames(3, seed=33), [None, RAW_MARK, FLOAT_MARK])]
    with running_server(run, config(mode="lossless"), denoiser=flagging(run)) as server, \
            StreamClient(server.endpoints) as client:
        view: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        view.setsockopt(zmq.SUBSCRIBE, TOPIC_VIEW)
        view.connect(server.endpoints["view"])
        try:
            wait_for(lambda: server.peers.viewers > 0, "the viewer to subscribe")
            client.wait_subscribed()
            results, heads = [], []
            for i, frame in enumerate(frames):  # one at a time: the view socket drops what a viewer has not read
                client.send(frame, seq=i)
                results.append(client.receive())
                assert view.poll(30_000), "no view message"
                heads.append(decode_header(view.recv_multipart()[1]))
        finally:
            view.close(linger=0)
    assert [tuple(h.get("flags", ())) for h in heads] == [(), (FLAG_RAW_OUTPUT,), (FLAG_FLOAT_PATH,)]
    assert [tuple(r.header.get("flags", ())) for r in results] == [(), (FLAG_RAW_OUTPUT,), (FLAG_FLOAT_PATH,)]


# --- the pycromanager hook ---------------------------------------------------------------------------------
def test_hook_marks_raw_and_float_path_images(run: Path) -> None:
    """Through the request/reply path: an image the server kept raw gets ``n2n-denoised: false`` and
    ``n2n-flag``; one denoised by the float32 model ``n2n-precision-fallback: true``; counted apart from errors."""
    frames = [marked(f, m) for f, m in zip(camera_frames(3, seed=34), [None, RAW_MARK, FLOAT_MARK])]

    with running_server(run, config(mode="lossless"), denoiser=flagging(run)) as server:
        with denoise_hook(server.endpoints, timeout_s=30) as hook:
            outs = [hook(f[None], {"ImageNumber": str(i)}) for i, f in enumerate(frames)]

    (ok, ok_meta), (raw, raw_meta), (fl, fl_meta) = outs
    assert ok_meta["n2n-denoised"] is True and "n2n-flag" not in ok_meta and "n2n-flags" not in ok_meta
    assert "n2n-precision-fallback" not in ok_meta
    assert raw_meta["n2n-denoised"] is False and raw_meta["n2n-flag"] == FLAG_RAW_OUTPUT
    assert raw_meta["n2n-flags"] == [FLAG_RAW_OUTPUT] and "n2n-error" not in raw_meta
    assert np.array_equal(raw[0], frames[1])
    assert fl_meta["n2n-denoised"] is True and fl_meta["n2n-precision-fallback"] is True
    assert fl_meta["n2n-flags"] == [FLAG_FLOAT_PATH]
    assert hook.served_raw == 1 and hook.float_path == 1 and hook.denoised == 2 and hook.errors == 0
    assert ok.shape == fl.shape == (1, *frames[0].shape)


# --- n2n bridge -----------------------------------------------------------------------------------------------
class ListSource:
    """What run_bridge reads of a Micro-Manager source, from a list of frames."""

    def __init__(self, frames: Sequence[np.ndarray]) -> None:
        self.frames = list(frames)
        self.shape, self.dtype, self.missed = self.frames[0].shape, self.frames[0].dtype, 0

    def read(self) -> Any:
        import time

        from streamer.sources import EndOfStream, Frame

        if not self.frames:
            raise EndOfStream("no more frames")
        i = len(MARKS) - len(self.frames)
        return Frame(self.frames.pop(0), i, time.time_ns(), {"ImageNumber": i})


def test_bridge_records_flags_per_plane(run: Path, tmp_path: Path) -> None:
    """``n2n bridge`` writes each plane's ``n2n-denoised`` (false for a frame the server kept raw) and
    ``n2n-flags`` into the OME-TIFF, and counts kept-raw and float-path frames apart from denoised ones."""
    import tifffile

    from streamer.micromanager.bridge import run_bridge
    from streamer.sources import read_frame_metadata

    frames = [marked(f, m) for f, m in zip(camera_frames(len(MARKS), seed=36), MARKS)]
    out = tmp_path / "bridge.ome.tif"
    with running_server(run, config(mode="lossless"), denoiser=flagging(run)) as server:
        report = run_bridge(ListSource(frames), server.endpoints, frames=len(frames), out=out)  # type: ignore[arg-type]

    raw, floats = MARKS.count(RAW_MARK), MARKS.count(FLOAT_MARK)
    assert report.frames_seen == len(frames) and report.frames_unaccounted == 0
    assert report.frames_kept_raw == raw and report.frames_denoised == len(frames) - raw
    assert report.frames_float_path == floats
    meta = read_frame_metadata(out)
    assert [m["n2n-denoised"] for m in meta] == [m != RAW_MARK for m in MARKS]
    assert [tuple(m.get("n2n-flags", ())) for m in meta] == [expected_flags(f) for f in frames]
    saved = tifffile.imread(out)
    assert all(np.array_equal(saved[i, 1], frames[i]) for i, m in enumerate(MARKS) if m == RAW_MARK)


# --- n2n denoise ---------------------------------------------------------------------------------------------
def test_denoise_records_planes_kept_raw(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``n2n denoise`` into OME-Zarr: the planes written raw are counted in the summary, listed by flag there and
    in the output's ``n2n-live.flagged_planes``; their pixels are the input's."""
    import tifffile

    from streamer.offline import denoise, task
    from streamer.offline import run as offline_run
    from streamer.offline.config import DenoiseConfig

    planes = camera_frames(8, seed=35)
    marks = [None, RAW_MARK, None, FLOAT_MARK, None, RAW_MARK, None, None]
    planes = np.stack([marked(p, m) for p, m in zip(planes, marks)])
    source = tmp_path / "in.ome.tif"
    tifffile.imwrite(source, planes, ome=True, metadata={"axes": "TYX"})

    def make(model: str, engine: str, precision: str, device: str, threads: int | None,
             output_dtype: str, **_: Any) -> Denoiser:
        return FlaggingDenoiser.from_model_dir(model, engine=engine, precision=precision, device=device,
                                               num_threads=threads, output_dtype=output_dtype)

    monkeypatch.setattr(task, "make_denoiser", make)
    monkeypatch.setattr(offline_run, "make_denoiser", make)
    out = tmp_path / "out.ome.zarr"
    summary = denoise(source, run, out, DenoiseConfig(precision="fp32", threads=1, chunk_mib=0.01))

    assert summary["planes_kept_raw"] == 2 and summary["planes_float_path"] == 1
    assert summary["flagged_planes"] == {FLAG_RAW_OUTPUT: [1, 5], FLAG_FLOAT_PATH: [3]}
    ours: Any = zarr.open_group(out, mode="r").attrs["n2n-live"]
    assert ours["flagged_planes"] == {FLAG_RAW_OUTPUT: [1, 5], FLAG_FLOAT_PATH: [3]}
    from streamer.datasets import open_dataset

    reader = open_dataset(out)
    try:
        written = reader.read(0, reader.info.planes)
    finally:
        reader.close()
    assert np.array_equal(written[1], planes[1]) and np.array_equal(written[5], planes[5])
    assert not np.array_equal(written[0], planes[0])
