"""Fixtures only (helpers live in tests/helpers.py): a fresh PostgreSQL database per run,
SQLite beside it, and a randomly initialised (clearly marked untrained) checkpoint for
plumbing tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tagger import db
from tagger.config import ALLOW_UNTRAINED_ENV, SHIPPED_MODEL_PATH
from tests.helpers import migrated_database


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for the whole run, migrated, dropped at the end."""
    with migrated_database("soundtag_test") as (_, url):
        yield url


@pytest.fixture(params=["postgresql", "sqlite"])
def store_url(request, tmp_path):
    """Each store test runs on PostgreSQL and on the embedded SQLite default."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        db.upgrade(url)
        yield url
        return
    with migrated_database("soundtag_store") as (_, url):
        yield url


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """Random weights for plumbing tests; their version says 'untrained'."""
    import torch

    from tagger.checkpoint import save_checkpoint
    from tagger.network import AudioCNN
    from training.data import read_esc50

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "untrained.safetensors"
    try:
        names = read_esc50().class_names
    except FileNotFoundError:
        names = [f"class_{i}" for i in range(50)]
    save_checkpoint(path, AudioCNN(num_classes=len(names)), names, trained=False)
    return path


@pytest.fixture(scope="session")
def untrained_allowed():
    """The developers' switch that lets the random checkpoint through (SOUNDTAG_TEST_ALLOW_UNTRAINED)."""
    patch = pytest.MonkeyPatch()
    patch.setenv(ALLOW_UNTRAINED_ENV, "1")
    yield
    patch.undo()


@pytest.fixture(scope="session")
def random_tagger(random_checkpoint):
    from tagger.inference import Tagger

    return Tagger.load(random_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def shipped_model_path() -> Path:
    if not SHIPPED_MODEL_PATH.is_file():
        pytest.fail(f"the shipped model is missing at {SHIPPED_MODEL_PATH}")
    return SHIPPED_MODEL_PATH


@pytest.fixture(scope="session")
def shipped_tagger(shipped_model_path):
    from tagger.inference import Tagger

    return Tagger.load(shipped_model_path, device="cpu")
