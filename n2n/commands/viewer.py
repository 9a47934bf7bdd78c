"""``n2n view``: raw and denoised frames of a running server, side by side in napari (the ``viewer`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from n2n.command import Command, console
from n2n.errors import UserError, user_errors
from streamer.endpoints import Endpoints

__all__ = ["INSTALL_HINT", "QT_XCB_LIBRARIES", "VIEW", "missing_qt_libraries", "require_viewer", "view"]

INSTALL_HINT = ("n2n view needs napari and Qt: in your n2n-live checkout, with its environment active, "
                "pip install -e '.[viewer]'")

QT_XCB_LIBRARIES = {
    "xcb-cursor": "libxcb-cursor0", "xcb-icccm": "libxcb-icccm4", "xcb-image": "libxcb-image0",
    "xcb-keysyms": "libxcb-keysyms1", "xcb-randr": "libxcb-randr0", "xcb-render-util": "libxcb-render-util0",
    "xcb-shape": "libxcb-shape0", "xcb-xfixes": "libxcb-xfixes0", "xcb-xinerama": "libxcb-xinerama0",
    "xkbcommon-x11": "libxkbcommon-x11-0", "EGL": "libegl1", "GL": "libgl1", "fontconfig": "libfontconfig1",
    "dbus-1": "libdbus-1-3"}
"""The system libraries Qt 6's xcb platform loads on Linux (by their ``ld`` name), with the Debian/Ubuntu package of
each: without one, Qt aborts the process inside its plugin loader instead of raising."""

_DEFAULT = Endpoints()
VIEW = Command(defaults={"--connect": "none: the default addresses", "--snapshot": "none: a window until closed",
                         "--curve-keys": "none: loopback only", "--view-address": f"{_DEFAULT.view} (or the "
                         "ready file's)", "--stats-address": f"{_DEFAULT.stats} (or the ready file's)",
                         "--json": "not written"})


def require_viewer() -> None:
    """napari, a Qt binding and a display, or a one-line error saying what to install or run."""
    try:
        import napari  # noqa: F401
        import qtpy.QtWidgets  # noqa: F401  (raises without a Qt binding)
    except Exception:  # ImportError, or qtpy's error for no Qt binding
        raise UserError(INSTALL_HINT) from None
    from streamer.napari_plugin._app import have_display

    if not have_display():
        raise UserError("n2n view needs a display: run it on the desktop, or under a virtual one "
                        "(xvfb-run -a n2n view ...; Debian/Ubuntu: apt install xvfb)")
    missing = missing_qt_libraries()
    if missing:
        raise UserError(f"n2n view: Qt's X11 platform needs system libraries that are missing here; Debian/Ubuntu: "
                        f"sudo apt install {' '.join(missing)}")


def missing_qt_libraries(libraries: dict[str, str] | None = None) -> list[str]:
    """The Debian packages of the Qt xcb libraries (:data:`QT_XCB_LIBRARIES`) the dynamic loader cannot find; none
    off Linux, or where Qt will not use xcb (``QT_QPA_PLATFORM`` another platform, or Wayland without X)."""
    import ctypes.util
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return []
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform and not platform.startswith("xcb"):
        return []
    if not platform and os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("DISPLAY"):
        return []
    return [deb for lib, deb in (libraries or QT_XCB_LIBRARIES).items() if ctypes.util.find_library(lib) is None]


def _endpoints(connect: Path | None, view_address: str | None, stats_address: str | None) -> dict[str, str]:
    if connect is not None:
        from n2n.bridging import read_ready_file

        with user_errors(ValueError, prefix="--connect: "):
            endpoints = read_ready_file(connect)
        if "view" not in endpoints:
            raise UserError(f"--connect {connect}: expected a 'view' address, got none: the server predates "
                            "n2n view; restart it with this version")
    else:
        endpoints = {"view": _DEFAULT.view, "stats": _DEFAULT.stats}
    if view_address is not None:
        endpoints["view"] = view_address
    if stats_address is not None:
        endpoints["stats"] = stats_address
    return endpoints


@VIEW
def view(
    connect: Annotated[Path | None, typer.Option("--connect", help="A running server's ready file "
                                                 "(n2n serve --ready-file).")] = None,
    view_address: Annotated[str | None, typer.Option("--view-address", help="The server's view address.")] = None,
    stats_address: Annotated[str | None, typer.Option("--stats-address", help="The server's stats address.")]
    = None,
    overlay: Annotated[bool, typer.Option("--overlay", help="Overlay the two layers (a check box toggles the "
                                          "denoised one) instead of side by side.")] = False,
    curve_keys: Annotated[Path | None, typer.Option("--curve-keys", help="The folder made by `n2n keys` (a "
                                                    "server with --curve-keys).")] = None,
    snapshot: Annotated[Path | None, typer.Option("--snapshot", help="Save a PNG of the window once --frames "
                                                  "frames are shown (and the pixels shown, as .npz), then exit.")]
    = None,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Frames to show before the snapshot.")] = 30,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for them.")] = 60.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the viewer's summary here: once a second "
                                                   "while frames are shown, and on exit.")] = None,
) -> None:
    """Watch a running `n2n serve` (or `n2n bridge`, `n2n demo --view`) in napari: raw | denoised, live."""
    require_viewer()
    endpoints = _endpoints(connect, view_address, stats_address)
    from streamer.napari_plugin._app import run_view, write_summary

    keys: Any = None
    if curve_keys is not None:
        from streamer.security import ClientKeys

        with user_errors(OSError, ValueError, prefix=f"--curve-keys {curve_keys}: "):
            keys = ClientKeys.load(curve_keys)
    with user_errors(ValueError):
        try:
            summary = run_view(endpoints, keys, side_by_side=not overlay, snapshot=snapshot, frames=frames,
                               timeout=timeout, summary_path=json_path)
        except TimeoutError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(code=1) from None
    lat = summary["latency_ms"]
    console.print(f"{summary['shown']} frames shown at {summary['display_fps']:.1f} frames/s, {summary['skipped']} "
                  f"skipped; capture → shown p50 {lat['p50'] or float('nan'):.1f} ms"
                  + (f"; snapshot {snapshot}" if snapshot is not None else ""), highlight=False)
    if json_path is not None:
        with user_errors(OSError, prefix=f"--json {json_path}: "):
            write_summary(json_path, summary)
