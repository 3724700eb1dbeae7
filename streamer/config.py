"""Configuration: a JSON file decoded into Structs, with STREAMER_<SECTION>_<KEY> overrides.

Every setting has a default, so `streamer run` works with environment variables alone.
Every command finds the file the same way (`locate`): --config, STREAMER_CONFIG, the
user's file, the system's file.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import ssl
from collections.abc import Iterable, Mapping
from typing import Annotated, Literal, NamedTuple

import msgspec
from msgspec import Meta, Struct

MiB = 1024 * 1024
ENV_PREFIX = "STREAMER_"
CONFIG_VARIABLE = "STREAMER_CONFIG"
SYSTEM_CONFIG = "/etc/streamer/config.json"
# JSON has no comments: a key that starts with this is one, at the top or in a section,
# so a file can explain itself and a setting can be switched off by renaming it.
COMMENT = "//"
# How alike a mistyped name and a setting's must be (difflib's ratio) to be suggested,
# and how much less alike than the nearest the others suggested with it may be.
NEAR = 0.7
AS_NEAR = 0.08
# What Kubernetes puts in the environment of every pod in a namespace with a Service named
# `streamer` (or `streamer-...`): {NAME}_SERVICE_HOST, {NAME}_SERVICE_PORT[_PORTNAME],
# {NAME}_PORT=tcp://10.0.0.7:9108 and {NAME}_PORT_9108_TCP[_PROTO|_PORT|_ADDR].
SERVICE_LINK = re.compile(
    r"STREAMER(_[A-Z0-9_]+)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
    r"|PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)"
)
SERVICE_LINK_PORT = re.compile(r"STREAMER(_[A-Z0-9_]+)?_PORT")
SERVICE_LINK_URL = re.compile(r"(tcp|udp|sctp)://")
# Below this, a body paced in the smallest pieces waits long enough between pieces for
# S3 to drop the request as idle.
MIN_RATE = 8 * 1024
# host[:port]: a host name, an IPv4 address or a bracketed IPv6 address; nothing that
# urllib3 would refuse, or no resolver could find, when the first request is built.
ENDPOINT = re.compile(
    r"(?:(?P<name>[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?)|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
# How minio-py reads a host under amazonaws.com (its helpers._get_aws_info), which it
# refuses when the client is built, in every uploader, unless it is an S3 endpoint: not a
# bucket's own host (bucket.s3.amazonaws.com), not another service's.
AWS_HOST = re.compile(r".*\.amazonaws\.com(\.cn)?", re.IGNORECASE)
AWS_OTHER_HOST = re.compile(
    r"ec2-.*|(?!-)(?!_)[a-z_\d-]{1,63}(?<!-)(?<!_)\.(?!-)(?!_)[a-z_\d-]{1,63}(?<!-)(?<!_)"
    r"\.elb\.amazonaws\.com",
    re.IGNORECASE,
)
AWS_S3_HOST = re.compile(
    r"(?P<prefix>((bucket\.|accesspoint\.)vpce(-(?!_)[a-z_\d]+(?<!-)(?<!_))+\.s3\.)"
    r"|((?!s3)(?!-)(?!_)[a-z_\d-]{1,63}(?<!-)(?<!_)\.)s3-control(-(?!_)[a-z_\d]+(?<!-)(?<!_))*\."
    r"|(s3(-(?!_)[a-z_\d]+(?<!-)(?<!_))*\.))"
    r"((?!s3)(?!-)(?!_)[a-z_\d-]{1,63}(?<!-)(?<!_)\.)*amazonaws\.com(\.cn)?",
    re.IGNORECASE,
)
# As minio-py checks it when the client is built; ASCII, as a header must be.
REGION = re.compile(r"(?!_)(?!-)[a-z_\d-]{1,63}(?<!-)(?<!_)", re.IGNORECASE | re.ASCII)
# S3's rules for a bucket name (AWS's "Bucket naming rules"; MinIO and minio-py keep them
# too). A name outside them is refused as a bad request, which reads like bad credentials.
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
BUCKET_LIKE_IP = re.compile(r"[0-9]+(\.[0-9]+){3}")
BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# A key is at most 1024 bytes; what follows the prefix (instance, stream id, file name)
# takes at most about 300 of them.
MAX_PREFIX_BYTES = 512
# What no HTTP header can carry (the access key and session token go in one).
CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Seconds = Annotated[float, Meta(gt=0, le=86400)]
# 0: any free port, named in the `metrics_listening` log line.
ListenPort = Annotated[int, Meta(ge=0, le=65535)]
NonEmpty = Annotated[str, Meta(min_length=1)]
# S3 caps a single PUT at 5 GiB; below 64 KiB the per-object overhead dominates.
ChunkSize = Annotated[int, Meta(ge=64 * 1024, le=5 * 1024 * MiB)]


class Section(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class WatchConfig(Section):
    directory: NonEmpty = "/input"
    pattern: NonEmpty = "*.mp4"
    rescan_interval: Seconds = 10.0
    # Recordings in folders below the directory too, down to max_depth folders deep.
    recursive: bool = True
    max_depth: Annotated[int, Meta(ge=1, le=64)] = 8

    @property
    def depth(self) -> int:
        """How many folders deep recordings are looked for (0: the directory alone)."""
        return self.max_depth if self.recursive else 0


class StreamConfig(Section):
    chunk_size: ChunkSize = 10 * MiB
    idle_timeout: Seconds = 30.0
    assemble: bool = True
    # With assemble: keep the chunk objects once the whole object is proven in S3 (every
    # byte stored twice), or delete them then (once).
    keep_chunks: bool = True
    # Chunks in flight at once per uploader (its sender threads), shared by its streams:
    # one stream alone can use them all. The checkpoint still advances in chunk order.
    upload_window: Annotated[int, Meta(ge=1, le=16)] = 3
    # A stream whose steps have failed for this long without a success between is stuck
    # (a state, a gauge, an alert), not merely parked.
    stuck_after: Seconds = 3600.0


class S3Config(Section):
    endpoint: NonEmpty = "localhost:9000"
    bucket: str = "recordings"
    prefix: str = "streams"
    # Empty access and secret key: the AWS chain (AWS_* variables, the shared credentials
    # file, an instance or container role).
    access_key: str = ""
    secret_key: str = ""
    session_token: str = ""
    region: NonEmpty = "us-east-1"
    secure: bool = False
    ca_file: str = ""
    tls_skip_verify: bool = False
    # Over http, send chunks unsigned, checked by their CRC alone: no sha256 of every
    # byte, and no proof against a body changed on purpose on the way.
    unsigned_payload_over_http: bool = False
    sse: Annotated[str, Meta(pattern=r"^(none|s3|kms:\S+)$")] = "none"
    connect_timeout: Seconds = 5.0
    read_timeout: Seconds = 60.0
    retry_base: Seconds = 0.5
    retry_cap: Seconds = 30.0
    create_bucket: bool = True
    # The upload rate of all uploaders together, in bytes per second; 0: no cap.
    max_bytes_per_second: Annotated[int, Meta(ge=0)] = 0


class RetentionConfig(Section):
    # Delete a local file once every byte of it is proven in S3.
    delete_after_upload: bool = False
    # Also delete files whose stream finished `partial` (not a finished MP4).
    delete_partial: bool = False
    # Free-space guard: below either threshold, delete the oldest files proven in S3
    # until the watched filesystem is above both again. 0: off.
    min_free_bytes: Annotated[int, Meta(ge=0)] = 0
    min_free_percent: Annotated[float, Meta(ge=0, lt=100)] = 0.0
    # Seconds since a finished file's last write before it may be deleted: a recorder that
    # paused past the idle timeout may still come back to it.
    min_age: Annotated[float, Meta(ge=0, le=30 * 86400)] = 60.0

    @property
    def guarded(self) -> bool:
        return self.min_free_bytes > 0 or self.min_free_percent > 0

    @property
    def enabled(self) -> bool:
        return self.delete_after_upload or self.guarded


class CheckpointConfig(Section):
    path: NonEmpty = "/var/lib/streamer"
    map_size: Annotated[int, Meta(ge=MiB)] = 1024 * MiB


class MetricsConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: ListenPort = 9108


class WorkersConfig(Section):
    # Uploader processes.
    count: Annotated[int, Meta(ge=1, le=64)] = 2
    # An uploader whose heartbeat is older than this is killed and replaced (a read stuck
    # on a dead mount, a stopped process): no step of its loop, nor a read of a chunk,
    # legitimately takes this long.
    stall_timeout: Annotated[float, Meta(ge=5, le=3600)] = 60.0


class IntegrityConfig(Section):
    # The whole file's sha256 in metadata.json, beside the crc64nvme combined from its
    # chunks': one more pass of sha256 over every byte, for a proof any tool can check.
    file_sha256: bool = True


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class Config(Section):
    watch: WatchConfig = msgspec.field(default_factory=WatchConfig)
    stream: StreamConfig = msgspec.field(default_factory=StreamConfig)
    s3: S3Config = msgspec.field(default_factory=S3Config)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    checkpoint: CheckpointConfig = msgspec.field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    integrity: IntegrityConfig = msgspec.field(default_factory=IntegrityConfig)
    # This host's name in every object key, so hosts can share a bucket; empty: the host
    # name. Fixed in the checkpoint store at first start.
    # \Z: a "$" would let a trailing line break through.
    instance: Annotated[str, Meta(pattern=r"^[A-Za-z0-9._-]{0,64}\Z")] = ""
    workers: WorkersConfig = msgspec.field(default_factory=WorkersConfig)
    grace_period: Seconds = 20.0


SECRET_KEYS = frozenset({("s3", "secret_key"), ("s3", "session_token")})
# Settings that may come from a file named by <VARIABLE>_FILE, the Docker secrets convention.
FILE_KEYS = SECRET_KEYS | {("s3", "access_key")}
FILE_SUFFIX = "_FILE"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending setting."""


class Location(NamedTuple):
    """Where the configuration comes from: the file (None: there is none) and how it was
    found."""

    path: str | None
    found_by: str

    def __str__(self) -> str:
        if self.path is None:
            return f"no config file ({self.found_by}): the defaults and STREAMER_* variables"
        return f"{self.path} ({self.found_by})"


def user_config(environ: Mapping[str, str] = os.environ) -> str:
    """The user's config file: $XDG_CONFIG_HOME/streamer/config.json, by default
    ~/.config/streamer/config.json."""
    base = environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # the XDG Base Directory rule: a relative one is ignored
        base = os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "streamer", "config.json")


def locate(
    given: str | None, environ: Mapping[str, str] = os.environ, system: str = SYSTEM_CONFIG
) -> Location:
    """The config file every command reads: --config, else STREAMER_CONFIG, else the
    first of the user's and the system's config files that exists."""
    if given:
        return Location(given, "--config")
    if environ.get(CONFIG_VARIABLE):
        return Location(environ[CONFIG_VARIABLE], CONFIG_VARIABLE)
    user = user_config(environ)
    for path, found_by in ((user, "the user's config file"), (system, "the system's config file")):
        # A link to nothing counts: the file meant is missing, which must be said, not
        # passed over for another.
        if os.path.lexists(path):
            if path == user and os.path.lexists(system):
                # A trial's file (`make run` writes one) must not hide a service's unseen.
                found_by += f"; {system} is there too, and not read"
            return Location(path, found_by)
    return Location(None, f"none at {user} or {system}")


def load(path: str | None, environ: Mapping[str, str] = os.environ) -> Config:
    raw = _settings_in(_read_file(path), path) if path else {}
    return _build(raw, _env_overrides(environ))


def _build(raw: dict, overrides: dict) -> Config:
    if isinstance(raw.get("workers"), int):  # the count alone, as it was first written
        raw["workers"] = {"count": raw["workers"]}
    for (section, key), (_, value) in overrides.items():
        if section is None:
            raw[key] = value
        else:
            if not isinstance(raw.get(section, {}), dict):
                raise ConfigError(f"{section}: expected an object in the config file")
            raw.setdefault(section, {})[key] = value
    try:
        config = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), overrides)) from None
    _check(config)
    return config


def env_name(section: str | None, key: str) -> str:
    return ENV_PREFIX + (f"{section}_{key}" if section else key).upper()


def settings() -> list[tuple[str | None, str]]:
    """Every (section, key) the configuration knows, in declaration order."""
    result: list[tuple[str | None, str]] = []
    for field in msgspec.structs.fields(Config):
        if isinstance(field.default_factory, type) and issubclass(field.default_factory, Section):
            result += [(field.name, f.name) for f in msgspec.structs.fields(field.default_factory)]
        else:
            result.append((None, field.name))
    return result


def redacted(config: Config) -> dict:
    data = msgspec.to_builtins(config)
    for section, key in SECRET_KEYS:
        if data[section][key]:
            data[section][key] = "***"
    return data


def _read_file(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = msgspec.json.decode(f.read())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return data


# What `streamer config init` writes: the settings a new host looks at first, each
# section (and top-level setting) with its comment; the rest keep their defaults.
STARTING_SETTINGS = (
    ("watch", "directory"),
    ("watch", "pattern"),
    ("stream", "idle_timeout"),
    ("stream", "chunk_size"),
    ("s3", "endpoint"),
    ("s3", "bucket"),
    ("s3", "prefix"),
    ("s3", "access_key"),
    ("s3", "secret_key"),
    ("s3", "region"),
    ("s3", "secure"),
    ("retention", "delete_after_upload"),
    ("checkpoint", "path"),
    ("log", "format"),
    ("log", "level"),
    (None, "instance"),
)
STARTING_COMMENTS = {
    None: "streamer's configuration. Every key is optional: one left out keeps its default, "
    "and a STREAMER_<SECTION>_<KEY> variable wins over the file. A key that starts with // "
    "is a comment. Every setting: docs/configuration.md. `streamer config check` checks "
    "this file, `streamer config show` prints what every command uses.",
    "watch": "the directory recorders write into, and the names of the files to upload "
    "(a glob, case-insensitive)",
    "stream": "a recording is finished once unchanged for idle_timeout seconds (longer than "
    "your recorder's longest pause); chunk_size: bytes per chunk object",
    "s3": "where recordings go: endpoint is host[:port] without a scheme (secure: true for "
    "https); access_key and secret_key both empty: the AWS credential chain",
    "retention": "delete a local recording once every byte of it is proven in S3",
    "checkpoint": "the checkpoint store: a directory on a local disk (not NFS), kept across "
    "restarts",
    "log": "format: json or text; level: debug, info, warning or error",
    "instance": "this host's name in every key, so hosts can share a bucket; empty: the host name",
}
# Paths in a file read from anywhere: one given relative is written absolute.
PATH_SETTINGS = frozenset({("watch", "directory"), ("checkpoint", "path"), ("s3", "ca_file")})


def starting_file(values: Mapping[str, str]) -> bytes:
    """The commented JSON `streamer config init` writes, with `values` (dotted key: value,
    converted as the environment's are) set; refused like a config file if they are not
    valid."""
    given = {}
    for dotted, value in values.items():
        section, _, key = dotted.rpartition(".")
        setting = (section or None, key)
        if setting not in settings():
            raise ConfigError(_unknown_key(dotted, "setting", "--set", _names()))
        given[setting] = value if setting not in PATH_SETTINGS else os.path.abspath(value)
    raw: dict = {}
    for (section, key), value in given.items():
        (raw.setdefault(section, {}) if section else raw)[key] = value
    data = msgspec.to_builtins(_build(raw, {}))
    document = {COMMENT: STARTING_COMMENTS[None]}
    for section, key in settings():
        if (section, key) not in STARTING_SETTINGS and (section, key) not in given:
            continue
        if section is None:
            if key in STARTING_COMMENTS:
                document[f"{COMMENT} {key}"] = STARTING_COMMENTS[key]
            document[key] = data[key]
            continue
        if section not in document:
            comment = STARTING_COMMENTS.get(section)
            document[section] = {COMMENT: comment} if comment else {}
        document[section][key] = data[section][key]
    return msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"


def _names() -> set[str]:
    """Every setting as a file spells it: `stream.chunk_size`, `instance`."""
    return {f"{s}.{k}" if s else k for s, k in settings()}


def credential_source(config: Config, environ: Mapping[str, str] = os.environ) -> str:
    """Where the S3 credentials come from, for the start log and `config show`: never the
    values themselves."""
    if not config.s3.access_key:
        return "AWS chain (AWS_* variables, shared credentials file, instance or container role)"
    parts = []
    for key in ("access_key", "secret_key", "session_token"):
        name = env_name("s3", key)
        if name + FILE_SUFFIX in environ:
            parts.append(f"{key} from the file in {name}{FILE_SUFFIX}")
        elif name in environ:
            parts.append(f"{key} from {name}")
        elif getattr(config.s3, key):
            parts.append(f"{key} from the config file")
    return "static: " + ", ".join(parts)


def _env_overrides(environ: Mapping[str, str]) -> dict:
    known = {env_name(s, k): (s, k) for s, k in settings()}
    known[env_name(None, "workers")] = ("workers", "count")  # the count alone, as before
    from_files = {env_name(*key) + FILE_SUFFIX: key for key in FILE_KEYS}
    overrides = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_VARIABLE:
            continue
        if name in from_files:
            if name.removesuffix(FILE_SUFFIX) in environ:
                raise ConfigError(f"{name}: set either it or {name.removesuffix(FILE_SUFFIX)}")
            overrides[from_files[name]] = (name, _read_secret(name, value))
        elif _is_service_link(name, value):
            continue  # not ours, even where it has a setting's name (STREAMER_METRICS_PORT)
        elif name in known:
            overrides[known[name]] = (name, value)
        else:
            raise ConfigError(_unknown(name, [*known, *from_files]))
    return overrides


def _is_service_link(name: str, value: str) -> bool:
    if SERVICE_LINK.fullmatch(name):
        return True
    return bool(SERVICE_LINK_PORT.fullmatch(name) and SERVICE_LINK_URL.match(value))


def _unknown(name: str, known: list[str]) -> str:
    # The prefix all share would make every name look alike.
    near = _nearest(name.removeprefix(ENV_PREFIX), [k.removeprefix(ENV_PREFIX) for k in known])
    return f"{name}: unknown setting{_did_you_mean([ENV_PREFIX + n for n in near])}"


def _settings_in(data: dict, path: str) -> dict:
    """The file's settings, its comments left out; a key that is no setting is refused,
    naming the nearest settings."""
    names = _names()
    sections = {s for s, _ in settings() if s}
    raw = {}
    for key, value in data.items():
        if key.startswith(COMMENT):
            continue
        if key not in names and key not in sections:
            what = "section" if isinstance(value, dict) else "setting"
            raise ConfigError(_unknown_key(key, what, path, [*names, *sections]))
        if key in sections and isinstance(value, dict):
            value = {k: v for k, v in value.items() if not k.startswith(COMMENT)}
            for dotted in (f"{key}.{k}" for k in value):
                if dotted not in names:
                    raise ConfigError(_unknown_key(dotted, "setting", path, names))
        raw[key] = value
    return raw


def _unknown_key(dotted: str, what: str, where: str, known: Iterable[str]) -> str:
    key = dotted.rpartition(".")[2]
    # The right key in the wrong section (`bucket` in `stream`) is the likeliest mistake.
    elsewhere = sorted(name for name in known if name.rpartition(".")[2] == key)
    near = elsewhere[:3] or _nearest(dotted, known)
    return f"{dotted}: unknown {what} in {where}{_did_you_mean(near)}"


def _nearest(name: str, known: Iterable[str]) -> list[str]:
    """The one to three known names nearest to a mistyped one: the nearest, and those
    about as near as it."""
    scored = sorted(
        ((difflib.SequenceMatcher(None, name, k).ratio(), k) for k in known),
        key=lambda pair: (-pair[0], pair[1]),
    )
    if not scored or scored[0][0] < NEAR:
        return []
    return [k for ratio, k in scored[:3] if ratio >= scored[0][0] - AS_NEAR]


def _did_you_mean(names: list[str]) -> str:
    if not names:
        return " (every setting, and its variable: docs/configuration.md)"
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return f"; did you mean {listed}?"


def _read_secret(name: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            # Editors and `echo` end files with a newline that is not part of the secret.
            return f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{name}: cannot read {path}: {reason}") from None


def _explain(message: str, overrides: dict) -> str:
    # msgspec says "... - at `$.stream.chunk_size`"; name the setting the way users write it.
    text, _, where = message.rpartition(" - at ")
    if not text:
        return message
    dotted = where.strip("`").removeprefix("$.")
    parts = tuple(dotted.split(".", 1))
    key = (None, parts[0]) if len(parts) == 1 else parts
    source = f" (from {overrides[key][0]})" if key in overrides else ""
    return f"{dotted}{source}: {text}"


def bucket_name_problem(name: str) -> str | None:
    """What breaks S3's rules for a bucket name, or None if nothing does."""
    if not 3 <= len(name) <= 63:
        return "must be 3 to 63 characters long"
    if not BUCKET_NAME.fullmatch(name):
        return (
            "must hold only lowercase letters, digits, '.' and '-', and start and end with "
            "a letter or a digit"
        )
    if ".." in name or ".-" in name or "-." in name:
        return "must not hold '..', '.-' or '-.'"
    if BUCKET_LIKE_IP.fullmatch(name):
        return "must not be an IP address"
    for reserved in BUCKET_RESERVED_PREFIXES:
        if name.startswith(reserved):
            return f"must not start with {reserved!r} (reserved by S3)"
    for reserved in BUCKET_RESERVED_SUFFIXES:
        if name.endswith(reserved):
            return f"must not end with {reserved!r} (reserved by S3)"
    return None


def _check(config: Config) -> None:
    for setting, path in (
        ("watch.directory", config.watch.directory),
        ("checkpoint.path", config.checkpoint.path),
        ("s3.ca_file", config.s3.ca_file),
    ):
        if "\0" in path:
            raise ConfigError(f"{setting}: a path cannot contain a NUL character")
    _check_endpoint(config.s3)
    _check_object_names(config)
    s3 = config.s3
    if bool(s3.access_key) != bool(s3.secret_key):
        raise ConfigError(
            "s3.access_key, s3.secret_key: give both, or neither to use the AWS credential chain"
        )
    if s3.sse.startswith("kms:") and not s3.secure:
        raise ConfigError("s3.sse: SSE-KMS needs s3.secure=true (S3 refuses it over http)")
    if s3.ca_file and not s3.secure:
        raise ConfigError("s3.ca_file: set s3.secure=true too, or the CA is never used")
    if s3.unsigned_payload_over_http and s3.secure:
        raise ConfigError(
            "s3.unsigned_payload_over_http: for s3.secure=false only (over https chunks go "
            "unsigned already, TLS keeping them from being changed on the way)"
        )
    if s3.ca_file:
        _check_ca_file(s3.ca_file)
    for key in ("access_key", "session_token"):
        if CONTROL.search(getattr(s3, key)):
            raise ConfigError(
                f"s3.{key}: holds a control character (a line break?), which no request can carry"
            )
    if 0 < s3.max_bytes_per_second < MIN_RATE:
        raise ConfigError(
            f"s3.max_bytes_per_second: {s3.max_bytes_per_second} is below {MIN_RATE} "
            "(0 means no cap)"
        )
    if config.retention.delete_partial and not config.retention.enabled:
        raise ConfigError(
            "retention.delete_partial: has no effect without retention.delete_after_upload "
            "or a free-space threshold (retention.min_free_bytes, retention.min_free_percent)"
        )
    if "/" in config.watch.pattern:
        raise ConfigError("watch.pattern: a file name pattern cannot contain '/'")
    if not config.stream.keep_chunks and not config.stream.assemble:
        raise ConfigError(
            "stream.keep_chunks: false deletes chunks only once the assembled object is "
            "proven in S3, and stream.assemble is false, so nothing would ever be deleted: "
            "set stream.assemble=true, or stream.keep_chunks=true"
        )


def _check_endpoint(s3: S3Config) -> None:
    if "://" in s3.endpoint:
        raise ConfigError("s3.endpoint: give host[:port] without a scheme; set s3.secure for https")
    parts = ENDPOINT.fullmatch(s3.endpoint)
    if not parts or not _is_port(parts["port"]) or not _is_ipv6(parts["ipv6"]):
        raise ConfigError(
            f"s3.endpoint: {s3.endpoint!r} is not host[:port] (a host name, an IPv4 address "
            "or an [IPv6] address, and a port from 1 to 65535)"
        )
    if not REGION.fullmatch(s3.region):
        raise ConfigError(
            f"s3.region: {s3.region!r} is not a region name (letters, digits, '-' and '_', "
            "such as us-east-1)"
        )
    host = parts["name"] or ""
    if not AWS_HOST.fullmatch(host) or AWS_OTHER_HOST.fullmatch(host):
        return
    aws = AWS_S3_HOST.fullmatch(host)
    if not aws:
        raise ConfigError(
            f"s3.endpoint: {host} is not an S3 endpoint (s3.REGION.amazonaws.com); "
            "give the bucket in s3.bucket, not in the host"
        )
    if "s3-accesspoint" in aws["prefix"].lower() and not s3.secure:
        raise ConfigError("s3.endpoint: an S3 access point needs s3.secure=true")
    if "s3-accelerate" in aws["prefix"].lower() and "." in s3.bucket:
        raise ConfigError(
            f"s3.bucket: {s3.bucket!r} holds a '.', which an s3-accelerate endpoint refuses"
        )


def _is_port(port: str | None) -> bool:
    return port is None or 0 < int(port) <= 65535


def _is_ipv6(address: str | None) -> bool:
    if address is None:
        return True
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return True


def _check_object_names(config: Config) -> None:
    """Where every object goes: the bucket, and the s3.prefix and instance of its key."""
    s3 = config.s3
    if problem := bucket_name_problem(s3.bucket):
        raise ConfigError(f"s3.bucket: {s3.bucket!r} is not a bucket name: it {problem}")
    if config.instance in (".", ".."):
        raise ConfigError(
            f"instance: {config.instance!r} cannot be a segment of a key: "
            "S3 clients and servers refuse '.' and '..' there"
        )
    prefix = s3.prefix.strip("/")  # as the layout uses it
    try:
        size = len(prefix.encode())
    except UnicodeEncodeError:
        raise ConfigError("s3.prefix: is not UTF-8 text") from None
    if size > MAX_PREFIX_BYTES:
        raise ConfigError(
            f"s3.prefix: {size} bytes is too long: at most {MAX_PREFIX_BYTES}, so that every "
            "key fits in S3's 1024"
        )
    if "\0" in prefix:
        raise ConfigError("s3.prefix: a key cannot contain a NUL character")
    for segment in prefix.split("/") if prefix else ():
        if not segment:
            raise ConfigError(
                f"s3.prefix: {s3.prefix!r} has an empty segment ('//'), which S3 servers refuse"
            )
        if segment.strip() in (".", ".."):
            raise ConfigError(
                f"s3.prefix: {s3.prefix!r} has a {segment.strip()!r} segment: "
                "S3 clients and servers refuse '.' and '..' in a key"
            )


def _check_ca_file(path: str) -> None:
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError:
        raise ConfigError(f"s3.ca_file: {path} holds no PEM certificate") from None
    except OSError as exc:
        raise ConfigError(f"s3.ca_file: cannot read {path}: {exc.strerror}") from None
