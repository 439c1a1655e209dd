"""The store on PostgreSQL and SQLite: idempotent upserts, queries, concurrent writers."""

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from tagger import db
from tagger.records import ClipRecord, Status
from tagger.repository import label_counts, list_clips, save_clips, tagged_ids
from tagger.tables import Clip, ClipFeatures, Tag
from tests.helpers import PG_ADMIN_URL


def _tagged(clip_id: str, labels=("dog", "rain", "wind"), confs=(0.7, 0.2, 0.05), version="m1") -> ClipRecord:
    return ClipRecord(
        clip_id=clip_id, source=f"/data/{clip_id}.wav", status="tagged", sha256="0" * 64, sample_rate=44100,
        channels=1, duration_s=5.0, model_version=version, top3=list(zip(labels, confs, strict=True)),
        features={"codec_version": 1, "spectrogram": b"s", "feature_maps": b"f", "waveform": b"w",
                  "embedding": b"e", "timeline": None},
    )


def _count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def test_upsert_is_idempotent(store_url):
    sessions = db.session_factory(store_url)
    for _ in range(3):
        with sessions.begin() as s:
            save_clips(s, [_tagged("a"), _tagged("b", labels=("rain", "dog", "sea_waves"))])
    with sessions() as s:
        assert _count(s, Clip) == 2 and _count(s, Tag) == 6 and _count(s, ClipFeatures) == 2
        clip = s.get(Clip, "a")
        assert [t.label for t in clip.tags] == ["dog", "rain", "wind"] and clip.status == "tagged"


def test_retag_replaces_tags(store_url):
    sessions = db.session_factory(store_url)
    with sessions.begin() as s:
        save_clips(s, [_tagged("a")])
    with sessions.begin() as s:
        save_clips(s, [_tagged("a", labels=("siren", "engine", "train"), version="m2")])
    with sessions() as s:
        clip = s.get(Clip, "a")
        assert [t.label for t in clip.tags] == ["siren", "engine", "train"] and clip.model_version == "m2"


def test_failure_never_overwrites_a_tagged_clip(store_url):
    sessions = db.session_factory(store_url)
    with sessions.begin() as s:
        save_clips(s, [_tagged("a")])
    with sessions.begin() as s:
        save_clips(s, [ClipRecord(clip_id="a", source="kafka:x/0/1", status="failed", error="boom")])
    with sessions() as s:
        clip = s.get(Clip, "a")
        assert clip.status == "tagged" and clip.error is None and len(clip.tags) == 3


def test_failed_clip_is_recorded_then_fixed_by_a_later_success(store_url):
    sessions = db.session_factory(store_url)
    with sessions.begin() as s:
        save_clips(s, [ClipRecord(clip_id="a", source="x", status="failed", error="not audio")])
    with sessions() as s:
        assert s.get(Clip, "a").error == "not audio"
    with sessions.begin() as s:
        save_clips(s, [_tagged("a")])
    with sessions() as s:
        clip = s.get(Clip, "a")
        assert clip.status == "tagged" and clip.error is None


def test_queries_by_label_confidence_and_cursor(store_url):
    sessions = db.session_factory(store_url)
    with sessions.begin() as s:
        save_clips(s, [_tagged(f"c{i:02d}", confs=(0.5 + i / 100, 0.1, 0.05)) for i in range(30)])
        save_clips(s, [_tagged("z", labels=("rain", "wind", "dog"))])
    with sessions() as s:
        seen, cursor = [], None
        while True:
            page, cursor = list_clips(s, label="dog", cursor=cursor, limit=7)
            seen += [c.clip_id for c in page]
            if cursor is None:
                break
        assert seen == sorted([f"c{i:02d}" for i in range(30)] + ["z"])
        high, _ = list_clips(s, label="dog", min_confidence=0.75, limit=100)
        assert [c.clip_id for c in high] == [f"c{i:02d}" for i in range(25, 30)]
        assert tagged_ids(s, ["c01", "zz", "z"], "m1") == {"c01", "z"}
        assert tagged_ids(s, ["c01"], "other-model") == set()
        counts = {c["label"]: c for c in label_counts(s)}
        assert counts["dog"] == {"label": "dog", "top1": 30, "top3": 31}
        with pytest.raises(ValueError):
            list_clips(s, cursor="%%%not-a-cursor")


def test_two_concurrent_writers_leave_one_result_per_clip(store_url):
    sessions = db.session_factory(store_url)
    ids = [f"clip{i}" for i in range(40)]
    errors = []

    def writer(labels):
        try:
            for i in range(0, len(ids), 4):
                with sessions.begin() as s:
                    save_clips(s, [_tagged(c, labels=labels) for c in ids[i : i + 4]])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(labels,)) for labels in
               [("dog", "rain", "wind"), ("siren", "engine", "train")]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with sessions() as s:
        assert _count(s, Clip) == 40 and _count(s, Tag) == 120 and _count(s, ClipFeatures) == 40
        for clip in s.scalars(select(Clip)):
            labels = [t.label for t in clip.tags]
            assert labels in (["dog", "rain", "wind"], ["siren", "engine", "train"])  # never a mix


def test_migrations_build_exactly_the_tables_the_code_declares(store_url):
    """From an empty database (PostgreSQL and SQLite) the migrations build what
    tagger/tables.py declares, and running them again changes nothing."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tagger.tables import Base

    if store_url.startswith("sqlite"):
        fresh = f"sqlite:///{Path(store_url.removeprefix('sqlite:///')).parent / 'fresh.db'}"
    else:
        name, fresh = db.create_database(PG_ADMIN_URL, "soundtag_fresh")
    try:
        assert not db.schema_ready(fresh)
        db.upgrade(fresh)
        db.upgrade(fresh)  # at head already: a no-op
        with db.get_engine(fresh).connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        if not fresh.startswith("sqlite"):
            db.drop_database(PG_ADMIN_URL, name)


def test_feature_blobs_are_stored_without_a_second_compression(pg_url):
    """The codec compresses the blobs; PostgreSQL is told not to try again (migration 0002)."""
    with db.get_engine(pg_url).connect() as conn:
        storage = dict(conn.execute(text(
            "SELECT attname, attstorage FROM pg_attribute "
            "WHERE attrelid = 'clip_features'::regclass AND attnum > 0 AND NOT attisdropped")).all())
    assert {c: storage[c] for c in ("spectrogram", "feature_maps", "waveform", "embedding")} == dict.fromkeys(
        ("spectrogram", "feature_maps", "waveform", "embedding"), "e")


def test_one_batch_holding_a_clip_several_times_leaves_what_writing_them_in_order_would(store_url):
    sessions = db.session_factory(store_url)
    failed = ClipRecord(clip_id="a", source="kafka:x/0/9", status=Status.FAILED, error="boom")
    batch = [_tagged("a"), failed, _tagged("a", labels=("siren", "engine", "train"), version="m2"),
             _tagged("b"), ClipRecord(clip_id="b", source="kafka:x/0/10", status=Status.FAILED, error="late"),
             ClipRecord(clip_id="c", source="kafka:x/0/11", status=Status.FAILED, error="first"),
             ClipRecord(clip_id="c", source="kafka:x/0/12", status=Status.FAILED, error="second")]
    batch += [_tagged(f"many{i:03d}") for i in range(150)]  # more rows than one statement holds
    with sessions.begin() as s:
        save_clips(s, batch)
    with sessions() as s:
        a, b, c = (s.get(Clip, i) for i in "abc")
        assert a.status == "tagged" and a.model_version == "m2"
        assert [t.label for t in a.tags] == ["siren", "engine", "train"]
        assert b.status == "tagged" and b.error is None and len(b.tags) == 3
        assert c.status == "failed" and c.error == "second" and c.tags == []
        assert _count(s, Clip) == 153 and _count(s, Tag) == 3 * 152 and _count(s, ClipFeatures) == 152
