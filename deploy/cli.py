"""The `soundtag` command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from tagger.config import database_label, get_settings
from tagger.errors import CheckpointError, ModelNotFoundError, UntrainedModelError


def _fail(message: str, code: int = 2) -> int:
    print(f"soundtag: error: {message}", file=sys.stderr)
    return code


def _paths_exist(paths: list[str]) -> str | None:
    """The error for named paths that do not exist, before anything is loaded or stored."""
    from tagger.files import missing_paths

    missing = missing_paths(paths)
    return f"no such file or folder: {', '.join(missing)}" if missing else None


def cmd_ingest(args: argparse.Namespace) -> int:
    from tagger.ingest_processes import ingest_job
    from tagger.startup import check_model, open_database, pipeline_job

    if error := _paths_exist(args.paths):
        return _fail(error)
    settings = get_settings()
    check_model(settings)
    open_database(settings)  # the schema, before any process writes
    job = pipeline_job(settings)
    if args.batch_size:
        job = dataclasses.replace(job, batch_size=args.batch_size)
    try:
        # fork: this process has run no torch work and started no thread yet.
        summary = ingest_job(args.paths, job, processes=args.processes, progress=not args.quiet, fork=True)
    except ValueError as exc:
        return _fail(str(exc))
    _list("failed", summary.failures, "(status 'failed' in the database)")
    _list("not audio, skipped", [(p, "") for p in summary.not_audio], "")
    print(summary)
    if summary.gave_up:
        return _fail(f"{summary.gave_up}; run the same command again to finish", 1)
    if summary.interrupted:
        return 130
    # 0 only when every clip is tagged (now or before): a script can trust it.
    return 1 if summary.failed else 0


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more, got 0")
    return value


def _list(what: str, items: list[tuple[str, str]], more: str, shown: int = 20) -> None:
    for source, reason in items[:shown]:
        print(f"{what}: {source}{': ' + reason if reason else ''}", file=sys.stderr)
    if len(items) > shown:
        print(f"... and {len(items) - shown} more {what} {more}".rstrip(), file=sys.stderr)


def cmd_db(args: argparse.Namespace) -> int:
    from tagger import db

    url = get_settings().database_url
    db.upgrade(url, args.revision)
    print(f"database at revision {args.revision}: {database_label(url)}")
    return 0


TRAIN_OPTIONS = {  # --flag → TrainConfig field; defaults live in TrainConfig alone
    "data_dir": "data_dir", "out_dir": "out_dir", "epochs": "epochs", "batch_size": "batch_size", "lr": "max_lr",
    "seed": "seed", "val_fold": "val_fold", "crop_p": "crop_p", "band_p": "band_p", "mix": "mix",
    "threads": "num_threads", "limit": "limit", "resume": "resume", "distill": "distill",
    "teacher_views": "teacher_views",
}


def cmd_train(args: argparse.Namespace) -> int:
    from training.train import TrainConfig, export_checkpoint, train

    given = {field: getattr(args, flag) for flag, field in TRAIN_OPTIONS.items() if hasattr(args, flag)}
    if args.no_time_roll:
        given["time_roll"] = False
    if getattr(args, "teachers", None):
        given["teachers"] = tuple(args.teachers)
    if getattr(args, "exclude_classes", None):
        given["exclude_classes"] = tuple(c.strip() for c in args.exclude_classes.split(",") if c.strip())
    cfg = TrainConfig(device=get_settings().device, **given)
    if args.cv:
        from training.train import cross_validate

        cross_validate(cfg)
        return 0
    train(cfg)
    if args.export:
        print(f"exported {export_checkpoint(cfg.out_dir, args.export)} -> {args.export}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate, evaluate_ensemble, robustness_table

    if args.ensemble:
        if args.calibrate or args.write_into_checkpoint or args.temperature_to:
            raise SystemExit("--ensemble only measures: no --calibrate, --write-into-checkpoint or --temperature-to")
        report = evaluate_ensemble(args.ensemble, data_dir=args.data_dir, fold=args.fold,
                                   out_dir=f"{args.out_dir}-ensemble", limit=args.limit)
        print(f"ensemble of {len(args.ensemble)} on fold {args.fold} ({report['clips']} clips):\n")
        print(robustness_table(report["conditions"]))
        print(f"report: {args.out_dir}-ensemble/report.md")
        return 0
    report = evaluate(args.model or get_settings().model_path, data_dir=args.data_dir, out_dir=args.out_dir,
                      fold=args.fold, write_into_checkpoint=args.write_into_checkpoint, calibrate=args.calibrate,
                      temperature_to=args.temperature_to, limit=args.limit)
    print(f"{report['model_version']} on fold {args.fold} ({report['clips']} clips):\n")
    print(robustness_table(report["conditions"]))
    if args.calibrate:
        cal = report["calibration"]
        print(f"temperature {cal['temperature']:.4f} fitted on fold {args.fold} (all conditions): "
              f"ECE {cal['ece_before']:.4f} → {cal['ece_after']:.4f}"
              + (f"; written into {args.temperature_to}" if args.temperature_to else ""))
    if args.write_into_checkpoint:
        print(f"wrote the figures into {report['model']} (version {report['model_version']})")
    print(f"report: {args.out_dir}/report.md")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from api.main import serve

    serve(host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from stream.worker import run_worker

    return run_worker(loglevel=args.loglevel)


def cmd_publish(args: argparse.Namespace) -> int:
    from stream.producer import publish

    if error := _paths_exist(args.paths):
        return _fail(error)
    # kafka-python logs every failed connection attempt; the summary says what happened.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    summary = publish(args.paths, topic=args.topic, bootstrap=get_settings().kafka_bootstrap,
                      progress=not args.quiet)
    print(summary)
    return 0 if summary.failed == 0 and not summary.gave_up else 1


def cmd_teach(args: argparse.Namespace) -> int:
    """A label set of one's own from a folder with a subfolder of examples per label."""
    from pathlib import Path

    from tagger.checkpoint import read_metadata
    from tagger.label_sets import TeachError
    from tagger.pool import PoolError, ProcessPool
    from tagger.startup import check_model, open_database, pipeline_job
    from tagger.teaching import teach_from_folder

    if error := _paths_exist([args.folder]):
        return _fail(error)
    settings = get_settings()
    check_model(settings)
    sessions = open_database(settings)
    pool = ProcessPool(1, pipeline_job(settings))  # examples are few: one process, started while the folder is read
    try:
        taught = teach_from_folder(Path(args.folder), args.name, pool, read_metadata(settings.model_path)["version"],
                                   sessions, progress=not args.quiet)
    except (TeachError, PoolError) as exc:
        return _fail(str(exc))
    finally:
        pool.close()
    for path, why in taught.unreadable:
        print(f"  not used: {path}: {why}", file=sys.stderr)
    for warning in taught.warnings:
        print(f"soundtag: warning: {warning}", file=sys.stderr)
    metrics = taught.head.metrics
    print(f"label set {taught.name!r} version {taught.version}: {metrics['cv_folds']}-fold cross-validated accuracy "
          f"{metrics['cv_accuracy']:.1%}")
    for label, accuracy in metrics["cv_accuracy_by_label"].items():
        print(f"  {label:<24} {accuracy:6.1%}  ({metrics['examples'][label]} examples)")
    print(f"{taught.labelled} stored clips labelled; new clips are labelled as they are tagged")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """A stored clip's events, or an audio file's, tagged here and not stored."""
    from pathlib import Path

    from tagger.events import events_as

    if Path(args.clip).is_file():
        from tagger.audio import AudioError, decode_file
        from tagger.startup import load_tagger

        try:
            audio = decode_file(args.clip, max_duration_s=get_settings().max_duration_s)
        except AudioError as exc:
            return _fail(f"{args.clip}: {exc}", 1)
        events = load_tagger().tag([audio])[0].events
    else:
        from tagger import repository
        from tagger.startup import open_database

        with open_database(get_settings())() as session:
            if repository.get_clip(session, args.clip) is None:
                return _fail(f"no stored clip and no file named {args.clip!r}")
            features = repository.get_features(session, args.clip)
            if features is None:
                return _fail(f"clip {args.clip!r} failed, so it has no events", 1)
            events = features.events or []
    if args.format == "json":
        import json

        text = json.dumps({"items": events}, indent=1) + "\n"
    else:
        text = events_as(events, args.format)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from deploy.demo import run_demo

    return run_demo(host=args.host, port=args.port, serve=not args.no_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soundtag", description="Tag environmental sounds (ESC-50 classes).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="tag audio files and folders into the database")
    p.add_argument("paths", nargs="+")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--processes", type=_non_negative_int, default=0, metavar="N",
                   help="pipelines in separate processes, each taking the next batch when free; on a "
                        "GPU, processes that decode for the one that owns it (PostgreSQL only; default 0: "
                        "one per 256 files, at most one per core (but one, on a GPU) and per 0.6 GB of "
                        "available memory; 1: in this process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("events", help="a clip's timestamped sound events (CSV, Audacity, Raven or JSON)")
    p.add_argument("clip", help="a stored clip's id, or an audio file to tag without storing it")
    p.add_argument("--format", choices=["csv", "audacity", "raven", "json"], default="csv")
    p.add_argument("--out", default=None, help="write here instead of to standard output")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("teach", help="teach labels of your own from a folder: one subfolder of examples per label")
    p.add_argument("folder", help="a folder with a subfolder per label (at least 5 examples each; 'background': "
                                  "none of these)")
    p.add_argument("--name", required=True, help="the label set's name (teaching it again makes a new version)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_teach)

    p = sub.add_parser("db", help="database schema")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="apply Alembic migrations")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=cmd_db)

    p = sub.add_parser("train", help="train AudioCNN on ESC-50 (defaults: the shipped recipe, see the model card)",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--data-dir", help="ESC-50 folder (default: $SOUNDTAG_ESC50_DIR or ../shared/datasets/esc50)")
    p.add_argument("--out-dir", help="run folder (default: runs/esc50)")
    p.add_argument("--epochs", type=int, help="fixed schedule: the last epoch is the model (default: 150)")
    p.add_argument("--batch-size", type=int, help="clips per step (default: 32)")
    p.add_argument("--lr", type=float, help="OneCycle peak learning rate (default: 2e-3)")
    p.add_argument("--seed", type=int)
    p.add_argument("--val-fold", type=int, choices=[1, 2, 3, 4],
                   help="hold out one of folds 1–4 (fold 5 is the test fold and never trains or validates)")
    p.add_argument("--no-time-roll", action="store_true", default=False, help="no random circular time shift")
    p.add_argument("--crop-p", type=float, help="probability of a short crop repeated to fill (default: 0.3)")
    p.add_argument("--band-p", type=float, help="probability of the clip through 8 or 16 kHz (default: 0.3)")
    p.add_argument("--mix", choices=["db", "sound"],
                   help="mix two clips as sound (between-class learning; default) or as MixUp of the dB inputs")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--cv", action="store_true", default=False, help="4-fold cross-validation on folds 1–4")
    p.add_argument("--limit", type=int, help="train on only N clips (smoke test)")
    p.add_argument("--teachers", nargs="+", metavar="CHECKPOINT",
                   help="distil: train on these models' averaged probabilities over each augmented view")
    p.add_argument("--distill", type=float, help="the teachers' share of each target (default: 0.9)")
    p.add_argument("--teacher-views", type=int, metavar="N",
                   help="run the teachers once, on N fixed augmented views per clip, instead of on every batch")
    p.add_argument("--exclude-classes", metavar="A,B,…",
                   help="leave these classes out altogether (a network for the few-shot figure: training.few_shot)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out-dir")
    p.add_argument("--export", default=None, help="write the last epoch's weights as an fp16 checkpoint here")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, calibration and confusion matrix on an ESC-50 fold")
    p.add_argument("--model", default=None, help="checkpoint (default: SOUNDTAG_MODEL_PATH)")
    p.add_argument("--ensemble", nargs="+", metavar="CHECKPOINT", default=None,
                   help="measure these models' averaged probabilities instead (the teachers' ensemble)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--fold", type=int, default=5)
    p.add_argument("--out-dir", default="runs/evaluation")
    p.add_argument("--write-into-checkpoint", action="store_true",
                   help="store the figures (and a temperature fitted with --calibrate) in the checkpoint")
    p.add_argument("--calibrate", action="store_true",
                   help="fit the logit temperature on this fold (one of 1–4, never the test fold) with every "
                        "robustness condition mixed in")
    p.add_argument("--temperature-to", default=None,
                   help="write the fitted temperature into this checkpoint (the model trained on folds 1–4)")
    p.add_argument("--limit", type=int, default=None, help="only the first N clips of the fold (smoke test)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="run the API and the page")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="API processes on the port, each with its tagging process and similarity index (default 1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run the Faust worker on the audio-clips topic")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("publish", help="send audio files to Kafka")
    p.add_argument("paths", nargs="+")
    p.add_argument("--topic", default=None, help="default: audio-clips")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("demo", help="tag the bundled sample clips and serve the page")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-serve", action="store_true", help="tag and print, then exit")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    try:
        get_settings()
    except ValidationError as exc:
        return _fail("configuration: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))
    try:
        return args.func(args)
    except (ModelNotFoundError, CheckpointError, UntrainedModelError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # database down, bad URL…: one clear line, not a traceback
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            return _fail(f"database error ({database_label(get_settings().database_url)}): {exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0]}")
        raise


if __name__ == "__main__":
    sys.exit(main())
