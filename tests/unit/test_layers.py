"""Dependencies point one way: shells (api, stream, training) and the composition root
(deploy: the soundtag command, the demo, benchmarks) → core (tagger) → store. The import
graph is read from the source, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import REPO

# Lower layers never import higher ones.
LAYERS: list[set[str]] = [
    {"tagger.records", "tagger.errors", "tagger.audio", "tagger.config", "tagger.device", "tagger.codec",
     "tagger.files"},
    {"tagger.features", "tagger.network", "tagger.checkpoint", "tagger.engine", "tagger.inference", "tagger.pipeline",
     "tagger.verdicts", "tagger.events", "tagger.long_clips", "tagger.label_sets"},
    {"tagger.tables", "tagger.repository", "tagger.db", "tagger.vector_index", "tagger.label_set_store",
     "migrations"},  # the store
    # wired to the store
    {"tagger.stages", "tagger.pool", "tagger.ingest", "tagger.ingest_processes", "tagger.startup", "tagger.teaching"},
    {"api", "stream", "training"},  # shells, each on its own
    {"deploy"},  # the composition root
]
SHELLS = {"api", "stream", "training"}
# What the model core (the first two layers) may not pull in: a stream message or a
# training script that only needs to decode and tag must not drag in the database or a web stack.
NOT_IN_THE_CORE = {"sqlalchemy", "alembic", "psycopg", "fastapi", "starlette", "faust", "kafka", "aiokafka"}
FIRST_PARTY = {"tagger", "api", "stream", "training", "deploy", "migrations"}


def _module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from tagger import db`
    return found


def _layer(module: str) -> int | None:
    for rank, members in enumerate(LAYERS):
        for m in members:
            if module == m or module.startswith(m + "."):
                return rank
    return None


MODULES = {_module_name(p): p for top in FIRST_PARTY for p in (REPO / top).rglob("*.py")}


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m not in ("tagger",) and _layer(m) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    rank = _layer(module)
    backward = []
    for target in _imports(MODULES[module]):
        target_rank = _layer(target)
        if target_rank is not None and rank is not None and target_rank > rank:
            backward.append(f"{module} (layer {rank}) imports {target} (layer {target_rank})")
        own_shell, other_shell = module.split(".")[0], target.split(".")[0]
        if own_shell in SHELLS and other_shell in SHELLS and own_shell != other_shell:
            backward.append(f"shell {module} imports another shell: {target}")
        if rank is not None and rank <= 1 and other_shell in NOT_IN_THE_CORE:
            backward.append(f"core module {module} imports {target}")
    assert backward == []


def test_the_layer_check_sees_a_backward_edge(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from api.main import serve\n")
    assert "api.main" in _imports(bad) and _layer("api.main") > _layer("tagger.inference")
