"""The worker's logging: what Faust's worker would set up, and what soundtag changes."""

from __future__ import annotations

import io
import logging

from stream.app import create_app
from stream.worker import RepeatedLogCollapser, _StopWithinSeconds
from tagger.config import Settings


def test_a_quiet_log_level_leaves_debug_records_unmade():
    # Faust's spinner would set the root logger to DEBUG at --loglevel warning, so that
    # aiokafka and Faust built a log record for every debug call on every message.
    worker = _StopWithinSeconds(create_app(Settings(), runner=None), loglevel="warning", quiet=True)
    root = logging.Logger("root-under-test")
    root.addHandler(logging.StreamHandler(io.StringIO()))
    root.setLevel(logging.WARNING)
    worker.on_setup_root_logger(root, logging.WARNING)
    assert not root.isEnabledFor(logging.DEBUG)
    assert [type(f) for h in root.handlers for f in h.filters] == [RepeatedLogCollapser]
