"""Frame sources: one protocol, several cameras and files."""

from ._base import BaseSource, EndOfStream, Frame, FrameSource, grab
from .simulated import SimulatedCamera, SimulatedCameraConfig, render_sample, simulate_stack
from .tiff import StackError, TiffSource, read_stack

__all__ = [
    "BaseSource", "EndOfStream", "Frame", "FrameSource", "SimulatedCamera", "SimulatedCameraConfig",
    "StackError", "TiffSource", "grab", "read_stack", "render_sample", "simulate_stack",
]
