"""Typed configuration shared by every RLLFPR program.

Precedence, lowest to highest: field defaults < YAML config file < environment variables.
The config file is given explicitly (``load_settings(path)`` / ``--config``) or through
``RLLFPR_CONFIG``. Environment variables use the ``RLLFPR_`` prefix and ``__`` between nested
sections, e.g. ``RLLFPR_MQTT__HOST=broker.local``. Unknown keys anywhere are an error, so a typo
fails at start-up instead of silently falling back to a default; that holds for the environment
too: an ``RLLFPR_`` variable that is neither a setting nor one of ``NOT_SETTINGS`` is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from rllfpr.wire.topics import ScopeName, TopicLevel

# Every path setting: a leading ``~`` is the user's home directory.
UserPath = Annotated[Path, AfterValidator(lambda path: path.expanduser())]

CONFIG_FILE_ENV = "RLLFPR_CONFIG"

# RLLFPR_ variables that are not settings: the config file, and those the scripts and the
# compose files read. Any other RLLFPR_ variable that names no setting is refused.
NOT_SETTINGS = frozenset(
    {
        CONFIG_FILE_ENV,
        "RLLFPR_MOSQUITTO",  # rllfpr/local_services.py: the mosquitto binary (scripts/setup)
        "RLLFPR_REDIS_SERVER",  # rllfpr/local_services.py, scripts/install-redis8
        "RLLFPR_VENV",  # scripts/setup: where the virtual environment goes
        "RLLFPR_PYTHON",  # scripts/setup: the Python that makes it
        "RLLFPR_CERT_DAYS",  # deploy/compose/init-secrets.sh
        "RLLFPR_UID",  # deploy/compose/.env: the containers' user
        "RLLFPR_GID",
        "RLLFPR_OFFLINE_KEYS",  # deploy/compose/.env: the trainer's offline key folder
        "RLLFPR_TORCH_INDEX_URL",  # deploy/compose/.env: the image's torch wheels
        "RLLFPR_IMAGE_TAG",  # deploy/compose/docker-compose.yml
        "RLLFPR_REQUIRE_BROWSER",  # scripts/test: the console's browser tests fail, not skip
    }
)
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000  # values after YAML aliases are expanded: no "billion laughs"
_config_document: ContextVar[dict[str, Any] | None] = ContextVar(
    "rllfpr_config_document", default=None
)


class ConfigError(ValueError):
    """The configuration file or environment is invalid."""


class Section(BaseModel):
    """Base of every nested section: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class MqttSettings(Section):
    """Connection to the MQTT v5 broker (Mosquitto 2.x)."""

    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port (8883 is usual for TLS).")
    username: str | None = Field(None, description="Username, when the broker requires one.")
    password: SecretStr | None = Field(None, description="Password for `username`.")
    client_id: str | None = Field(
        None,
        description="Stable MQTT client id. Required for persistent sessions; each process of a "
        "fleet needs its own. Defaults to a name derived from the program and host.",
    )
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: UserPath | None = Field(
        None, description="CA certificate that signed the broker's one."
    )
    cert_file: UserPath | None = Field(
        None, description="Client certificate (mutual TLS identity)."
    )
    key_file: UserPath | None = Field(None, description="Private key of `cert_file`.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive interval, seconds.")
    session_expiry_s: int = Field(
        3600,
        ge=0,
        description="How long the broker keeps this client's session (subscriptions and queued "
        "QoS 1 messages) while it is disconnected, seconds.",
    )
    message_expiry_s: int = Field(
        300,
        ge=1,
        description="MQTT v5 message expiry of published face messages: the broker drops faces "
        "older than this instead of delivering stale sightings.",
    )


class AgentSettings(Section):
    """The edge agent (`rllfpr agent run`): one camera, scrambled faces out, never raw ones."""

    id: TopicLevel | None = Field(
        None,
        description="Agent id: its status topic, the `agent` of its faces and, in the broker "
        "ACL, its identity (certificate CN or username). Defaults to `{site}-{camera}`.",
    )
    site: TopicLevel | None = Field(None, description="Site of the camera.")
    camera: TopicLevel | None = Field(None, description="Camera within the site.")
    replay_fps: float = Field(
        10.0,
        ge=0,
        description="Frame rate at which image folders and video files are replayed; 0 replays "
        "as fast as the pipeline runs. Cameras and streams run at their own rate.",
    )
    sequence: bool = Field(
        False,
        description="Treat an image folder as consecutive frames of one scene (tracks continue "
        "across images) instead of independent photos (tracks reset at every image).",
    )
    frame_buffer: int = Field(
        16,
        ge=1,
        le=1024,
        description="Frames read ahead of the pipeline. Live sources drop the oldest frame when "
        "it is full (counted); files and folders wait.",
    )
    reconnect_initial_s: float = Field(
        1.0, gt=0, description="First wait before reopening a camera or stream that failed."
    )
    reconnect_max_s: float = Field(
        60.0, gt=0, description="Longest wait between reopen attempts (the wait doubles)."
    )
    detect_every: int = Field(
        3,
        ge=1,
        le=100,
        description="Run the face detector on every N-th frame of a scene (always on a scene's "
        "first frame); the tracker links detections across frames.",
    )
    detect_width: int = Field(
        320,
        ge=64,
        description="Frames wider than this are downscaled to this width for detection; "
        "alignment still crops from the full-resolution frame.",
    )
    max_batch_frames: int = Field(
        8,
        ge=1,
        le=64,
        description="Most frames taken from the buffer at once; their detections run as one "
        "MTCNN batch. Batches grow only when the pipeline falls behind.",
    )
    min_face_size: int = Field(
        40, ge=12, description="Smallest face kept, in full-resolution pixels (box side)."
    )
    min_detection_score: float = Field(
        0.95, ge=0, le=1, description="Faces the detector is less sure of are rejected."
    )
    min_sharpness: float = Field(
        20.0,
        ge=0,
        description="Blur gate: variance of the Laplacian of the aligned grey face; blurrier "
        "faces are rejected. It is also the quality that ranks a track's faces.",
    )
    iou_threshold: float = Field(
        0.3, gt=0, lt=1, description="Least box overlap (IoU) that continues a track."
    )
    max_missed_detections: int = Field(
        2,
        ge=0,
        le=100,
        description="A track ends after this many detection passes in a row without its face.",
    )
    max_messages_per_track: int = Field(
        3,
        ge=1,
        le=100,
        description="Most faces published per track: its first usable face at once, then only "
        "faces sharper than every face it published before by `improvement_ratio`.",
    )
    improvement_ratio: float = Field(
        1.25, ge=1, description="How much sharper a later face of a track must be to be sent."
    )
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = Field(
        "auto",
        description="Scrambler backend. `auto`: TensorRT on a GPU when installed, else ONNX "
        "Runtime, else torch.",
    )
    detector_backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = Field(
        "auto",
        description="Face detector (MTCNN) runtime. `torch`: facenet-pytorch's eager MTCNN, "
        "the reference; `onnxruntime` and `tensorrt`: the same networks exported to ONNX, "
        "with the same pyramid, thresholds and NMS. `auto`: TensorRT on a GPU when installed, "
        "else ONNX Runtime, else torch.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where torch and ONNX Runtime run the detector and the scrambler (`auto`: "
        "the GPU when there is one).",
    )
    threads: int = Field(
        0,
        ge=0,
        le=256,
        description="CPU threads of torch (torch MTCNN, torch SN) and ONNX Runtime; 0 keeps "
        "their defaults (all cores). With several agents on one machine, split the cores.",
    )
    spool_dir: UserPath = Field(
        Path("~/.local/share/rllfpr/agent"),
        description="Directory of the store-and-forward spool (`{agent id}.sqlite3`, mode "
        "0600). It holds only encoded, scrambled face messages.",
    )
    spool_max_messages: int = Field(
        20_000, ge=1, description="Spool bound in messages; the oldest are dropped (counted)."
    )
    spool_max_mb: float = Field(
        256.0, gt=0, description="Spool bound in megabytes of payload; oldest dropped first."
    )
    max_inflight: int = Field(
        32, ge=1, le=1024, description="Face messages published and not yet acknowledged."
    )
    key_settle_s: float = Field(
        0.3,
        ge=0,
        le=10,
        description="Key messages are applied after this quiet time, sorted (revocations, then "
        "bundles by epoch, then announcements): retained topics arrive in any order.",
    )
    metrics_host: str = Field("127.0.0.1", description="Address of /metrics and /healthz.")
    metrics_port: int = Field(
        9108, ge=0, le=65535, description="Port of /metrics and /healthz; 0 picks a free one."
    )
    stale_after_s: float = Field(
        30.0,
        gt=0,
        description="/healthz answers 503 when no frame was read for this long.",
    )
    status_interval_s: float = Field(
        30.0,
        ge=1,
        description="The retained status is published again this often while connected, with "
        "fresh figures (frame rate, faces published, spool depth): consoles tell a silent agent "
        "from a live one by its age.",
    )


class RedisSettings(Section):
    """Connection to the Redis >= 8 server holding the vector-set galleries."""

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL; `rediss://` for TLS. Credentials may be given here or below.",
    )
    username: str | None = Field(None, description="ACL username.")
    password: SecretStr | None = Field(None, description="ACL password.")
    cluster: bool = Field(
        False,
        description="The server is a Redis Cluster: `url` names one of its nodes and the client "
        "finds the others. Gallery shards spread over the primaries (see `recognizer.shards`).",
    )
    key_prefix: str = Field(
        "rllfpr",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Prefix of every Redis key this project writes (no braces: the keys carry "
        "Redis Cluster hash tags after it).",
    )
    ca_file: UserPath | None = Field(
        None, description="CA certificate that signed the server's one (with `rediss://`)."
    )
    cert_file: UserPath | None = Field(
        None, description="Client certificate, when the server requires mutual TLS."
    )
    key_file: UserPath | None = Field(None, description="Private key of `cert_file`.")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis url must start with redis://, rediss:// or unix://")
        return url


class KeySettings(Section):
    """Where key material lives on this machine."""

    directory: UserPath = Field(
        Path("~/.local/share/rllfpr/keys"),
        description="Directory of key bundles and the local key state (created with mode 0700).",
    )
    trusted_signers: list[UserPath] = Field(
        default_factory=list,
        description="Ed25519 public keys (PEM) whose bundle signatures are accepted.",
    )
    fleet_key_file: UserPath | None = Field(
        None,
        description="32-byte AES-256-GCM key (raw or hex) that decrypts bundles for this scope.",
    )
    scope: ScopeName = Field(
        "fleet",
        description="Key scope this process belongs to: `fleet` or a site name.",
    )
    max_clock_skew_s: int = Field(
        300, ge=0, description="Bundles created further in the future than this are rejected."
    )
    accept_format_1: bool = Field(
        False,
        description="Accept key bundles of format 1, which carry their key's seed in the "
        "public header: anyone who has seen such a bundle can rebuild its key. Only to keep a "
        "fleet scrambling until its first format-2 epoch is active; each use is logged as a "
        "warning.",
    )


class ConsoleSettings(Section):
    """The operator's console: web pages at `/` of the recognizer's HTTP server."""

    enabled: bool = Field(
        True,
        description="Serve the console. Logging in needs `recognizer.api_token`; without one "
        "every console page answers 503.",
    )
    session_ttl_s: int = Field(
        8 * 3600,
        ge=60,
        description="A console session (cookie) ends this long after logging in.",
    )
    recent_events: int = Field(
        200, ge=10, le=10_000, description="Recognition events kept in memory for the Live page."
    )
    face_retention_s: int = Field(
        300,
        ge=0,
        description="The scrambled face of each recognition face message is kept in Redis this "
        "long, so the Live page can show what a decision was made from; 0 keeps none. Redis "
        "holds faces per second x this x about 5.3 KB at 64 px (a 4.5 KB message; 13 KB at "
        "112 px).",
    )
    agent_stale_after_s: float = Field(
        95.0,
        gt=0,
        description="An agent whose latest status is older than this is flagged stale (agents "
        "republish it every `agent.status_interval_s`).",
    )


class HomeAssistantSettings(Section):
    """Home Assistant MQTT discovery: each camera becomes a device with two entities."""

    enabled: bool = Field(
        False,
        description="Publish retained discovery configs for every camera of every agent status "
        "seen, and remove them when the camera disappears.",
    )
    discovery_prefix: str = Field(
        "homeassistant",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Home Assistant's MQTT discovery prefix.",
    )
    unknown_off_delay_s: int = Field(
        30,
        ge=1,
        description="The `unknown person` binary sensor turns off this long after the latest "
        "unknown decision of its camera.",
    )
    settle_s: float = Field(
        1.0,
        ge=0,
        le=30,
        description="Wait after subscribing, for the retained statuses and discovery configs, "
        "before adding or removing entities.",
    )


class RecognizerSettings(Section):
    """The recognizer service: MQTT consumer, gallery, open-set decisions, HTTP API."""

    scopes: list[ScopeName] = Field(
        default_factory=lambda: ["fleet"],
        description="Key scopes served: `fleet`, or the sites whose per-site keys this "
        "recognizer holds models for. Faces of other scopes are rejected.",
    )
    model_store: UserPath = Field(
        Path("~/.local/share/rllfpr/models"),
        description="Model store: one directory per key scope and epoch with the recognizer "
        "weights and its open-set calibration (`rllfpr/models/store.py`). No SN key is needed.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to embed faces: `auto` takes the GPU when there is one."
    )
    group: TopicLevel = Field(
        "recognizers",
        description="Shared-subscription group: replicas in one group split the faces.",
    )
    max_batch: int = Field(
        32,
        ge=1,
        le=1024,
        description="Faces per micro-batch. Keep it at most the broker's "
        "`max_inflight_messages`, which caps how many unacknowledged faces a consumer holds.",
    )
    max_wait_ms: float = Field(
        20.0, ge=0, description="Longest wait for a micro-batch to fill after its first face."
    )
    max_payload_bytes: int = Field(
        262_144,
        ge=1024,
        description="Larger MQTT payloads are rejected (acknowledged, counted) undecoded.",
    )
    quantization: Literal["Q8", "NOQUANT", "BIN"] = Field(
        "Q8", description="Vector-set quantization of newly created galleries (VADD)."
    )
    hnsw_m: int = Field(16, ge=4, le=128, description="HNSW links per node (VADD M).")
    build_ef: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Exploration factor of an insertion (VADD EF): lower enrolls faster and "
        "builds a sparser graph; null keeps Redis' default (200).",
    )
    search_ef: int = Field(
        200, ge=1, description="VSIM exploration factor: higher is slower and more exact."
    )
    search_count: int = Field(
        20, ge=2, le=1000, description="Templates fetched per gallery shard by one VSIM."
    )
    candidates: int = Field(5, ge=2, le=50, description="Subjects listed in an event.")
    shards: int = Field(
        1,
        ge=1,
        le=256,
        description="Vector sets per gallery; templates spread over them by id, searches "
        "merge the shards' top results.",
    )
    threshold: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="Override of the calibrated open-set threshold of every model that scores "
        "raw cosines.",
    )
    min_margin: float | None = Field(
        None,
        ge=0,
        le=2,
        description="Override of the calibrated best-minus-runner-up margin of every model that "
        "scores raw cosines.",
    )
    s_norm_threshold: float | None = Field(
        None,
        allow_inf_nan=False,
        description="Override of the calibrated open-set threshold of every model that scores "
        "by S-norm (a cohort ships with it), in standard deviations.",
    )
    s_norm_min_margin: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="Override of the calibrated margin of every model that scores by S-norm.",
    )
    consensus_faces: int = Field(
        3, ge=1, le=100, description="A track is decided after this many faces..."
    )
    consensus_timeout_ms: float = Field(
        1500.0, gt=0, description="...or this long after its first undecided face."
    )
    consensus_lease_s: float = Field(
        30.0,
        gt=0,
        description="A decided round whose event is not confirmed within this time is "
        "published again (same event id) by any replica.",
    )
    track_idle_s: int = Field(
        600, ge=10, description="Track state in Redis expires after this long without faces."
    )
    max_templates_per_subject: int = Field(
        20, ge=1, description="Enrolling more evicts the subject's oldest templates."
    )
    template_retention_days: float | None = Field(
        365.0, gt=0, description="Templates older than this are deleted (null: keep)."
    )
    event_expiry_s: int = Field(3600, ge=1, description="MQTT message expiry of published events.")
    audit_max_entries: int = Field(
        1_000_000, ge=100, description="Audit stream length cap (oldest entries trimmed)."
    )
    audit_retention_days: float = Field(
        90.0, gt=0, description="Audit entries older than this are trimmed."
    )
    maintenance_interval_s: float = Field(
        60.0, gt=0, description="Period of the retention sweep and of model-store rescans."
    )
    redis_retry_initial_s: float = Field(
        0.2, gt=0, description="First back-off after a Redis error; doubles up to the maximum."
    )
    redis_retry_max_s: float = Field(5.0, gt=0, description="Longest back-off between retries.")
    publish_timeout_s: float = Field(
        10.0, gt=0, description="How long to wait for the broker to confirm an event (PUBACK)."
    )
    http_host: str = Field("127.0.0.1", description="Address of the HTTP API.")
    http_port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP API (0: any).")
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token of the gallery-management API and the console's login; "
        "without one those endpoints answer 503.",
    )
    console: ConsoleSettings = Field(
        default_factory=ConsoleSettings, description="The operator's console."
    )
    homeassistant: HomeAssistantSettings = Field(
        default_factory=HomeAssistantSettings, description="Home Assistant MQTT discovery."
    )


class TrainerSettings(Section):
    """The trainer: builds, signs and publishes key epochs (keep this machine offline-capable)."""

    signing_key_file: UserPath | None = Field(
        None,
        description="Ed25519 private key (PEM, from `rllfpr keys init`) that signs bundles and "
        "key announcements; refused unless readable by its owner only.",
    )
    rotation_config: UserPath | None = Field(
        None,
        description="RotationConfig YAML: corpus, recipe and gates of every new epoch "
        "(`deploy/config/rotation.yaml` is the deployed one); `rllfpr keys rotate` needs it.",
    )
    work_directory: UserPath = Field(
        Path("~/.local/share/rllfpr/trainer"),
        description="Built epochs (sealed bundles, gate reports) and their training runs.",
    )


class Settings(BaseSettings):
    """Root of the configuration tree, shared by the agent, the recognizer and the trainer."""

    model_config = SettingsConfigDict(
        env_prefix="RLLFPR_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data: UserPath = Field(
        Path("../shared/data"),
        description="Root of the face datasets (`lfw/`, `att_orl/`, `yalefaces/`).",
    )
    cache: UserPath = Field(
        Path("~/.cache/rllfpr"),
        description="Cache outside the repository: aligned datasets, builds, trained models.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Logging level of every program."
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="MQTT broker.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis store.")
    keys: KeySettings = Field(default_factory=KeySettings, description="Key material.")
    agent: AgentSettings = Field(default_factory=AgentSettings, description="Edge agent.")
    recognizer: RecognizerSettings = Field(
        default_factory=RecognizerSettings, description="Recognizer service."
    )
    trainer: TrainerSettings = Field(
        default_factory=TrainerSettings, description="Trainer and key rotation."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        unknown = unknown_environment(os.environ)
        if unknown:
            raise ConfigError(
                f"unknown environment variable{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)}: not a setting (`rllfpr config show` lists them; "
                "sections take two underscores, e.g. RLLFPR_MQTT__HOST)"
            )
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        document = _config_document.get()
        if document is not None:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=document))
        return tuple(sources)


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """The ``RLLFPR_`` variables of ``environ`` that name no setting (a field, or a section
    followed by ``__``, whose keys the section itself checks) and are not ``NOT_SETTINGS``."""
    prefix = "RLLFPR_"
    fields = {name.upper(): field for name, field in Settings.model_fields.items()}
    sections = {
        name
        for name, field in fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }
    unknown = []
    for variable in environ:
        upper = variable.upper()
        if not upper.startswith(prefix) or upper in NOT_SETTINGS:
            continue
        name = upper[len(prefix) :]
        section, nested, _ = name.partition("__")
        if (nested and section in sections) or (not nested and name in fields):
            continue
        unknown.append(variable)
    return sorted(unknown)


def read_config_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path``; raises ``ConfigError`` for anything else: unreadable,
    larger than ``MAX_CONFIG_BYTES``, not UTF-8, not YAML, not a mapping with string keys, or
    expanding (through aliases) to more than ``MAX_CONFIG_NODES`` values."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
        document = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from error
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections, not {type(document).__name__}"
        )
    pending: list[Any] = [document]
    for _ in range(MAX_CONFIG_NODES):
        if not pending:
            return document
        node = pending.pop()
        if isinstance(node, dict):
            if not all(isinstance(key, str) for key in node):
                raise ConfigError(f"config file {path}: every key must be a string")
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    raise ConfigError(f"config file {path} expands to more than {MAX_CONFIG_NODES} values")


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings: defaults < ``config_file`` (or ``$RLLFPR_CONFIG``) < environment < overrides.

    Raises ``ConfigError`` naming the file and every invalid or unknown key.
    """
    path = config_file or os.environ.get(CONFIG_FILE_ENV) or None
    resolved = Path(path).expanduser() if path else None
    if resolved is not None and not resolved.is_file():
        raise ConfigError(f"config file not found: {resolved}")
    token = _config_document.set(read_config_file(resolved) if resolved else None)
    try:
        return Settings(**overrides)
    except ValueError as error:
        where = f" (config file {resolved})" if resolved else ""
        raise ConfigError(f"invalid configuration{where}:\n{error}") from error
    finally:
        _config_document.reset(token)
