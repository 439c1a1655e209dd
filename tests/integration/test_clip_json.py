"""PostgreSQL writes the clip routes' JSON (api.clip_json); it must be, to the byte of every
value, what the models write (api.convert.clip_out), for every kind of clip and page."""

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from api import clip_json
from api.convert import clip_out
from api.schemas import ClipList
from tagger import db, repository
from tagger.tables import Clip, ClipCustomLabel, Tag
from tests.helpers import migrated_database

NOW = datetime(2026, 12, 7, 3, 4, 5, 120, tzinfo=UTC)


@pytest.fixture(scope="module")
def reads():
    with migrated_database("soundtag_clip_json") as (_, url):
        sessions = db.session_factory(url)
        with sessions.begin() as session:
            _store(session)
        yield db.read_session_factory(url)  # the routes read this way: autocommit


def _store(session) -> None:
    def clip(clip_id, **fields):
        session.add(Clip(id=clip_id, source=fields.pop("source", f"upload:{clip_id}"), **fields))

    clip("a-tagged", status="tagged", duration_s=5.0, sample_rate=44100, channels=1, sha256="ab" * 32,
         model_version="m1", verdict="label", received_at=NOW, tagged_at=NOW.replace(microsecond=0))
    clip("b/with slash/ünïcode ✓", status="tagged", duration_s=0.1 + 0.2, sample_rate=8000, channels=2,
         model_version="m1", verdict="unknown", received_at=NOW - timedelta(days=400),
         tagged_at=datetime(2026, 1, 1, 5, 0, tzinfo=timezone(timedelta(hours=3))))
    clip("c-failed", status="failed", error='not a readable "WAV" file: \\ bad\nheader \x01 é ✗', received_at=NOW)
    clip("d-silence", status="tagged", duration_s=3600.25, sample_rate=48000, channels=1, model_version="m1",
         verdict="silence", received_at=NOW, tagged_at=NOW, source='folder/quote"s and \\backslash.wav')
    session.flush()
    for clip_id, labels in {"a-tagged": [("dog", 0.9123456789012345), ("rain", 0.05), ("wind", 1e-7)],
                            "b/with slash/ünïcode ✓": [("rain", 0.4), ("dog", 1 / 3), ("cat", 0.1)],
                            "d-silence": [("wind", 0.0), ("dog", 1.0), ("cat", 0.5)]}.items():
        for rank, (label, confidence) in enumerate(labels, start=1):
            session.add(Tag(clip_id=clip_id, rank=rank, label=label, confidence=confidence))
    custom = [("zoo", "lion", 0.75), ("Birds", "unknown", 0.2), ("alarms", "bell", 0.99), ("_x", "y", 0.5)]
    for label_set, label, confidence in custom:
        session.add(ClipCustomLabel(clip_id="a-tagged", label_set=label_set, version=2, label=label,
                                    confidence=confidence))


def _models_page(session, *args) -> dict:
    clips, cursor = repository.list_clips(session, *args)
    return json.loads(ClipList(items=[clip_out(c) for c in clips], next_cursor=cursor).model_dump_json())


def test_one_clip_is_what_the_model_writes(reads):
    with reads() as session:
        ids = [c.clip_id for c in repository.list_clips(session, limit=100)[0]]
        assert len(ids) == 4
        for clip_id in ids:
            written = clip_json.one(session, clip_id)
            assert json.loads(written) == json.loads(clip_out(repository.get_clip(session, clip_id)).model_dump_json())
        assert clip_json.one(session, "no such clip") is None
        some = clip_json.some(session, [*ids, "no such clip"])
        assert sorted(some) == sorted(ids)


@pytest.mark.parametrize("filters", [
    dict(),
    dict(label="dog"),
    dict(label="dog", min_confidence=0.5),
    dict(min_confidence=0.3),
    dict(status="failed"),
    dict(verdict="silence"),
    dict(label="rain", verdict="unknown", status="tagged"),
    dict(label="no such label"),
])
def test_every_page_is_what_the_models_write(reads, filters):
    args = [filters.get(k) for k in ("label", "min_confidence", "status", "verdict")]
    with reads() as session:
        for limit in (1, 2, 50):
            cursor, pages = None, 0
            while True:
                written = json.loads(clip_json.page(session, *args, cursor, limit))
                assert written == _models_page(session, *args, cursor, limit)
                cursor, pages = written["next_cursor"], pages + 1
                if cursor is None:
                    break
            assert pages >= 1


def test_a_bad_cursor_is_refused_as_the_models_refuse_it(reads):
    with reads() as session, pytest.raises(ValueError, match="invalid cursor"):
        clip_json.page(session, None, None, None, None, "%%%", 10)


def test_a_neighbour_is_the_model_with_its_score(reads):
    from api.schemas import SimilarClip

    with reads() as session:
        for clip_id, text in clip_json.some(session, ["a-tagged", "c-failed"]).items():
            model = SimilarClip(**clip_out(repository.get_clip(session, clip_id)).model_dump(), score=0.123456)
            assert json.loads(clip_json.with_score(text, 0.123456)) == json.loads(model.model_dump_json())


def test_on_sqlite_the_routes_answer_through_the_models(tmp_path, random_checkpoint, random_tagger, untrained_allowed):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from tagger.config import Settings
    from tests.helpers import audio_bytes, wait_until

    url = f"sqlite:///{tmp_path / 'clips.db'}"
    db.upgrade(url)
    settings = Settings(database_url=url, model_path=random_checkpoint, device="cpu", max_duration_s=60.0)
    with TestClient(create_app(settings, random_tagger)) as client:
        for i in range(3):
            files = [("files", (f"s{i}.wav", audio_bytes("WAV", 1.0, seed=60 + i)))]
            assert client.post("/api/clips", files=files, data={"clip_id": f"lite-{i}"}).status_code == 201
        page = client.get("/api/clips", params={"limit": 2})
        assert page.status_code == 200 and len(page.json()["items"]) == 2 and page.json()["next_cursor"]
        assert client.get("/api/clips/lite-1").json()["clip_id"] == "lite-1"
        label = client.get("/api/clips/lite-1").json()["top3"][0]["label"]
        assert "lite-1" in [c["clip_id"] for c in client.get("/api/clips", params={"label": label}).json()["items"]]

        def similar():
            r = client.get("/api/clips/lite-2/similar", params={"k": 2})
            return r.json()["items"] if r.status_code == 200 else None

        items = wait_until(similar, 30, "lite-2 to be found by similarity")
        assert {i["clip_id"] for i in items} == {"lite-0", "lite-1"} and all(-1 <= i["score"] <= 1 for i in items)
