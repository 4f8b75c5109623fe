"""The gate's configuration: one validated model, read from YAML.

The embedded defaults live in ``angiogate/config.yaml`` (the only place they
are written). A site file names only what it changes; it is merged over the
defaults key by key and the result validated here. Unknown keys and wrong
values are errors naming the key, so a typo never silently becomes a default.

Every command finds the site file the same way (`find_config`): `--config`,
else the file named by ANGIOGATE_CONFIG, else /etc/angiogate/angiogate.yaml
when it exists, else none (the embedded defaults alone).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_serializer,
                      field_validator, model_validator)

DB_PASSWORD_ENV = "ANGIOGATE_DB_PASSWORD"
CONFIG_ENV = "ANGIOGATE_CONFIG"
SYSTEM_CONFIG = Path("/etc/angiogate/angiogate.yaml")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: no backslash


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"not a valid AE title (1-16 printable characters, no backslash): {value!r}")
    return value.strip()


class DestinationTls(_Strict):
    """DICOM TLS toward one peer (angiogate/dicom/tls.py builds the context)."""
    enabled: bool = False
    ca_certificates: Path | None = None  # CAs that sign the peer's certificate; None: the system's
    certificate: Path | None = None  # the gate's client certificate, if the peer asks for one
    private_key: Path | None = None
    check_hostname: bool = True  # the peer's certificate must name server_name (or host)
    server_name: str | None = None  # the name to verify and send (SNI); None: the destination's host

    @field_validator("ca_certificates", "certificate", "private_key")
    @classmethod
    def _file_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("enabled") and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _key_with_certificate(self) -> "DestinationTls":
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together (the gate's client certificate "
                             "and its key): set both or neither")
        return self


class Destination(_Strict):
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    key_objects: bool = False  # also send a Key Object Selection document per judged series
    tls: DestinationTls = DestinationTls()

    @field_validator("ae_title")
    @classmethod
    def _valid_ae(cls, value: str) -> str:
        return _check_ae(value)


class StorageCommitment(_Strict):
    """Storage Commitment Push Model as SCP (see angiogate/receive/commitment.py)."""
    enabled: bool
    report_delay_s: float = Field(ge=0, le=60)
    peers: list[Destination]


# `tls_subject` attribute names (OpenSSL's short names) and the names Python's ssl gives them.
SUBJECT_ATTRIBUTES = {"CN": "commonName", "O": "organizationName", "OU": "organizationalUnitName",
                      "C": "countryName", "L": "localityName", "ST": "stateOrProvinceName",
                      "DC": "domainComponent", "EMAILADDRESS": "emailAddress", "E": "emailAddress",
                      "SERIALNUMBER": "serialNumber", "UID": "userId"}


def tls_subject_attributes(text: str) -> tuple[frozenset[tuple[str, str]], bool]:
    """A `tls_subject` as (attribute, value) pairs and whether they are the whole subject.

    "CATHLAB1" is the common name alone (other attributes may be there too);
    "CN=CATHLAB1, O=St Mary" is the whole subject, in any order (a comma in a
    value is written "\\,"). Raises ValueError for an unknown attribute name.
    """
    text = text.strip()
    if "=" not in text:
        return frozenset({("commonName", text)}), False
    pairs = []
    for part in re.split(r"(?<!\\),", text):
        name, sep, value = part.partition("=")
        attribute = SUBJECT_ATTRIBUTES.get(name.strip().upper())
        if not sep or attribute is None or not value.strip():
            raise ValueError(f"not a subject such as \"CN=CATHLAB1, O=Hospital\" (attributes "
                             f"{', '.join(sorted(SUBJECT_ATTRIBUTES))}): {text!r}")
        pairs.append((attribute, value.strip().replace("\\,", ",")))
    return frozenset(pairs), True


class AllowedPeer(_Strict):
    """One allow-list entry: a calling AE title, a source address or network, or both;
    optionally binding the AE title to a TLS client certificate (its subject or its
    SHA-256 fingerprint)."""
    ae_title: str | None = None
    address: str | None = None
    tls_subject: str | None = None
    cert_sha256: str | None = None

    @field_validator("tls_subject")
    @classmethod
    def _valid_subject(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("empty subject")
        tls_subject_attributes(value)
        return value.strip()

    @field_validator("cert_sha256")
    @classmethod
    def _valid_fingerprint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = re.sub(r"[\s:]", "", str(value)).lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digits):
            raise ValueError(f"not a SHA-256 fingerprint (64 hex digits, colons allowed): {value!r}")
        return digits

    @property
    def binds_certificate(self) -> bool:
        return self.tls_subject is not None or self.cert_sha256 is not None

    @field_validator("ae_title")
    @classmethod
    def _valid_ae(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae(value)

    @field_validator("address")
    @classmethod
    def _valid_network(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"not an IP address or CIDR network: {value!r}") from exc

    @model_validator(mode="after")
    def _not_empty(self) -> "AllowedPeer":
        if self.ae_title is None and self.address is None:
            raise ValueError("an allowed peer needs an ae_title, an address, or both")
        if self.binds_certificate and self.ae_title is None:
            raise ValueError("tls_subject and cert_sha256 bind a client certificate to an ae_title: "
                             "name the ae_title")
        return self


class Tls(_Strict):
    enabled: bool
    certificate: Path | None
    private_key: Path | None
    ca_certificates: Path | None
    require_client_certificate: bool

    @model_validator(mode="after")
    def _complete(self) -> "Tls":
        if self.enabled:
            missing = [k for k in ("certificate", "private_key") if getattr(self, k) is None]
            if self.require_client_certificate and self.ca_certificates is None:
                missing.append("ca_certificates (needed by require_client_certificate)")
            if missing:
                raise ValueError("tls is enabled but these are not set: " + ", ".join(missing))
        return self


class Forwarding(_Strict):
    retry_base_s: float = Field(gt=0)
    retry_cap_s: float = Field(gt=0)
    max_attempts: int = Field(ge=0)
    idle_release_s: float = Field(ge=0)
    connect_timeout_s: float = Field(gt=0)
    key_object_quiet_s: float = Field(ge=0)


class Policies(_Strict):
    mode: Literal["enforce", "shadow"]
    non_cine: Literal["forward", "hold"]
    on_error: Literal["forward", "hold"]


class Rules(_Strict):
    modalities: list[str]
    sop_classes: list[str]
    min_frame_rate_hz: float = Field(gt=0)
    max_frame_rate_hz: float = Field(gt=0)
    assumed_frame_rate_hz: float = Field(gt=0)
    require_frame_rate: bool
    min_frames: int = Field(ge=1)
    min_duration_s: float = Field(ge=0)
    max_frames: int = Field(ge=1)
    max_rows: int = Field(ge=1)
    max_columns: int = Field(ge=1)
    series_description_include: list[str]
    series_description_exclude: list[str]
    max_clips_per_study: int | None = Field(ge=1)
    min_contrast_arrival: float | None = Field(ge=0, le=1)

    @field_validator("series_description_include", "series_description_exclude")
    @classmethod
    def _regexes_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return patterns


class Frames(_Strict):
    window_start_s: float = Field(ge=0)
    sample_rate_hz: float = Field(gt=0)
    samples: int = Field(ge=1, le=256)
    size: int = Field(ge=16, le=1024)


class Model(_Strict):
    path: str
    promoted_path: Path
    reload_check_s: float = Field(gt=0)
    device: Literal["auto", "cpu", "cuda"]
    engine: Literal["auto", "torch", "openvino"]
    precision: Literal["auto", "fp32", "bf16", "int8"]
    performance_hint: Literal["latency", "throughput"]
    threshold: float | None = Field(ge=0, le=1)
    threads: int = Field(ge=0)
    export_dir: Path | None
    agreement_max_auc_difference: float = Field(ge=0, le=1)
    agreement_min_identical_decisions: float = Field(ge=0, le=1)
    int8_preset: Literal["performance", "mixed"]
    int8_bias_correction: Literal["none", "fast", "exact"]
    int8_fp32_types: list[str]
    recheck_phantoms_per_kind: int = Field(ge=0, le=1000)
    recheck_phantom_size: int = Field(ge=32, le=2048)

    @model_validator(mode="after")
    def _engine_fits(self) -> "Model":
        if self.engine == "torch" and self.precision in ("bf16", "int8"):
            raise ValueError(f"model.precision {self.precision} needs model.engine openvino or auto: "
                             f"the torch engine runs fp32 only")
        if self.engine == "openvino" and self.device == "cuda":
            raise ValueError("model.engine openvino runs on the CPU: model.device cuda needs model.engine "
                             "torch or auto")
        return self

    @property
    def export_folder(self) -> Path:
        """Where OpenVINO exports go when the checkpoint's own folder is not writable."""
        return self.export_dir if self.export_dir is not None else self.promoted_path.parent / "openvino"


class Workers(_Strict):
    poll_interval_s: float = Field(gt=0)
    lease_s: float = Field(gt=0)
    decode_threads: int = Field(ge=1, le=64)
    judge_batch: int = Field(ge=1, le=256)


class Web(_Strict):
    """The review web app, health and metrics (angiogate.web)."""
    enabled: bool
    bind_address: str
    port: int = Field(ge=0, le=65535)
    secret_key_file: Path
    session_max_age_s: int = Field(ge=60)
    secure_cookies: bool
    trusted_user_header: str | None
    trusted_proxies: list[str]
    cache_dir: Path
    page_size: int = Field(ge=5, le=1000)

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_proxies(cls, values: list[str]) -> list[str]:
        networks = []
        for value in values:
            try:
                networks.append(str(ipaddress.ip_network(str(value).strip(), strict=False)))
            except ValueError as exc:
                raise ValueError(f"not an IP address or CIDR network: {value!r}") from exc
        return networks

    @model_validator(mode="after")
    def _header_needs_proxies(self) -> "Web":
        if self.trusted_user_header and not self.trusted_proxies:
            raise ValueError("trusted_user_header is set but trusted_proxies is empty: the header "
                             "would be honoured from nobody; list the reverse proxy's address")
        return self


class SpoolSettings(_Strict):
    """Retention and the free-space watermark (angiogate/store/retention.py, free_space.py)."""
    min_free_bytes: int = Field(ge=0)
    forwarded_days: float = Field(ge=0)
    held_days: float = Field(ge=0)
    labelled_days: float = Field(ge=0)
    orphan_grace_h: float = Field(gt=0)
    prune_interval_s: float = Field(ge=0)


class Config(_Strict):
    ae_title: str
    port: int = Field(ge=0, le=65535)
    bind_address: str
    max_pdu_bytes: int = Field(ge=4096, le=16 * 1024 * 1024)
    require_called_ae_title: bool
    network_timeout_s: float = Field(gt=0)
    max_associations: int = Field(ge=1)
    association_deadline_s: float = Field(gt=0)
    max_pending_connections: int = Field(ge=1)
    max_object_bytes: int = Field(ge=1024)
    allowed_peers: list[AllowedPeer]
    tls: Tls
    storage_commitment: StorageCommitment
    database_url: str
    spool_dir: Path
    spool: SpoolSettings
    destinations: list[Destination]
    outbox_dir: Path
    calling_ae_title: str
    forwarding: Forwarding
    policies: Policies
    rules: Rules
    frames: Frames
    model: Model
    workers: Workers
    web: Web
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    umask: int
    gate_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,40}$")

    @model_validator(mode="after")
    def _bindings_need_verified_certificates(self) -> "Config":
        bound = [f"allowed_peers.{i}" for i, p in enumerate(self.allowed_peers) if p.binds_certificate]
        if bound and not (self.tls.enabled and self.tls.ca_certificates is not None):
            raise ValueError(f"{', '.join(bound)} bind(s) a client certificate (tls_subject / cert_sha256), "
                             "which needs tls.enabled with tls.ca_certificates: without them no client "
                             "certificate is verified and every association of that AE title is refused")
        return self

    def serving_threads(self) -> int:
        """Inference threads of the engine that judges (`model.threads`; 0: the CPU cores
        the prepare threads, `workers.decode_threads`, leave, at least one).

        The prepare threads decode the next clips while the model runs, so on a
        2-core machine a second inference thread only competes with them: OpenVINO
        fp32 with 2 threads took 77-82 ms of CPU per clip, with 1 thread 49-61 ms
        (same process, alternating, a loaded 2-core EPYC), its idle workers
        spinning in sched_yield for the rest."""
        if self.model.threads:
            return self.model.threads
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        return max(1, cores - self.workers.decode_threads)

    def gate_name(self) -> str:
        """This gate's name among gates sharing a verdict log: `gate_id`, or host name and port."""
        if self.gate_id:
            return self.gate_id
        host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:34]
        return f"{host}-{self.port}"

    @field_validator("umask", mode="before")
    @classmethod
    def _octal_umask(cls, value: Any) -> int:
        # Octal as written ("0027", "0o027"); YAML's own 0027 arrives as the int it means.
        if isinstance(value, str):
            text = value.strip().lower().removeprefix("0o")
            if not re.fullmatch(r"[0-7]{1,4}", text):
                raise ValueError(f"not an octal umask such as \"0027\": {value!r}")
            value = int(text, 8)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
            raise ValueError(f"not a umask between 0000 and 0777: {value!r}")
        return value

    @field_serializer("umask")
    def _umask_as_octal(self, value: int) -> str:
        return f"{value:04o}"

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _valid_ae(cls, value: str) -> str:
        return _check_ae(value)

    def database_url_with_password(self) -> str:
        """The URL to connect with: the password comes from the environment."""
        from sqlalchemy.engine import make_url

        url = make_url(self.database_url)
        password = os.environ.get(DB_PASSWORD_ENV)
        if password and url.password is None and not url.drivername.startswith("sqlite"):
            url = url.set(password=password)
        return url.render_as_string(hide_password=False)

    def database_url_for_log(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.database_url).render_as_string(hide_password=True)


def default_yaml() -> dict[str, Any]:
    """The embedded defaults as a plain dict."""
    text = resources.files("angiogate").joinpath("config.yaml").read_text(encoding="utf-8")
    # libyaml's parser when PyYAML has it: about 1 ms for this file, not 20-50 (pure Python) at
    # every start. The values are the same: one Python resolver types them (test_config checks).
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


# Keys that moved: a site file naming the old one is told the new one.
_RENAMED = {"web.ready_min_free_bytes": "spool.min_free_bytes (one watermark: C-STORE is refused and "
                                        "/health/ready fails below it)"}


def _merge(base: dict[str, Any], override: dict[str, Any], path: str = "") -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if where in _RENAMED:
            raise ConfigError(f"configuration key '{where}' is now {_RENAMED[where]}")
        if key not in base:
            raise ConfigError(f"unknown configuration key '{where}'")
        if isinstance(base[key], dict) and isinstance(value, dict):
            merged[key] = _merge(base[key], value, where + ".")
        else:
            merged[key] = value
    return merged


def _resolve_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    data = dict(data)
    def resolve(value) -> Path:
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else (base_dir / path)

    for key in ("spool_dir", "outbox_dir"):
        data[key] = resolve(data[key])
    if isinstance(data.get("web"), dict):
        data["web"] = dict(data["web"])
        for key in ("secret_key_file", "cache_dir"):
            if data["web"].get(key) is not None:
                data["web"][key] = resolve(data["web"][key])
    data["model"] = dict(data["model"], promoted_path=resolve(data["model"]["promoted_path"]))
    if data["model"].get("export_dir") is not None:
        data["model"]["export_dir"] = resolve(data["model"]["export_dir"])
    def resolve_tls(tls: Any) -> Any:
        if not isinstance(tls, dict):
            return tls
        return {k: (resolve(v) if k in ("certificate", "private_key", "ca_certificates") and v is not None
                    else v) for k, v in tls.items()}

    def resolve_peers(peers: Any) -> Any:
        if not isinstance(peers, list):
            return peers
        return [dict(p, tls=resolve_tls(p["tls"])) if isinstance(p, dict) and "tls" in p else p for p in peers]

    data["tls"] = resolve_tls(data.get("tls"))
    data["destinations"] = resolve_peers(data.get("destinations"))
    if isinstance(data.get("storage_commitment"), dict):
        data["storage_commitment"] = dict(data["storage_commitment"],
                                          peers=resolve_peers(data["storage_commitment"].get("peers")))
    if data["model"]["path"] not in ("auto", "bundled", "none"):
        data["model"]["path"] = str(resolve(data["model"]["path"]))
    # A relative SQLite file is relative to the config's folder. Parsed here, not by SQLAlchemy,
    # whose import (about 0.3 s) `angiogate score` would otherwise pay for a URL it never opens.
    sqlite = _SQLITE_URL.match(str(data["database_url"]))
    if sqlite and sqlite["database"] and sqlite["database"] != ":memory:":
        database = Path(sqlite["database"]).expanduser()
        if not database.is_absolute():
            data["database_url"] = (f"{sqlite['scheme']}:///{(base_dir / database).resolve()}"
                                    f"{sqlite['query'] or ''}")
    return data


_SQLITE_URL = re.compile(r"^(?P<scheme>sqlite(\+\w+)?):///(?P<database>[^?]*)(?P<query>\?.*)?$")


def find_config(explicit: str | os.PathLike[str] | None = None) -> tuple[Path | None, str]:
    """The site file every command reads, and how it was found (for `check-config` and the log)."""
    if explicit is not None:
        return Path(explicit), "--config"
    named = os.environ.get(CONFIG_ENV, "").strip()
    if named:
        return Path(named), CONFIG_ENV
    if SYSTEM_CONFIG.is_file():
        return SYSTEM_CONFIG, "the system default"
    return None, "no site file: the embedded defaults"


def load_site_config(explicit: str | os.PathLike[str] | None = None, **overrides: Any) -> Config:
    """`load_config` of the site file `find_config` finds."""
    return load_config(find_config(explicit)[0], **overrides)


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Config:
    """Load the defaults, lay the site file and then ``overrides`` over them.

    Relative paths resolve against the site file's folder, or the working
    directory when there is no site file. Raises ConfigError naming the key.
    """
    data = default_yaml()
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            site = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(site, dict):
            raise ConfigError(f"config file {path} must be a mapping of keys to values")
        data = _merge(data, site)
        base_dir = path.resolve().parent
    data = _merge(data, overrides)
    data = _resolve_paths(data, base_dir)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            problems.append(f"'{key}': {err['msg']}" if key else err["msg"])
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from exc
