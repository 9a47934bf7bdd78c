"""napari plugin (npe2): the live raw | denoised widget. Needs the ``viewer`` extra (napari, Qt)."""

from __future__ import annotations

from typing import Any

__all__ = ["DenoiseWidget"]


def __getattr__(name: str) -> Any:  # Qt is imported only when the widget is asked for
    if name == "DenoiseWidget":
        from ._widget import DenoiseWidget

        return DenoiseWidget
    raise AttributeError(name)
