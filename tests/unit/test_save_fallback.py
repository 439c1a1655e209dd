"""A batch the database refuses is stored clip by clip: the refused clip fails alone, with
the database's reason, and every other clip is stored (on the embedded SQLite store)."""

from __future__ import annotations

from sqlalchemy import select

from tagger import db
from tagger.records import ClipRecord, Status
from tagger.repository import get_clip
from tagger.stages import DatabaseWaiter, save_records
from tagger.tables import Clip


def _tagged(clip_id: str) -> ClipRecord:
    return ClipRecord(clip_id=clip_id, source=f"/{clip_id}.wav", status=Status.TAGGED, model_version="m",
                      top3=[("dog", 0.5), ("rain", 0.3), ("wind", 0.2)])


def test_a_refused_record_fails_alone(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db.upgrade(url)
    sessions = db.session_factory(url)
    refused = _tagged("b")
    refused.status = "not-a-status"  # type: ignore[assignment]  # the table's CHECK constraint refuses it
    records = [_tagged("a"), refused, _tagged("c")]
    save_records(sessions, records, DatabaseWaiter(give_up_after_s=1))
    with sessions() as s:
        assert sorted(s.scalars(select(Clip.id))) == ["a", "b", "c"]
        a, b, c = (get_clip(s, i) for i in "abc")
    assert a.status == c.status == Status.TAGGED and len(a.top3) == 3
    assert b.status == Status.FAILED and "database refused the result" in b.error and b.top3 == []
    assert records[1].status == Status.FAILED  # the caller sees it failed too
