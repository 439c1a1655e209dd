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

# Clips per batch, everywhere: ingest's batches, the worker's largest, the model's chunks.
# 32 measured best on 2 to 16 cores (the benchmarks README): smaller batches pay the
# per-batch costs (a transaction, a network call) more often, larger ones only add latency.
BATCH_SIZE = 32
# Developers' switch, not a setting: lets plumbing tests and benchmarks run a randomly
# initialised checkpoint (CONTRIBUTING.md). Users never need it.
ALLOW_UNTRAINED_ENV = "SOUNDTAG_TEST_ALLOW_UNTRAINED"


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

    # Limits that protect every entry point from hostile or accidental input.
    max_upload_bytes: int = 50 * 1024 * 1024
    max_duration_s: float = 24 * 3600.0
    # How long ingest, the worker and the API's uploads wait out a database outage before
    # giving up (ingest exits non-zero; the worker stops without acknowledging the batch).
    db_retry_s: float = Field(default=120.0, ge=0)

    # Streaming.
    input_topic: str = "audio-clips"
    output_topic: str = "audio-tags"
    dlq_topic: str = "audio-clips-dlq"
    consumer_group: str = "soundtag-worker"
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
