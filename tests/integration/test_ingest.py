"""`soundtag ingest` end to end on the real PostgreSQL, with bad files mixed in."""

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from tagger import db
from tagger.ingest import ingest
from tagger.ingest_processes import ingest_job
from tagger.stages import PipelineJob
from tagger.tables import Clip, ClipFeatures, Tag
from tests.helpers import (
    ENCODED_FORMATS,
    PG_ADMIN_URL,
    assert_mixed_folder_tagged_and_stored,
    audio_bytes,
    block_database,
    deadly_decoder_path,
    encoded_bytes,
    make_mixed_folder,
    migrated_database,
)


def _fresh(pg_url):
    engine = db.get_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE clips CASCADE"))
    return db.session_factory(pg_url)


def test_ingest_tags_good_files_and_records_bad_ones(tmp_path, pg_url, random_tagger):
    sessions = _fresh(pg_url)
    folder = make_mixed_folder(tmp_path / "in", good=9)
    summary = ingest([folder], random_tagger, sessions, batch_size=4, progress=False)
    assert_mixed_folder_tagged_and_stored(summary, sessions)
    with sessions() as s:
        failed = s.scalars(select(Clip).where(Clip.status == "failed")).all()
        assert all(c.error and c.source.startswith(str(folder.resolve())) for c in failed)
    again = ingest([folder], random_tagger, sessions, batch_size=4, progress=False)
    assert again.tagged == 0 and again.skipped == summary.tagged  # re-running is cheap and safe


def _cli_env(pg_url, model):
    return {**os.environ, "SOUNDTAG_DATABASE_URL": pg_url, "SOUNDTAG_MODEL_PATH": str(model),
            "SOUNDTAG_TEST_ALLOW_UNTRAINED": "1", "SOUNDTAG_DEVICE": "cpu"}


def _many_clips(folder: Path, count: int) -> Path:
    folder.mkdir()
    for i in range(count):
        (folder / f"c{i:03d}.wav").write_bytes(audio_bytes("WAV", 5.0, sr=16000, seed=i))
    return folder


def _wait_for_rows(sessions, at_least: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # until some batches are committed
        with sessions() as s:
            if s.scalar(select(func.count()).select_from(Clip)) >= at_least:
                return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} clips stored; ingest exited with {proc.returncode}")


def _assert_whole(sessions) -> int:
    """Every stored clip (all tagged here) is whole: its tags and features with it. How many."""
    with sessions() as s:
        n = s.scalar(select(func.count()).select_from(Clip))
        assert s.scalar(select(func.count()).select_from(Tag)) == 3 * n
        assert s.scalar(select(func.count()).select_from(ClipFeatures)) == n
    return n


def _rerun_finishes(folder: Path, env: dict, sessions, stored: int, total: int) -> None:
    done = subprocess.run([sys.executable, "-m", "deploy.cli", "ingest", str(folder), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{total - stored} tagged, {stored} already tagged, 0 failed" in done.stdout
    # the tagging processes' CPU, summed over however many there were
    assert re.search(r"clips/s; \d+\.\d\d ms of CPU per clip\)", done.stdout), done.stdout
    assert _assert_whole(sessions) == total


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["1", "2"])
def test_cli_ingest_interrupted_then_finished(tmp_path, pg_url, random_checkpoint, processes):
    sessions = _fresh(pg_url)
    # Enough clips that the run cannot end before the signal reaches it: 240 took 2.5 s here.
    folder = _many_clips(tmp_path / "many", 480)
    env = _cli_env(pg_url, random_checkpoint)
    # SIGINT as a terminal delivers it, even where this suite was started with it ignored (a
    # background job of a shell without job control): Python then installs no handler for it.
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "ingest", str(folder), "--batch-size", "8",
                             "--processes", processes],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_rows(sessions, 16, proc)
    proc.send_signal(signal.SIGINT)  # to the command alone: it hands its processes no more batches
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in out and "Traceback" not in err
    n = _assert_whole(sessions)
    assert 16 <= n < 480
    assert f"interrupted: {n} tagged" in out  # the count covers every process's committed batches
    _rerun_finishes(folder, env, sessions, stored=n, total=480)


def _pool_processes(pid: int) -> list[int]:
    """The command's pool processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()]


def test_a_killed_pool_process_is_replaced_and_the_run_finishes(tmp_path, pg_url, random_checkpoint):
    sessions = _fresh(pg_url)
    folder = _many_clips(tmp_path / "many", 240)
    env = _cli_env(pg_url, random_checkpoint)
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "ingest", str(folder), "--batch-size", "8",
                             "--processes", "2", "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(sessions, 16, proc)
    children = _pool_processes(proc.pid)
    assert len(children) == 2, children
    os.kill(children[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (out, err)
    assert "died (killed by signal 9)" in err and "Traceback" not in err
    # Its batch was run again file by file (what it had committed is skipped): all 240 whole.
    assert re.search(r"(\d+) tagged, (\d+) already tagged, 0 failed", out), out
    assert _assert_whole(sessions) == 240


def test_a_file_that_kills_its_process_twice_is_recorded_as_failed_and_a_rerun_finishes(
        tmp_path, pg_url, random_checkpoint):
    sessions = _fresh(pg_url)
    folder = _many_clips(tmp_path / "some", 20)
    (folder / "deadly.wav").write_bytes(audio_bytes("WAV", 1.0, seed=99))
    env = {**_cli_env(pg_url, random_checkpoint), "PYTHONPATH": deadly_decoder_path(tmp_path / "hooks")}
    for run in range(2):
        done = subprocess.run([sys.executable, "-m", "deploy.cli", "ingest", str(folder), "--batch-size", "8",
                               "--processes", "2", "--quiet"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stdout + done.stderr  # a clip failed; the run finished
        tagged, skipped = (20, 0) if run == 0 else (0, 20)
        assert f"{tagged} tagged, {skipped} already tagged, 1 failed" in done.stdout, done.stdout
        assert "deadly.wav: the tagging process died on this clip (exit code 3)" in done.stderr, done.stderr
    with sessions() as s:
        failed = s.scalars(select(Clip).where(Clip.status == "failed")).all()
        assert [c.source for c in failed] == [str((folder / "deadly.wav").resolve())]

def test_ingest_in_processes_tags_and_records_like_one_process(tmp_path, pg_url, random_checkpoint):
    sessions = _fresh(pg_url)
    folder = make_mixed_folder(tmp_path / "in", good=9)
    job = PipelineJob(model_path=str(random_checkpoint), database_url=pg_url, device="cpu", batch_size=4)
    summary = ingest_job([folder], job, processes=2, progress=False)
    assert summary.not_audio == [str(folder / "readme.txt")]
    assert_mixed_folder_tagged_and_stored(summary, sessions)
    again = ingest_job([folder], job, processes=2, progress=False)
    assert again.tagged == 0 and again.skipped == summary.tagged


def test_ingest_decoding_in_processes_tags_and_records_like_threads(tmp_path, pg_url, random_tagger):
    # What a GPU's ingest runs (one process tags, the others decode for it), here on CPU.
    sessions = _fresh(pg_url)
    folder = make_mixed_folder(tmp_path / "in", good=9)
    summary = ingest([folder], random_tagger, sessions, batch_size=4, progress=False, decode_processes=2)
    assert_mixed_folder_tagged_and_stored(summary, sessions)
    with sessions() as s:
        in_processes = _stored_answers(s)
    with migrated_database("soundtag_ingest_threads") as (_, url):  # the same folder, decoded on threads
        sessions = db.session_factory(url)
        ingest([folder], random_tagger, sessions, batch_size=4, progress=False)
        with sessions() as s:
            assert _stored_answers(s) == in_processes


def _stored_answers(session):
    clips = session.execute(select(Clip.id, Clip.status, Clip.duration_s, Clip.error)).all()
    tags = session.execute(select(Tag.clip_id, Tag.rank, Tag.label, Tag.confidence)).all()
    return sorted(map(tuple, clips)), sorted((c, r, label, round(p, 5)) for c, r, label, p in tags)


def test_missing_model_names_the_variable_and_the_command(tmp_path, pg_url):
    env = {**_cli_env(pg_url, tmp_path / "nope.safetensors")}
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "ingest", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "SOUNDTAG_MODEL_PATH" in r.stderr and "soundtag train" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_path_that_does_not_exist_is_an_error_and_nothing_is_stored(tmp_path, pg_url, random_checkpoint):
    sessions = _fresh(pg_url)
    real = _many_clips(tmp_path / "real", 2)
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "ingest", str(real), "/no/such/path"],
                       env=_cli_env(pg_url, random_checkpoint), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no such file or folder: /no/such/path" in r.stderr and "Traceback" not in r.stderr
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Clip)) == 0


def test_ingest_exits_1_after_its_summary_when_a_clip_failed_and_0_on_the_rerun_of_good_ones(
        tmp_path, pg_url, random_checkpoint):
    _fresh(pg_url)
    folder = _many_clips(tmp_path / "some-bad", 3)
    (folder / "cut-off.wav").write_bytes(audio_bytes("WAV", 2.0, seed=31)[:3000])
    env = _cli_env(pg_url, random_checkpoint)
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "ingest", str(folder), "--quiet"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "3 tagged, 0 already tagged, 1 failed" in r.stdout and "truncated" in r.stderr
    (folder / "cut-off.wav").unlink()
    again = subprocess.run([sys.executable, "-m", "deploy.cli", "ingest", str(folder), "--quiet"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 tagged, 3 already tagged, 0 failed" in again.stdout, again.stdout


def test_untrained_checkpoint_is_refused_without_the_test_switch(tmp_path, pg_url, random_checkpoint):
    env = _cli_env(pg_url, random_checkpoint)
    env.pop("SOUNDTAG_TEST_ALLOW_UNTRAINED")
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "ingest", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "randomly initialised" in r.stderr


def test_unreachable_database_is_one_clear_line(tmp_path, random_checkpoint):
    env = _cli_env("postgresql://nobody@127.0.0.1:1/none", random_checkpoint)
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "ingest", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "database error" in r.stderr and "Traceback" not in r.stderr


def test_every_file_in_a_folder_is_tagged_failed_or_listed(tmp_path, pg_url, random_tagger):
    sessions = _fresh(pg_url)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, name in enumerate(ENCODED_FORMATS):
        (folder / f"clip.{name}").write_bytes(encoded_bytes(*ENCODED_FORMATS[name], seconds=1.5, seed=40 + i))
    (folder / "no-extension").write_bytes(audio_bytes("FLAC", 1.0, seed=50))  # audio by content
    (folder / "odd-rate.wav").write_bytes(audio_bytes("WAV", 2.0, sr=44099, seed=51))
    (folder / "cut.wav").write_bytes(audio_bytes("WAV", 1.0, seed=52)[: 44 + 264])
    one_hz = bytearray(audio_bytes("WAV", 1.0, sr=8000, seed=53))
    one_hz[24:28] = struct.pack("<I", 1)
    (folder / "one-hz.wav").write_bytes(bytes(one_hz))
    (folder / "notes.txt").write_text("not audio\n")
    (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    summary = ingest([folder], random_tagger, sessions, batch_size=3, progress=False)
    assert summary.tagged == 5, summary.failures  # mp3, m4a, webm, FLAC without a name, 44,099 Hz
    assert dict(summary.failures) == {
        str((folder / "cut.wav").resolve()): "truncated: header 1.00 s, data 0.003 s",
        str((folder / "one-hz.wav").resolve()): "sample rate 1 Hz is outside the 2,000–768,000 Hz that "
                                                 "recordings use",
    }
    assert sorted(summary.not_audio) == [str(folder / "notes.txt"), str(folder / "picture.png")]
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Clip).where(Clip.status == "tagged")) == 5
        assert s.scalar(select(func.count()).select_from(Clip).where(Clip.status == "failed")) == 2
    again = ingest([folder], random_tagger, sessions, batch_size=3, progress=False)
    assert (again.tagged, again.skipped, again.failed) == (0, 5, 2)


@pytest.mark.slow
def test_ingest_rides_out_a_30_second_database_outage(tmp_path, random_checkpoint):
    name, url = db.create_database(PG_ADMIN_URL, "soundtag_outage")
    try:
        db.upgrade(url)
        folder = tmp_path / "outage"
        folder.mkdir()
        for i in range(160):
            (folder / f"c{i:03d}.wav").write_bytes(audio_bytes("WAV", 5.0, sr=16000, seed=500 + i))
        sessions = db.session_factory(url)
        proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "ingest", str(folder), "--batch-size", "8",
                                 "--quiet"], env=_cli_env(url, random_checkpoint),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            with sessions() as s:
                if s.scalar(select(func.count()).select_from(Clip)) >= 16:
                    break
            time.sleep(0.2)
        block_database(name, True)
        try:
            time.sleep(30)
            assert proc.poll() is None, proc.communicate()
        finally:
            block_database(name, False)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "160 tagged, 0 already tagged, 0 failed" in out
        # One line when it goes and one when it is back, per pool process (two here), not per retry.
        gone, back = err.count("database unavailable"), err.count("database is back")
        assert gone == back and 1 <= gone <= 2, err
        with sessions() as s:
            assert s.scalar(select(func.count()).select_from(Clip)) == 160
            assert s.scalar(select(func.count()).select_from(Tag)) == 480
    finally:
        db.drop_database(PG_ADMIN_URL, name)
