"""Frame sources: one protocol, several cameras and files."""

from ._base import BaseSource, EndOfStream, Frame, FrameSource, grab
from .micromanager import FrameTimeout, MicroManagerSource, normalize_tagged_image
from .simulated import SimulatedCamera, SimulatedCameraConfig, render_sample, simulate_stack
from .tiff import OmeTiffParts, OmeTiffWriter, StackError, TiffSource, next_file, read_frame_metadata, read_stack

__all__ = [
    "BaseSource", "EndOfStream", "Frame", "FrameSource", "FrameTimeout", "MicroManagerSource", "OmeTiffParts",
    "OmeTiffWriter", "SimulatedCamera", "SimulatedCameraConfig", "StackError", "TiffSource", "grab", "next_file",
    "normalize_tagged_image", "read_frame_metadata", "read_stack", "render_sample", "simulate_stack",
]
