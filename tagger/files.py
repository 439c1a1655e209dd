"""Which files under the paths a user names are audio (by name or by content)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tagger.audio import is_audio_file


@dataclass
class FoundFiles:
    audio: list[Path]
    not_audio: list[Path]


def missing_paths(paths: Iterable[str | Path]) -> list[str]:
    """The named paths that do not exist: a typo is the user's to fix, not a failed clip."""
    return [str(p) for p in paths if not os.path.lexists(p)]


def find_audio_files(paths: Iterable[str | Path]) -> FoundFiles:
    """Files named on the command line are always tried (an unreadable one becomes a failed
    clip with its reason); in folders every file is looked at (hidden ones skipped), in a
    stable order. A path that does not exist is refused with ``FileNotFoundError``."""
    paths = list(paths)
    if missing := missing_paths(paths):
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    found = FoundFiles([], [])
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path, onerror=None):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    file = Path(root) / name
                    (found.audio if is_audio_file(file) else found.not_audio).append(file)
        else:
            found.audio.append(path)
    return found
