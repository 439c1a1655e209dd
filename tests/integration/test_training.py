"""Training, resume and evaluation on a tiny ESC-50-shaped data set (real code paths,
small data: the real 2000-clip run takes an hour and lives in `soundtag train`)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from tagger.checkpoint import load_checkpoint, read_metadata
from training.data import load_spectrograms, read_esc50
from training.evaluate import evaluate
from training.train import TrainConfig, export_checkpoint, train

CLASSES = ["dog", "rain", "siren", "clock_tick"]
PER_FOLD = 2  # clips per class per fold → 40 clips, 32 for training


@pytest.fixture(scope="module")
def tiny_esc50(tmp_path_factory):
    root = tmp_path_factory.mktemp("esc50")
    (root / "audio").mkdir()
    (root / "meta").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for fold in range(1, 6):
        for target, name in enumerate(CLASSES):
            for k in range(PER_FOLD):
                sr = 44100
                t = np.arange(int(sr * rng.uniform(1.0, 3.0))) / sr
                x = 0.3 * np.sin(2 * np.pi * 300 * (target + 1) * t) + 0.05 * rng.standard_normal(len(t))
                stem = f"{fold}-{target}{k}-A-{target}"
                sf.write(root / "audio" / f"{stem}.ogg", x.astype(np.float32), sr, format="OGG")
                rows.append({"filename": f"{stem}.wav", "fold": fold, "target": target, "category": name})
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "fold", "target", "category"])
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    old = os.environ.get("SOUNDTAG_CACHE_DIR")
    os.environ["SOUNDTAG_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield os.environ["SOUNDTAG_CACHE_DIR"]
    if old is None:
        os.environ.pop("SOUNDTAG_CACHE_DIR")
    else:
        os.environ["SOUNDTAG_CACHE_DIR"] = old


def _cfg(data_dir, out_dir, **kw) -> TrainConfig:
    return TrainConfig(data_dir=str(data_dir), out_dir=str(out_dir), **{"epochs": 4, "batch_size": 8, "seed": 7,
                                                                          "val_fold": 4, **kw})


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]


def test_cache_is_built_once_and_matches_the_reader(tiny_esc50, cache_env):
    data = read_esc50(tiny_esc50)
    assert data.class_names == CLASSES and len(data.files) == 40
    first = load_spectrograms(data)
    assert first.shape == (40, 1, 64, 431) and first.dtype == np.float16
    cached = list(os.scandir(cache_env))
    again = load_spectrograms(data)
    assert isinstance(again, np.memmap) and np.array_equal(np.asarray(again), first)
    assert [e.name for e in os.scandir(cache_env)] == [e.name for e in cached]


@pytest.fixture(scope="module")
def trained_run(tiny_esc50, cache_env, tmp_path_factory):
    """One uninterrupted run, shared by the tests below."""
    run = tmp_path_factory.mktemp("train") / "run"
    return run, train(_cfg(tiny_esc50, run))


def test_training_writes_checkpoints_logs_and_history(tiny_esc50, trained_run):
    run, state = trained_run
    assert state["epoch"] == 4 and len(state["history"]) == 4
    assert (run / "last.pt").is_file() and (run / "last.safetensors").is_file()
    assert list((run / "tensorboard").iterdir()), "TensorBoard events"
    history = json.loads((run / "history.json").read_text())["history"]
    assert all({"loss", "val_top1", "val_top3", "lr", "epoch_seconds"} <= set(h) for h in history)
    with pytest.raises(SystemExit, match="--resume"):
        train(_cfg(tiny_esc50, run))  # never silently overwrites a run


def test_a_killed_run_resumes_exactly_where_it_stopped(tiny_esc50, cache_env, trained_run, tmp_path):
    straight = trained_run[0]

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "deploy.cli", "train", "--data-dir", str(tiny_esc50), "--out-dir", str(killed),
           "--epochs", "4", "--batch-size", "8", "--seed", "7", "--val-fold", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 300
    while not (killed / "last.pt").is_file():
        assert proc.poll() is None and time.time() < deadline, "training subprocess ended before epoch 1"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = json.loads(torch.load(killed / "last.pt", weights_only=True)["state"])["epoch"]
    assert 1 <= stopped_at < 4

    resumed = train(_cfg(tiny_esc50, killed, resume=True))
    assert resumed["epoch"] == 4
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_resume_refuses_a_different_configuration(tiny_esc50, cache_env, tmp_path):
    train(TrainConfig(**{**_cfg(tiny_esc50, tmp_path / "r").__dict__, "epochs": 1}))
    with pytest.raises(SystemExit, match="epochs"):
        train(_cfg(tiny_esc50, tmp_path / "r", resume=True))


def test_a_student_learns_from_its_teachers_soft_targets(tiny_esc50, cache_env, trained_run, tmp_path):
    from training.train import _teachers_probs

    teacher = trained_run[0] / "last.safetensors"
    state = train(_cfg(tiny_esc50, tmp_path / "student", teachers=(str(teacher),), distill=0.9, epochs=2))
    assert state["epoch"] == 2 and all(np.isfinite(h["loss"]) for h in state["history"])
    from tagger.checkpoint import load_checkpoint

    probs = _teachers_probs([load_checkpoint(teacher).model.float().eval()] * 2, torch.randn(3, 1, 64, 431), None)
    assert probs.shape == (3, len(CLASSES)) and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
    with pytest.raises(SystemExit, match="teachers"):  # a run resumes only with the teachers it began with
        train(_cfg(tiny_esc50, tmp_path / "student", resume=True, epochs=2))


def test_a_student_on_fixed_views_runs_its_teachers_once_and_resumes_without_them(tiny_esc50, cache_env,
                                                                                  trained_run, tmp_path):
    from tagger.checkpoint import load_checkpoint
    from training.teacher_targets import fixed_views, teacher_targets

    teacher = str(trained_run[0] / "last.safetensors")
    cfg = _cfg(tiny_esc50, tmp_path / "fixed", teachers=(teacher,), teacher_views=3, epochs=1)
    assert train(cfg)["epoch"] == 1
    cached = torch.load(tmp_path / "fixed" / "teacher_targets.pt", weights_only=True)["probs"]
    assert cached.shape[0] == 3 and cached.shape[2] == len(CLASSES)
    assert torch.allclose(cached.sum(-1), torch.ones(cached.shape[:2]), atol=1e-4)
    # A resumed run draws the same views and reads the teachers' answers back instead of running them.
    x = torch.randn(2, 4, 1, 64, 431)
    views = fixed_views(x, 2, 0.5, 0.5, True, seed=1)
    assert torch.equal(views, fixed_views(x, 2, 0.5, 0.5, True, seed=1))
    marked = tmp_path / "targets.pt"
    first = teacher_targets(views, (teacher,), [load_checkpoint(teacher).model.float().eval()], None,
                            torch.device("cpu"), marked)
    saved = torch.load(marked, weights_only=True)
    torch.save({**saved, "probs": torch.full_like(first, 0.5)}, marked)
    assert torch.all(teacher_targets(views, (teacher,), [], None, torch.device("cpu"), marked) == 0.5)
    with pytest.raises(SystemExit, match="teacher_views"):
        train(_cfg(tiny_esc50, tmp_path / "fixed", teachers=(teacher,), teacher_views=4, epochs=1, resume=True))


def test_an_ensemble_is_measured_on_its_averaged_probabilities(tiny_esc50, trained_run, tmp_path):
    from training.evaluate import evaluate_ensemble

    one = tmp_path / "one.safetensors"
    export_checkpoint(trained_run[0], one)
    single = evaluate(one, data_dir=tiny_esc50, out_dir=tmp_path / "single")
    twice = evaluate_ensemble([str(one), str(one)], data_dir=tiny_esc50, out_dir=tmp_path / "ensemble")
    assert twice["conditions"]["full clip"]["top1"] == single["conditions"]["full clip"]["top1"]
    assert len(twice["conditions"]) == 9 and "| 12 s long |" in (tmp_path / "ensemble" / "report.md").read_text()


def test_a_network_that_never_heard_some_classes(tiny_esc50, cache_env, tmp_path):
    from tagger.checkpoint import load_checkpoint

    left_out = CLASSES[-1]
    state = train(_cfg(tiny_esc50, tmp_path / "fewer", exclude_classes=(left_out,), epochs=1))
    assert state["epoch"] == 1
    ckpt = load_checkpoint(tmp_path / "fewer" / "last.safetensors")
    assert ckpt.class_names == CLASSES[:-1] and ckpt.model.classifier.out_features == len(CLASSES) - 1
    with pytest.raises(SystemExit, match="no class nope"):
        train(_cfg(tiny_esc50, tmp_path / "bad", exclude_classes=("nope",)))


def test_fold_5_never_trains_validates_or_calibrates(tiny_esc50, cache_env, tmp_path):
    with pytest.raises(SystemExit, match="test fold"):
        train(_cfg(tiny_esc50, tmp_path / "x", val_fold=5))
    with pytest.raises(SystemExit, match="test fold"):
        evaluate(tmp_path / "unused.safetensors", data_dir=tiny_esc50, fold=5, calibrate=True)


def test_export_and_evaluate_write_the_robustness_report_and_the_checkpoint_figures(tiny_esc50, trained_run,
                                                                                     tmp_path):
    shipped = tmp_path / "model.safetensors"
    export_checkpoint(trained_run[0], shipped)
    assert all(v.dtype == torch.float16 for v in load_file(str(shipped)).values() if v.is_floating_point())
    report = evaluate(shipped, data_dir=tiny_esc50, out_dir=tmp_path / "eval", write_into_checkpoint=True)
    assert set(report["conditions"]) == {"full clip", "1 s excerpt", "2 s excerpt", "-20 dB", "-40 dB",
                                         "through 8 kHz", "through 16 kHz", "5.25 s long", "12 s long"}
    for figures in report["conditions"].values():
        assert 0.0 <= figures["top1"] <= figures["top3"] <= 1.0
        assert 0.0 <= figures["ece"] <= 1.0 and 0.0 <= figures["wrong_confident"] <= 1.0
    assert report["clips"] == 8 and report["top1"] == report["conditions"]["full clip"]["top1"]
    assert set(report["per_class"]) == set(CLASSES)
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000
    assert "| through 8 kHz |" in (tmp_path / "eval" / "report.md").read_text()
    meta = read_metadata(shipped)
    assert meta["metrics"]["top1"] == report["top1"] and meta["metrics"]["fold"] == 5
    assert meta["metrics"]["conditions"] == report["conditions"]
    assert meta["metrics"]["trained_on_folds"] == [1, 2, 3]
    assert load_checkpoint(shipped).class_names == CLASSES


def test_a_temperature_fitted_on_a_validation_fold_is_served_by_the_final_model(tiny_esc50, trained_run,
                                                                                 tmp_path):
    held_out, final = tmp_path / "val.safetensors", tmp_path / "final.safetensors"
    export_checkpoint(trained_run[0], held_out)
    export_checkpoint(trained_run[0], final)
    before = evaluate(final, data_dir=tiny_esc50, out_dir=tmp_path / "before")
    assert before["temperature"] == 1.0

    report = evaluate(held_out, data_dir=tiny_esc50, fold=4, out_dir=tmp_path / "cal", calibrate=True,
                      temperature_to=final)
    cal = report["calibration"]
    assert cal["temperature"] > 0 and cal["fitted_on_fold"] == 4 and len(cal["conditions"]) == 9
    served = load_checkpoint(final)
    assert float(served.model.logit_temperature) == pytest.approx(cal["temperature"], rel=1e-3)
    assert read_metadata(final)["metrics"]["calibration"] == cal
    after = evaluate(final, data_dir=tiny_esc50, out_dir=tmp_path / "after")
    assert after["top1"] == before["top1"] and after["top3"] == before["top3"]  # rankings unchanged
    assert after["model_version"] != before["model_version"]


def test_crops_are_repeated_to_fill_the_window():
    from training.train import crop_and_repeat

    x = torch.arange(2 * 431, dtype=torch.float32).reshape(2, 1, 1, 431)
    out = crop_and_repeat(x, 1.0, torch.Generator().manual_seed(0))
    for clip, filled in zip(x, out, strict=True):
        row = filled[0, 0]
        period = next(n for n in range(43, 216) if torch.equal(row[n : 2 * n], row[:n]) or 2 * n > 431)
        assert torch.equal(row[:period], clip[0, 0, int(row[0]) - int(clip[0, 0, 0]):][:period])


def test_time_roll_shifts_each_clip_circularly():
    from training.train import time_roll

    x = torch.arange(3 * 2 * 5, dtype=torch.float32).reshape(3, 1, 2, 5)
    rolled = time_roll(x, torch.Generator().manual_seed(0))
    for clip, out in zip(x, rolled, strict=True):
        shifts = [s for s in range(5) if torch.equal(torch.roll(clip, -s, dims=-1), out)]
        assert len(shifts) == 1  # the same shift for every mel band of a clip
