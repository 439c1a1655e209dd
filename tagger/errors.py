"""What stops a command with one clear line: a model that is missing, damaged or untrained.

Here, not beside the code that raises them, so that the ``soundtag`` command can catch them
without importing torch: ``soundtag publish``, ``db`` and ``--help`` need none of it.
"""

from __future__ import annotations


class ModelNotFoundError(FileNotFoundError):
    pass


class CheckpointError(ValueError):
    pass


class UntrainedModelError(RuntimeError):
    pass
