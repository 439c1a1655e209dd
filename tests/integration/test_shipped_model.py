"""The model that ships in the repository, and the main job (`soundtag demo`) that uses it."""

from __future__ import annotations

import os
import subprocess
import sys

from tagger.checkpoint import read_metadata
from tagger.config import SAMPLES_DIR
from tagger.features import PREPROCESSING

SAMPLE_CLASSES = {  # ESC-50 target in the file name → class (see samples/ATTRIBUTION.md)
    "5-151085-A-20.ogg": "crying_baby", "5-170338-A-41.ogg": "chainsaw", "5-179294-A-46.ogg": "church_bells",
    "5-181766-A-10.ogg": "rain", "5-194930-A-1.ogg": "rooster", "5-200461-A-11.ogg": "sea_waves",
    "5-201194-A-38.ogg": "clock_tick", "5-203128-A-0.ogg": "dog",
}


def test_shipped_checkpoint_is_a_trained_model_with_its_figures(shipped_model_path):
    assert shipped_model_path.stat().st_size <= 25 * 1024 * 1024
    meta = read_metadata(shipped_model_path)
    assert meta["trained"] is True and not meta["version"].startswith("untrained")
    assert len(meta["class_names"]) == 50 and "dog" in meta["class_names"]
    assert meta["preprocessing"] == {k: PREPROCESSING[k] for k in meta["preprocessing"]}
    metrics = meta["metrics"]
    assert metrics["fold"] == 5 and 0.0 < metrics["top1"] <= metrics["top3"] <= 1.0
    assert metrics["top1"] >= 0.6, "the shipped model should be a real one"


def test_shipped_model_tags_the_held_out_samples(shipped_tagger):
    from tagger.audio import decode_file

    files = sorted(SAMPLES_DIR.glob("*.ogg"))
    results = shipped_tagger.tag([decode_file(p) for p in files])
    top1 = sum(r.top3[0][0] == SAMPLE_CLASSES[p.name] for p, r in zip(files, results, strict=True))
    top3 = sum(SAMPLE_CLASSES[p.name] in [label for label, _ in r.top3] for p, r in zip(files, results, strict=True))
    assert top3 >= 7 and top1 >= 6, [(p.name, r.top3) for p, r in zip(files, results, strict=True)]


def test_demo_tags_the_samples_and_prints_their_top3(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDTAG_")}
    env["XDG_DATA_HOME"] = str(tmp_path)  # the embedded SQLite default lands here
    run = subprocess.run([sys.executable, "-m", "deploy.cli", "demo", "--no-serve"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "soundtag" / "soundtag.db").is_file()
    out = run.stdout
    assert "untrained" not in out
    for name in SAMPLE_CLASSES:
        assert name in out
    assert "tagged 8" in out or "8 tagged" in out, out
    rows = [line for line in out.splitlines() if line.split(" ")[0] in SAMPLE_CLASSES]
    assert sum(SAMPLE_CLASSES[row.split()[0]] in row for row in rows) >= 7

    again = subprocess.run([sys.executable, "-m", "deploy.cli", "demo", "--no-serve"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 tagged, 8 already tagged" in again.stdout, again.stdout
