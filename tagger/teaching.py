"""Teaching a label set: from a folder of examples (``soundtag teach``) or from stored clips
(the page's "label the selected clips as …"), then labelling every stored clip with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from tagger import label_set_store
from tagger.files import find_audio_files
from tagger.label_sets import LabelHead, TeachError, check_examples, teach
from tagger.pipeline import decode_payloads, run_model
from tagger.pool import ProcessPool, Worker
from tagger.records import Payload

NAME_MAX = 64
BATCH = 32


@dataclass
class Taught:
    name: str
    version: int
    head: LabelHead
    warnings: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    labelled: int = 0  # stored clips labelled with the new version


def name_problem(name: str) -> str | None:
    if not name or len(name) > NAME_MAX:
        return f"a name of 1 to {NAME_MAX} characters is needed"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "control characters are not allowed"
    return None


def examples_in(folder: Path) -> list[tuple[str, Path]]:
    """(label, file) for every audio file under each subfolder; the subfolder is the label."""
    if not folder.is_dir():
        raise TeachError(f"{folder} is not a folder (give one with a subfolder per label)")
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if problem := name_problem(sub.name):
            raise TeachError(f"label folder {sub.name!r}: {problem}")
        found += [(sub.name, f) for f in find_audio_files([sub]).audio]
    if not found:
        raise TeachError(f"no audio in subfolders of {folder}: make one subfolder per label, "
                         "with its examples inside (and optionally 'background' for none of these)")
    return found


def embeddings_task(worker: Worker, payloads: list[Payload]) -> list[np.ndarray | str]:
    """In a pool process: each example's embedding, or why it has none (nothing is stored)."""
    tagger = worker.pipeline()[0]
    assert worker.job is not None
    decoded = decode_payloads(payloads, worker.job.max_duration_s, tagger.features)
    answers: list[np.ndarray | str] = [rec.error or "not audio" for rec in decoded.records]
    for (i, _), result in zip(decoded.audio, run_model(tagger, decoded).results, strict=True):
        answers[i] = (f"tagging failed: {type(result).__name__}" if isinstance(result, Exception)
                      else result.embedding.astype(np.float32))
    return answers


def _died(payload: Payload, how: str) -> list[np.ndarray | str]:
    return [f"the tagging process died on this file ({how})"]


def teach_from_folder(folder: Path, name: str, pool: ProcessPool, model_version: str,
                      sessions: sessionmaker[Session], progress: bool = True) -> Taught:
    """Tag every example in ``pool`` (the one process pool: a file that crashes its decoder
    costs that file), teach the set on the embeddings and label every stored clip."""
    if problem := name_problem(name):
        raise TeachError(f"label set name: {problem}")
    examples = examples_in(folder)
    check_examples([label for label, _ in examples])  # before the minutes of tagging, not after
    labels, ids, vectors, unreadable = [], [], [], []
    bar = tqdm(total=len(examples), desc="tagging examples", unit="file", disable=not progress)
    for start in range(0, len(examples), BATCH):
        batch = examples[start : start + BATCH]
        payloads = [Payload(data=b"", source=str(path), path=path) for _, path in batch]
        for (label, path), answer in zip(batch, pool.map(embeddings_task, payloads, _died), strict=True):
            if isinstance(answer, str):
                unreadable.append((str(path), answer))
                continue
            labels.append(label)
            ids.append(str(path))
            vectors.append(answer)
        bar.update(len(batch))
    bar.close()
    warnings = check_examples(labels)
    head = teach(np.stack(vectors), labels)
    with sessions.begin() as session:
        label_set_store.set_examples(session, name, list(zip(ids, labels, vectors, strict=True)), replace=True)
        taught = _store(session, name, head, model_version, warnings)
    taught.unreadable = unreadable
    return taught


def teach_from_clips(session: Session, name: str, label: str, clip_ids: list[str], model_version: str) -> Taught:
    """Add stored clips as examples of ``label`` and teach the set again from all its
    examples. The examples are added in the caller's transaction even when the set cannot
    be taught yet (``TeachError``: too few examples): the next ones complete it."""
    for what, value in (("label set name", name), ("label", label)):
        if problem := name_problem(value):
            raise TeachError(f"{what}: {problem}")
    stored = label_set_store.stored_embeddings(session, clip_ids)
    missing = [c for c in clip_ids if c not in stored]
    if missing:
        raise TeachError(f"not tagged, so nothing to learn from: {', '.join(missing[:5])}")
    other = sorted({str(v) for v, _ in stored.values() if v != model_version})
    if other:
        raise TeachError(f"clips tagged by another model ({', '.join(str(v) for v in other)}); tag them again first")
    label_set_store.set_examples(session, name, [(c, label, stored[c][1]) for c in clip_ids], replace=False)
    labels, vectors = label_set_store.examples_of(session, name)
    warnings = check_examples(labels)
    return _store(session, name, teach(vectors, labels), model_version, warnings)


def _store(session: Session, name: str, head: LabelHead, model_version: str, warnings: list[str]) -> Taught:
    version = label_set_store.save_set(session, name, head, model_version)
    stored = next(s for s in label_set_store.current_sets(session, model_version) if s.name == name)
    labelled = label_set_store.relabel_all(session, stored)
    return Taught(name, version, head, warnings, labelled=labelled)
