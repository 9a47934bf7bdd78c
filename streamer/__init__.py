"""Model → live, in layers (``[tool.importlinter]`` in pyproject.toml keeps them; docs/architecture.md draws them):

* ``core``: what both sides stand on (the model card, configs, choices, tiling, history, messages);
* ``engines``, ``denoiser``, ``sources``, ``datasets``: running a model on frames, and where frames come from;
* ``protocol``, ``endpoints``, ``security``: the wire; ``client``: talking to a server;
* ``server``: the ZeroMQ server (parts around one loop); ``viewer``: watching one;
* ``micromanager``, ``offline`` (``n2n denoise``), ``dashboard``, ``napari_plugin``: what users run.

Never imports ``trainer``: it runs exported artifacts described by their model card.
"""

__all__: list[str] = []
