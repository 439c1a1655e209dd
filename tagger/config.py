"""Runtime settings, read from the environment (prefix ``SOUNDTAG_``).

The names are part of the interface contract (DESIGN.md): keep them.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
SHIPPED_MODEL_PATH = ASSETS_DIR / "audiocnn-esc50.safetensors"
SAMPLES_DIR = ASSETS_DIR / "samples"


# Example values from deploy/.env.example and their kin: never accepted as real secrets.
PLACEHOLDER_SECRETS = {"change-me", "change-me-too", "changeme", "secret", "password"}


def _default_database_url() -> str:
    # Embedded default so `soundtag demo` runs with nothing configured;
    # deployments set SOUNDTAG_DATABASE_URL to PostgreSQL.
    data_home = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return f"sqlite:///{data_home / 'soundtag' / 'soundtag.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOUNDTAG_", extra="ignore")

    database_url: str = Field(default_factory=_default_database_url)
    kafka_bootstrap: str = "127.0.0.1:9092"
    model_path: Path = SHIPPED_MODEL_PATH
    api_key: str | None = None
    # Deployments set this so the API refuses to start without a key (docker-compose.yml).
    require_api_key: bool = False
    # Origins (comma-separated, e.g. "https://a.example,http://localhost:3000") whose pages
    # may call the API from a browser; none by default. "*" allows any origin.
    cors_origins: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # What runs the network: ONNX Runtime on CPU and torch on CUDA under "auto" (the
    # benchmarks README compares them); "torch" forces eager PyTorch (bf16 autocast on
    # CPUs with AVX-512 BF16).
    engine: Literal["auto", "torch", "onnxruntime"] = "auto"
    # Intra-op threads of the model and features; 0: one on two cores (the pipeline's
    # decode and store threads use the other), all cores but one on larger machines.
    model_threads: int = Field(default=0, ge=0, le=512)
    # Randomly initialised checkpoints (plumbing tests) are refused unless this is set.
    allow_untrained: bool = False

    # Limits that protect every entry point from hostile or accidental input.
    max_upload_bytes: int = 50 * 1024 * 1024
    max_duration_s: float = 600.0
    batch_size: int = 32
    # How long ingest, the worker and the API's uploads wait out a database outage before
    # giving up (ingest exits non-zero; the worker stops without acknowledging the batch).
    db_retry_s: float = Field(default=120.0, ge=0)

    # Streaming.
    input_topic: str = "audio-clips"
    output_topic: str = "audio-tags"
    dlq_topic: str = "audio-clips-dlq"
    consumer_group: str = "soundtag-worker"
    max_batch: int = 32
    # A batch starts as soon as the worker has room for one, with what has arrived: under
    # light load a clip goes in alone at once (latency), under heavy load the queue fills
    # while the pipeline is busy, so batches reach max_batch anyway. > 0: a free slot waits
    # up to this long for more messages first.
    batch_within_s: float = Field(default=0.0, ge=0, le=10)
    # Longest a consumer fetch waits at the broker when no message is there. Apache Kafka
    # answers a waiting fetch as soon as a message arrives, so this only bounds latency on
    # brokers that do not (the dev broker holds the fetch for the whole wait, so Faust's
    # built-in 1.5 s became the latency). An idle worker sends 1/wait small requests per second.
    fetch_max_wait_ms: int = Field(default=100, ge=10, le=30_000)
    # Batches in flight per worker: while one is in the model, the next one decodes and
    # the one before it is stored, so the model waits for neither.
    pipeline_depth: int = Field(default=2, ge=1, le=8)
    # Processes that tag and store the worker's batches, each batch whole in one of them;
    # 0: one per core on CPU (as far as memory allows), one on a GPU. 1: the stages on
    # threads of the worker's own process, batches overlapping.
    worker_processes: int = Field(default=0, ge=0, le=256)
    # Largest Kafka message (one clip's bytes plus headers) when the broker does not report
    # its topic's max.message.bytes; Kafka's own default. docker-compose.yml raises both.
    kafka_max_message_bytes: int = Field(default=1_048_576, ge=1024)

    # Training and evaluation (`soundtag train` / `evaluate`); cache_dir also keeps the
    # model's ONNX export for every command that tags.
    esc50_dir: Path | None = None  # default: ../shared/datasets/esc50 next to the checkout
    cache_dir: Path = Path.home() / ".cache" / "soundtag"  # ESC-50's log-mels, the model's ONNX export

    @property
    def export_cache_dir(self) -> Path:
        return self.cache_dir / "onnx"

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @field_validator("api_key")
    @classmethod
    def _real_api_key(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("SOUNDTAG_API_KEY is a placeholder from the example; set a real secret "
                             "(e.g. `openssl rand -hex 24`)")
        return value or None

    @field_validator("database_url")
    @classmethod
    def _real_database_password(cls, value: str) -> str:
        try:
            password = urlsplit(value).password
        except ValueError:  # a malformed URL is reported when it is used
            return value
        if password is not None and unquote(password).lower() in PLACEHOLDER_SECRETS:
            raise ValueError("the database password in SOUNDTAG_DATABASE_URL is a placeholder from the "
                             "example; set a real secret")
        return value

    @model_validator(mode="after")
    def _key_when_required(self) -> Settings:
        if self.require_api_key and not self.api_key:
            raise ValueError("SOUNDTAG_REQUIRE_API_KEY is set but SOUNDTAG_API_KEY is empty: "
                             "the API will not start without a key")
        return self


@functools.cache
def get_settings() -> Settings:
    return Settings()


def database_label(url: str) -> str:
    """Where a database URL points, without its user and password: for messages and logs."""
    return url.rsplit("@", 1)[-1]
