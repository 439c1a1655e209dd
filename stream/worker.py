"""`soundtag worker`: load the model and the database, then run the Faust worker."""

from __future__ import annotations

import logging
import sys

from tagger.config import get_settings
from tagger.service import load_tagger, open_database


def run_worker(loglevel: str = "info") -> int:
    settings = get_settings()
    tagger = load_tagger(settings)  # a missing model stops here, with a clear message
    sessions = open_database(settings)
    from faust import Worker

    from stream.app import create_app

    app = create_app(settings, tagger, sessions)
    logging.getLogger("soundtag").setLevel(loglevel.upper())
    print(f"soundtag worker: model {tagger.version} on {tagger.device}, "
          f"{settings.input_topic} → {settings.output_topic} (DLQ {settings.dlq_topic}) "
          f"via {settings.kafka_bootstrap}, batches of ≤{settings.max_batch} within {settings.batch_within_s}s",
          file=sys.stderr, flush=True)
    worker = Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
