"""All settings of vlmserve, per layer, frozen; the only module that reads ``VLMSERVE_*``.

Sources, strongest first: constructor arguments (the CLI), environment variables
(``VLMSERVE_SERVER__PORT=9000``: ``__`` separates the layer from the field), the TOML file given
with ``--config`` (or ``VLMSERVE_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # "openai": usage null on stream chunks; one final chunk (choices: []) carries the totals when
    # the client asks with stream_options.include_usage, running totals on every chunk with
    # stream_options.continuous_usage_stats (vLLM's field). "step": every chunk carries the
    # running usage, whatever the client asks (the hosted platform's shape; clients that add up
    # chunk usage, such as LangChain and pydantic-ai, then over-count).
    stream_usage: Literal["openai", "step"] = "openai"
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"  # json: one object per line, for log shippers
    # Keys from the settings that may also read GET /v1/usage (and /metrics when restricted);
    # they authenticate like ``api_keys``. Keys made with ``vlmserve keys create --admin`` too.
    admin_api_keys: tuple[str, ...] = ()
    metrics_admin_only: bool = False  # True: GET /metrics needs an admin key


class MediaSettings(_Frozen):
    fetch_connect_timeout_s: float = Field(5.0, gt=0)
    fetch_read_timeout_s: float = Field(10.0, gt=0)
    max_redirects: int = Field(5, ge=0, le=20)
    allow_loopback: bool = False  # tests only: lets the fetcher reach 127.0.0.0/8 and ::1
    allowed_hosts: tuple[str, ...] = ()  # when non-empty, only these host names are fetched
    downscale_oversized: bool = False  # longest side over the limit: downscale instead of 400
    background_rgb: tuple[int, int, int] = (255, 255, 255)  # transparency composited on this
    workers: int = Field(4, ge=1, le=64)  # bounded thread pool for decoding and resizing
    cache_bytes: int = Field(512 * 1024 * 1024, ge=0)  # decoded-image cache (content addressed)
    fetch_total_timeout_s: float = Field(30.0, gt=0)  # whole fetch, redirects included
    # Remote fetches in flight at once, server-wide; more wait (up to fetch_total_timeout_s).
    max_concurrent_fetches: int = Field(64, ge=1, le=4096)
    # Decompression-bomb guard, checked from the header before decoding (any image, any setting).
    max_pixels: int = Field(64_000_000, gt=0)
    # A JPEG may be decoded at 1/2, 1/4 or 1/8 scale (DCT domain) when that scale is at most this
    # fraction below the target size; the small gap is closed by resampling. 0: never undershoot.
    jpeg_draft_slack: float = Field(0.03, ge=0.0, le=0.1)
    # Video (the catalogue entry caps bytes and seconds): frames sampled per second of video, at
    # most ``video_max_frames`` of them and ``video_max_tokens`` worth (also at most half the
    # model's context window), each at most ``video_frame_edge`` px on its longest side (None:
    # the model's detail=low size). With ``video_keyframe_snap`` each of the equal segments a
    # video is cut into gives its keyframe when it has one (cheap to decode), else its middle
    # frame; off: always the middle frame (exact spacing, several times slower on long GOPs).
    video_fps: float = Field(1.0, gt=0, le=60)
    video_max_frames: int = Field(32, ge=1, le=512)
    video_max_tokens: int = Field(16384, ge=1)
    video_frame_edge: int | None = Field(None, ge=16)
    video_keyframe_snap: bool = True
    video_max_per_request: int = Field(8, ge=1)  # video parts of one request, history included
    video_decode_timeout_s: float = Field(60.0, gt=0)  # one video's sampling, else 400


class EngineSettings(_Frozen):
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    max_queue: int = Field(256, ge=1)  # requests waiting beyond this → 503
    # Continuous batching (local engine): at most ``max_num_seqs`` sequences decode together in
    # one forward per step; a step computes at most ``max_num_batched_tokens`` tokens (decode rows
    # plus prompt chunks), so a long prompt is prefilled in chunks between decode steps.
    max_num_seqs: int = Field(16, ge=1)
    max_num_batched_tokens: int = Field(512, ge=16)
    # KV of running sequences (local engine); 0: automatic (free memory on CUDA, a fraction of
    # RAM on CPU). Admission waits when it is full; decoding past it preempts the newest sequence.
    kv_cache_bytes: int = Field(0, ge=0)
    # float32 (and bfloat16 where computed natively) on the CPU: the language model's linear
    # layers run as oneDNN-prepacked weights
    # (1.2x faster decode at one row, 1.5-1.8x at 2-8 rows on a 2-core machine; packed_linear.py).
    cpu_packed_linear: bool = True
    # Decode steps of plain Llama/Qwen decoders run straight through their layers, without
    # transformers' forward around them (half of a small model's step on the CPU;
    # decode_step.py). Off: every step goes through transformers.
    direct_decode: bool = True
    # A vision encoding (an image, or one tile for tiling families) pauses at a layer boundary of
    # the vision tower once it has run this long while other sequences decode, so they get their
    # next token (vision_slices.py); 0: each unit runs whole (1.5 s for a SmolVLM tile on 2 cores).
    vision_slice_s: float = Field(0.5, ge=0)
    # The automatic prompt cache (local engine): KV of 256-token prompt blocks keyed by their
    # tokens, the media in them and the tenant, plus vision features keyed by media identity;
    # each LRU within its byte budget (engine device memory). Off: every prompt is computed whole.
    prompt_cache: bool = True
    prefix_cache_bytes: int = Field(2 * 1024**3, ge=0)  # KV blocks
    encoder_cache_bytes: int = Field(256 * 1024**2, ge=0)  # vision features
    prefix_block_tokens: Literal[256] = 256  # fixed: the platform caches in 256-token units


class CatalogSettings(_Frozen):
    file: Path | None = None  # a TOML catalogue replacing the built-in one
    model: str | None = None  # binds every catalogue entry to this hub id or directory
    # Non-empty: every entry is served by these OpenAI-compatible replicas (base URLs such as
    # http://10.0.0.5:8000/v1) instead of a local model; ``model`` then only supplies the
    # processor and tokenizer (no weights) that size images and count tokens.
    upstreams: tuple[str, ...] = ()
    upstream_model: str | None = None  # the name the replicas serve; default: ``model``

    @field_validator("upstreams")
    @classmethod
    def _check_upstreams(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        urls = tuple(url.rstrip("/") for url in urls)
        for url in urls:
            parsed = urlsplit(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(
                    f"upstream {url!r} is not an http(s) URL; give the replica's OpenAI base URL, "
                    "e.g. http://10.0.0.5:8000/v1"
                )
        if len(set(urls)) != len(urls):
            raise ValueError("the same upstream URL is given twice; list each replica once")
        return urls


class RemoteEngineSettings(_Frozen):
    """The remote engine: OpenAI-compatible replicas (vLLM, SGLang, another vlmserve)."""

    connect_timeout_s: float = Field(3.0, gt=0)
    # Longest silence allowed while waiting for the next byte (first token included) → 504.
    read_timeout_s: float = Field(120.0, gt=0)
    max_connections: int = Field(512, ge=1)  # per engine, all replicas together
    max_keepalive_connections: int = Field(64, ge=0)
    health_interval_s: float = Field(5.0, gt=0)
    health_timeout_s: float = Field(2.0, gt=0)
    # "affinity": consistent hashing with bounded load on conversation identity (prefix-cache
    # friendly); "round_robin" and "least_outstanding" exist as baselines.
    routing: Literal["affinity", "round_robin", "least_outstanding"] = "affinity"
    load_factor: float = Field(1.25, ge=1.0)  # c of the bounded-load rule
    routing_images: int = Field(2, ge=0)  # how many leading images name a conversation
    virtual_nodes: int = Field(160, ge=1)  # points per replica on the hash ring
    retries: int = Field(1, ge=0, le=3)  # other replicas tried before anything was streamed
    image_encoding: Literal["auto", "jpeg", "png"] = "auto"
    jpeg_quality: int = Field(90, ge=50, le=100)
    encode_cache_bytes: int = Field(64 * 1024 * 1024, ge=0)  # data-URL cache across turns
    # Ask for usage on every chunk (vLLM/SGLang ``continuous_usage_stats``): exact prompt tokens
    # at the first chunk; turn off for upstreams that reject unknown ``stream_options``.
    continuous_usage: bool = True
    api_key: str = ""  # sent as a bearer token to the replicas (vLLM ``--api-key``)


class StorageSettings(_Frozen):
    data_dir: Path = Path("~/.local/share/vlmserve")
    max_upload_bytes: int = Field(128 * 1024 * 1024, gt=0)  # one file of POST /v1/files
    max_files_per_owner: int = Field(1000, ge=1)  # the hosted platform's limit per account


class TierSettings(_Frozen):
    """One rate-limit tier: requests in flight, requests per minute, tokens per minute per key
    (None: no limit)."""

    concurrency: int | None = Field(None, ge=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)


# The hosted platform's tiers (reference/step-api.md section 9.3): concurrency / RPM / TPM.
STEP_TIERS: dict[str, TierSettings] = {
    "V0": TierSettings(concurrency=5, rpm=10, tpm=5_000_000),
    "V1": TierSettings(concurrency=100, rpm=1_000, tpm=20_000_000),
    "V2": TierSettings(concurrency=200, rpm=5_000, tpm=30_000_000),
    "V3": TierSettings(concurrency=400, rpm=10_000, tpm=40_000_000),
    "V4": TierSettings(concurrency=1_000, rpm=20_000, tpm=50_000_000),
    "V5": TierSettings(concurrency=10_000, rpm=200_000, tpm=100_000_000),
    "unlimited": TierSettings(),
}


class LimitsSettings(_Frozen):
    """API keys' tiers, the usage ledger and the key cache."""

    # More tiers, or other figures for V0-V5 / "unlimited": [limits.tiers.team] rpm = 60 ...
    tiers: dict[str, TierSettings] = {}
    default_tier: str = "unlimited"  # keys made without --tier, settings keys, no-key mode
    ledger_flush_s: float = Field(1.0, gt=0, le=60)  # a crash loses at most this much usage
    key_refresh_s: float = Field(2.0, gt=0, le=300)  # revoked / new keys seen within this

    @property
    def all_tiers(self) -> dict[str, TierSettings]:
        return {**STEP_TIERS, **self.tiers}

    def tier(self, name: str | None) -> TierSettings:
        """The named tier (None: the default one); unknown names are refused at start-up."""
        return self.all_tiers[name or self.default_tier]

    @field_validator("default_tier")
    @classmethod
    def _known_default(cls, name: str, info: ValidationInfo) -> str:
        known = {**STEP_TIERS, **info.data.get("tiers", {})}
        if name not in known:
            raise ValueError(f"default_tier {name!r} is not a tier; known: {sorted(known)}")
        return name


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VLMSERVE_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    server: ServerSettings = ServerSettings()
    media: MediaSettings = MediaSettings()
    engine: EngineSettings = EngineSettings()
    catalog: CatalogSettings = CatalogSettings()
    storage: StorageSettings = StorageSettings()
    remote: RemoteEngineSettings = RemoteEngineSettings()
    limits: LimitsSettings = LimitsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings; ``overrides`` are per-layer dicts (``server={"port": 1}``).

    Raises ``pydantic.ValidationError`` (bad values) or ``FileNotFoundError`` (no such file).
    """
    path = config_file or os.environ.get("VLMSERVE_CONFIG")
    if not path:
        return Settings(**overrides)
    toml_path = Path(path).expanduser()
    if not toml_path.is_file():
        raise FileNotFoundError(f"config file {toml_path} does not exist")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=toml_path)

    return _FromFile(**overrides)
