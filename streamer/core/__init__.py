"""The foundation both sides stand on: what the trainer writes and the streamer reads, and the rules they share.

* :mod:`.card`: the model card (``model.json``), its normalisation and the names of the files it describes;
* :mod:`.config`: the configuration loader and base classes; :mod:`.choices`: engine, precision, device and
  output type, defined once;
* :mod:`.tiling`, :mod:`.dtypes`: cutting a frame into tiles without seams, and back to the camera's dtype;
* :mod:`.history`: the frames before the current one, for K-frame models (live and offline alike);
* :mod:`.messages`: the messages between processes (frame header, stats, the fine-tuning pair);
* :mod:`.summary`: percentiles and rates; :mod:`.processes`: stopping a child process;
* :mod:`.filenames`: file and folder names made from free text (a channel's name).

Nothing here imports another part of ``streamer`` (``.importlinter`` holds it to that): the trainer may import
this, the engines, the denoiser and the readers, never the runtime (server, client, viewers, Micro-Manager).
"""

from .card import (
    CARD_NAME,
    INT8_NAME,
    ONNX_NAME,
    TORCHSCRIPT_NAME,
    WEIGHTS_NAME,
    Artifact,
    CardError,
    ModelCard,
    Normalization,
    Quantization,
    file_digest,
)
from .choices import DEVICES, ENGINE_CHOICES, ENGINES, PRECISION_CHOICES, PRECISIONS
from .config import NULL, ConfigError, Strict, Versioned, load_config, save_config

__all__ = ["CARD_NAME", "DEVICES", "ENGINES", "ENGINE_CHOICES", "INT8_NAME", "NULL", "ONNX_NAME", "PRECISIONS",
           "PRECISION_CHOICES", "TORCHSCRIPT_NAME", "WEIGHTS_NAME", "Artifact", "CardError", "ConfigError",
           "ModelCard", "Normalization", "Quantization", "Strict", "Versioned", "file_digest", "load_config",
           "save_config"]
