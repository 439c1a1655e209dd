"""The worker's Faust folders live in the cache directory, not in whatever directory it
was started from (the image's /app, which its user may not write)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from stream.app import create_app, faust_datadir
from tagger.config import Settings


def _settings(cache_dir: Path) -> Settings:
    return Settings(database_url="sqlite://", kafka_bootstrap="127.0.0.1:1", cache_dir=cache_dir,
                    consumer_group="group-{with}-braces")


def test_the_worker_writes_nothing_in_its_working_directory(tmp_path, monkeypatch):
    start = tmp_path / "started-here"
    start.mkdir()
    monkeypatch.chdir(start)
    settings = _settings(tmp_path / "cache")
    app = create_app(settings, runner=None)
    asyncio.run(app.on_first_start())  # where Faust makes its folders
    assert list(start.iterdir()) == []
    assert Path(app.conf.datadir) == tmp_path / "cache" / "faust" / "group-{with}-braces"
    assert Path(app.conf.tabledir).is_dir()


def test_an_unwritable_cache_directory_falls_back_to_the_temporary_one(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    datadir = faust_datadir(_settings(not_a_folder))
    assert datadir.parent == Path(tempfile.gettempdir()) / f"soundtag-faust-{os.getuid()}"
