"""``python -m offloader``: the same entry point as the ``offloader`` console script."""

from offloader.cli import entrypoint

entrypoint()
