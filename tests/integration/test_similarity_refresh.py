"""Each API process's similarity index keeps in step with PostgreSQL (api.similarity)."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from api.similarity import LATE_COMMIT_S, SimilarityIndex
from tagger import db
from tagger.codec import encode_embedding
from tagger.tables import Clip, ClipFeatures
from tests.helpers import migrated_database


@pytest.fixture
def sessions():
    with migrated_database("soundtag_refresh") as (_, url):
        yield db.session_factory(url)


def _store(sessions, clip_id: str, tagged_at: datetime, seed: int) -> None:
    vector = np.random.default_rng(seed).standard_normal(256).astype(np.float32)
    with sessions.begin() as session:
        session.add(Clip(id=clip_id, source="test", status="tagged", model_version="m", tagged_at=tagged_at))
        session.flush()
        session.add(ClipFeatures(clip_id=clip_id, codec_version=1, spectrogram=b"", feature_maps=b"", waveform=b"",
                                 embedding=encode_embedding(vector)))


def test_new_and_late_clips_are_found_and_the_look_back_ends_with_the_clock(sessions):
    now = datetime.now(UTC)
    _store(sessions, "old", now - timedelta(hours=1), 1)
    _store(sessions, "recent", now - timedelta(seconds=1), 2)
    index = SimilarityIndex(sessions, "m")
    assert index.catch_up() == 2 and "old" in index.index and "recent" in index.index
    assert index.catch_up() == 0
    # A batch tagged a moment ago whose commit came after the last read is still found.
    _store(sessions, "late", now - timedelta(seconds=LATE_COMMIT_S / 2), 3)
    assert index.catch_up() == 1 and index.index.vector("late") is not None
    _store(sessions, "new", datetime.now(UTC), 4)
    assert index.catch_up() == 1 and "new" in index.index


def test_a_quiet_collection_is_not_read_again_every_second(sessions):
    """The look-back covers the clock's last seconds, not the seconds before the newest clip:
    an hour after the last tagging nothing before it is looked for (a commit an hour late
    is found on the next start)."""
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    _store(sessions, "last", hour_ago, 1)
    index = SimilarityIndex(sessions, "m")
    assert index.catch_up() == 1
    _store(sessions, "an-hour-late", hour_ago - timedelta(seconds=1), 2)
    assert index.catch_up() == 0 and "an-hour-late" not in index.index
    assert SimilarityIndex(sessions, "m").catch_up() == 2
