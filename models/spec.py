"""The request spec: one server is the BMS create ``server`` body, plus orchestrator fields.

Field names are the API's own (``imageRef``, ``flavorRef``, ...), so a body that works with the
cloud works here. Rules come from the API reference, sections 5 and 11. A batch file is
``{name, defaults?, servers: [...]}``; ``defaults`` is merged into each server before checking,
and every error names its field path, e.g. ``servers[3].nics[0].subnet_id``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from models import bounds
from models.bounds import field_path

#: CJK, ASCII letters and digits, ``_ - .`` (section 5).
SERVER_NAME = re.compile(r"^[\u4e00-\u9fffA-Za-z0-9_.\-]+$")
#: One-dimension tags may not contain these (section 11); v1 tags refuse more (section 5).
NOVA_TAG_FORBIDDEN = set("/,")
SERVER_TAG_FORBIDDEN = set("=*<>\\,|/")
#: adminPass special characters (section 5).
PASSWORD_SPECIALS = set("!@$%^-_=+[{}]:,./?")
#: Tag the cloud puts on every bare metal server; the orchestrator keeps it when replacing.
BAREMETAL_TAG = "__type_baremetal"
#: Metadata key the orchestrator reserves for its create marker.
MARKER_METADATA_KEY = "bms_orchestrator_marker"

MAX_COUNT = 100
MAX_DISKS = 60
#: Server entries in a batch file (each may ask for ``count`` servers).
MAX_SERVER_ENTRIES = 1000
#: Servers of one batch once counts are expanded (``BMS_MAX_BATCH_SERVERS`` changes it).
DEFAULT_MAX_BATCH_SERVERS = 10_000
#: Bounds of our own where the cloud documents none: a neutron port's address pairs, a server's
#: security groups, metadata entries (a server's; a volume's, whose known keys are two).
MAX_ADDRESS_PAIRS = 10
MAX_SECURITY_GROUPS = 10
MAX_METADATA_ITEMS = 64
MAX_VOLUME_METADATA_ITEMS = 8
#: Every string of a batch, unless its field says otherwise (metadata's limit is the cloud's).
MAX_STRING = 255
#: The longest ``Idempotency-Key`` (header or ``bms.submit_batch`` argument).
MAX_IDEMPOTENCY_KEY = 128
MAX_SERVER_TAGS = 9  # 10 per server, one taken by __type_baremetal
MAX_NOVA_TAGS = 49  # 50 per server, one taken by __type_baremetal
USER_DATA_MAX_BYTES = 32 * 1024
#: Its base64 form: 4 characters per 3 bytes, padded.
USER_DATA_MAX_CHARS = 4 * -(-USER_DATA_MAX_BYTES // 3)

#: Integers must be JSON integers: ``"5"``, ``true`` and ``2.0`` are refused.
StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]


class FieldRuleError(ValueError):
    """A cross-field rule broken by one field: ``field`` is its path below the model checked."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class SpecModel(BaseModel):
    """Strict base: unknown fields are errors that name the field."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, str_max_length=MAX_STRING)


class AllowedAddressPair(SpecModel):
    ip_address: str
    mac_address: str | None = None


class Nic(SpecModel):
    subnet_id: str = Field(min_length=1)
    ip_address: str | None = None
    allowed_address_pairs: list[AllowedAddressPair] | None = Field(
        default=None, max_length=MAX_ADDRESS_PAIRS
    )


class VolumeBase(SpecModel):
    volumetype: Literal["SATA", "SAS", "SSD"]
    cluster_id: str | None = None
    cluster_type: Literal["DSS"] | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=MAX_VOLUME_METADATA_ITEMS)


class RootVolume(VolumeBase):
    size: StrictInt = Field(ge=40, le=1024)


class DataVolume(VolumeBase):
    size: StrictInt = Field(ge=10, le=32768)
    shareable: StrictBool | None = None


class ExtendParam(SpecModel):
    chargingMode: Literal["prePaid", "postPaid"] = "postPaid"
    regionID: str | None = None
    periodType: Literal["month", "year"] | None = None
    periodNum: StrictInt | None = None
    isAutoRenew: Literal["true", "false"] | None = None
    isAutoPay: Literal["true", "false"] | None = None
    enterprise_project_id: str | None = None

    @model_validator(mode="after")
    def _check_prepaid(self) -> ExtendParam:
        if self.chargingMode != "prePaid":
            return self
        if self.periodType is None or self.periodNum is None:
            raise ValueError("prePaid needs periodType and periodNum")
        top = 9 if self.periodType == "month" else 1
        if not 1 <= self.periodNum <= top:
            raise ValueError(f"periodNum must be 1-{top} for periodType {self.periodType}")
        if self.isAutoPay != "true":
            # An unpaid order leaves the job in PENDING_PAYMENT: no worker can pay it.
            raise ValueError('prePaid needs isAutoPay "true": the orchestrator cannot pay orders')
        return self


class SecurityGroup(SpecModel):
    id: str = Field(min_length=1)


class Bandwidth(SpecModel):
    sharetype: Literal["PER", "WHOLE"]
    size: StrictInt | None = Field(default=None, ge=1, le=2000)
    id: str | None = None
    name: str | None = None
    chargemode: Literal["traffic", "bandwidth"] | None = None

    @model_validator(mode="after")
    def _check_share(self) -> Bandwidth:
        if self.sharetype == "PER" and self.size is None:
            raise ValueError("size is required when sharetype is PER")
        if self.sharetype == "WHOLE" and not self.id:
            raise ValueError("id is required when sharetype is WHOLE")
        return self


class EipExtendParam(SpecModel):
    chargingMode: Literal["prePaid", "postPaid"]


class Eip(SpecModel):
    iptype: Literal["5_bgp", "5_sbgp"]
    bandwidth: Bandwidth
    extendparam: EipExtendParam


class PublicIp(SpecModel):
    id: str | None = None
    eip: Eip | None = None

    @model_validator(mode="after")
    def _one_of(self) -> PublicIp:
        if (self.id is None) == (self.eip is None):
            raise ValueError("give exactly one of id (an existing EIP) or eip (a new one)")
        return self


class ServerTag(SpecModel):
    key: str = Field(min_length=1, max_length=36)
    value: str = Field(default="", max_length=43)

    @field_validator("key", "value")
    @classmethod
    def _no_forbidden(cls, text: str) -> str:
        bad = sorted({c for c in text if c in SERVER_TAG_FORBIDDEN or ord(c) < 32})
        if bad:
            raise ValueError(f"must not contain {''.join(repr(c) for c in bad)}")
        return text


class SchedulerHints(SpecModel):
    dec_baremetal: Literal["share", "dedicate"] = "share"


class AttachVolume(SpecModel):
    volume_id: str = Field(min_length=1, max_length=64)
    device: Annotated[str, Field(pattern=r"^/dev/sd[b-z]$")] | None = None


NovaTag = Annotated[str, Field(min_length=1, max_length=80)]


def _cloud_name(name: str) -> str:
    if not SERVER_NAME.match(name):
        raise ValueError("only CJK characters, letters, digits, '_', '-' and '.' are allowed")
    return name


#: A batch's name follows the cloud's rules for a server's name.
BatchName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_cloud_name)]


class ServerSpec(SpecModel):
    """One server request: the create body's fields and the orchestrator's own."""

    imageRef: str = Field(min_length=1)
    flavorRef: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=63)
    vpcid: str = Field(min_length=1)
    nics: list[Nic] = Field(min_length=1, max_length=2)
    availability_zone: str = Field(min_length=1)
    metadata: dict[str, str] = Field(max_length=MAX_METADATA_ITEMS)
    extendparam: ExtendParam = Field(default_factory=ExtendParam)
    root_volume: RootVolume | None = None
    data_volumes: list[DataVolume] | None = Field(default=None, max_length=MAX_DISKS)
    key_name: str | None = Field(default=None, min_length=1, max_length=64)
    adminPass: str | None = None
    user_data: str | None = Field(default=None, max_length=USER_DATA_MAX_CHARS)
    security_groups: list[SecurityGroup] | None = Field(
        default=None, max_length=MAX_SECURITY_GROUPS
    )
    publicip: PublicIp | None = None
    server_tags: list[ServerTag] | None = Field(default=None, max_length=MAX_SERVER_TAGS)
    schedulerHints: SchedulerHints | None = None
    # Orchestrator fields, not sent in the create body.
    attach_volumes: list[AttachVolume] = Field(default_factory=list, max_length=MAX_DISKS)
    tags: list[NovaTag] = Field(default_factory=list, max_length=MAX_NOVA_TAGS)
    count: StrictInt = Field(default=1, ge=1, le=MAX_COUNT)

    @field_validator("name")
    @classmethod
    def _name_chars(cls, name: str) -> str:
        return _cloud_name(name)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata: dict[str, str]) -> dict[str, str]:
        if not metadata.get("op_svc_userid"):
            raise ValueError("op_svc_userid (the IAM user id) is required")
        if "admin_pass" in metadata:
            raise ValueError("admin_pass is refused: passwords would be stored; use key_name")
        if MARKER_METADATA_KEY in metadata:
            raise ValueError(f"{MARKER_METADATA_KEY} is reserved for the orchestrator")
        for key, value in metadata.items():
            if len(key) > 255 or len(value) > 255:
                raise ValueError(f"key and value of {key[:40]!r} must be at most 255 characters")
        return metadata

    @field_validator("adminPass")
    @classmethod
    def _no_password(cls, password: str | None) -> str | None:
        if password is not None:
            # Requests are persisted and passed between workers; a password must never be.
            raise ValueError("password login is refused: it would be stored; use key_name")
        return password

    @field_validator("user_data")
    @classmethod
    def _user_data(cls, user_data: str | None) -> str | None:
        if user_data is None:
            return None
        try:
            decoded = base64.b64decode(user_data, validate=True)
        except binascii.Error:
            raise ValueError("must be base64-encoded") from None
        if len(decoded) > USER_DATA_MAX_BYTES:
            raise ValueError(f"must be at most {USER_DATA_MAX_BYTES} bytes before encoding")
        return user_data

    @field_validator("server_tags")
    @classmethod
    def _server_tag_keys(cls, tags: list[ServerTag] | None) -> list[ServerTag] | None:
        keys = [tag.key for tag in tags or []]
        if len(keys) != len(set(keys)):
            raise ValueError("tag keys must be unique")
        if BAREMETAL_TAG in keys:
            raise ValueError(f"{BAREMETAL_TAG} is the cloud's own tag")
        return tags

    @field_validator("tags")
    @classmethod
    def _nova_tags(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if tag.startswith("."):
                raise ValueError(f"{tag!r}: a tag must not start with '.'")
            if NOVA_TAG_FORBIDDEN & set(tag):
                raise ValueError(f"{tag!r}: a tag must not contain '/' or ','")
            if tag.startswith("__type_"):
                raise ValueError(f"{tag!r}: __type_ tags are the cloud's own")
        if len(tags) != len(set(tags)):
            raise ValueError("tags must be unique")
        return tags

    @field_validator("attach_volumes")
    @classmethod
    def _unique_volumes(cls, volumes: list[AttachVolume]) -> list[AttachVolume]:
        ids = [v.volume_id for v in volumes]
        if len(ids) != len(set(ids)):
            raise ValueError("a volume can be attached only once")
        return volumes

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ServerSpec:
        if self.key_name is None:
            raise FieldRuleError("key_name", "required: give exactly one login mode")
        if self.count > 1:
            self._check_count_rules()
        disks = 1 + len(self.data_volumes or []) + len(self.attach_volumes)
        if disks > MAX_DISKS:
            raise FieldRuleError(
                "data_volumes", f"at most {MAX_DISKS} disks per server, system disk included"
            )
        return self

    def _check_count_rules(self) -> None:
        if len(self.name) > 58:
            raise FieldRuleError("name", "at most 58 characters when count > 1")
        for index, nic in enumerate(self.nics):
            if nic.ip_address:
                raise FieldRuleError(f"nics[{index}].ip_address", "cannot be fixed when count > 1")
        if self.publicip is not None and self.publicip.id is not None:
            raise FieldRuleError("publicip.id", "one existing EIP cannot serve count > 1")
        if self.attach_volumes:
            raise FieldRuleError("attach_volumes", "needs count 1: a volume attaches to one server")

    def member_names(self) -> list[str]:
        """The names of the servers this entry stands for: its name, or ``name-NNNN`` for each
        of a ``count``."""
        if self.count == 1:
            return [self.name]
        return [f"{self.name}-{index:04d}" for index in range(self.count)]

    def volumes_to_attach(self) -> list[dict[str, str]]:
        """``attach_volumes`` as stored in a request's spec."""
        return [v.model_dump(exclude_none=True) for v in self.attach_volumes]

    def create_body(self) -> dict[str, Any]:
        """The ``server`` body of the create call, without the orchestrator's fields."""
        body = self.model_dump(
            exclude={"attach_volumes", "tags", "count", "adminPass"}, exclude_none=True
        )
        body["count"] = 1
        return body


class NotifySpec(SpecModel):
    """Where to POST the batch's events: ``{url, secret?, request_events?}``."""

    url: str = Field(min_length=1, max_length=2048)
    #: HMAC-SHA256 key of ``X-BMS-Signature``; stored, never returned or logged.
    secret: str | None = Field(default=None, min_length=16, max_length=256)
    #: Also POST ``request.finished`` for each request that reaches a final state.
    request_events: bool = False

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if any(ch.isspace() or ord(ch) < 32 for ch in value):
            raise ValueError("must not contain spaces or control characters")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("must name a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials: the receiver checks notify.secret")
        try:
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value


def _optional_fields(model: type[SpecModel], name: str, doc: str) -> type[SpecModel]:
    """``model`` with every field optional and none of its validators: each field keeps its
    type and size rules, so what is bounded in a server is bounded in ``defaults`` too."""
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        optional = copy.copy(info)
        optional.default = None
        optional.default_factory = None
        fields[field_name] = (info.annotation | None, optional)
    return create_model(name, __base__=SpecModel, __doc__=doc, **fields)


ServerDefaults = _optional_fields(
    ServerSpec, "ServerDefaults", "Fields merged into every server; a server's own fields win."
)


class BatchSpec(SpecModel):
    """A batch file: a name, optional defaults merged into each server, the servers, and
    optionally where to send its webhooks."""

    name: BatchName
    defaults: ServerDefaults | None = None
    servers: list[ServerSpec] = Field(min_length=1, max_length=MAX_SERVER_ENTRIES)
    notify: NotifySpec | None = None

    def expand(self) -> list[ExpandedServer]:
        """One entry per server to provision: ``count`` becomes N entries named like the API.

        The entries of one ``count`` share the nested values of their create body (each has a
        top-level dict of its own): they are values to store, not to change in place. A deep
        copy per entry was most of the intake's time for 10,000 servers.
        """
        expanded = []
        for server in self.servers:
            body = server.create_body()
            volumes = server.volumes_to_attach()
            for name in server.member_names():
                # Built from validated values: validating each of 10,000 again cost 0.2 s.
                expanded.append(
                    ExpandedServer.model_construct(
                        name=name,
                        create_body={**body, "name": name},
                        attach_volumes=volumes,
                        tags=list(server.tags),
                    )
                )
        return expanded


class ExpandedServer(BaseModel):
    """One server to provision: what a ``ServerRequest.spec`` holds."""

    name: str
    create_body: dict[str, Any]
    attach_volumes: list[dict[str, str]]
    tags: list[str]


class SpecError(ValueError):
    """A batch that does not validate; ``errors`` holds ``(field path, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {path}: {message}" for path, message in errors)
        super().__init__(f"{len(errors)} invalid field(s):\n{lines}")


def deep_merge(defaults: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``defaults``: dicts merge key by key, anything else is replaced."""
    merged = copy.deepcopy(defaults)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _errors_of(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    errors = []
    for error in exc.errors(include_url=False):
        location = prefix + tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        rule = error.get("ctx", {}).get("error")
        if isinstance(rule, FieldRuleError):
            location += tuple(rule.field.split("."))
            message = rule.message
        errors.append((field_path(location), message))
    return errors


def _volumes_used_twice(batch: BatchSpec) -> list[tuple[str, str]]:
    """A volume attaches to one server: name every later server that lists it again."""
    first_user: dict[str, int] = {}
    errors = []
    for index, server in enumerate(batch.servers):
        for position, volume in enumerate(server.attach_volumes):
            if volume.volume_id in first_user:
                errors.append(
                    (
                        f"servers[{index}].attach_volumes[{position}].volume_id",
                        f"{volume.volume_id} is already attached by "
                        f"servers[{first_user[volume.volume_id]}]",
                    )
                )
            first_user.setdefault(volume.volume_id, index)
    return errors


class _BatchHead(SpecModel):
    """A batch with its servers not yet looked into: checked before anything is merged."""

    name: BatchName
    defaults: dict[str, Any] | None = None
    servers: list[Any] = Field(min_length=1, max_length=MAX_SERVER_ENTRIES)
    notify: NotifySpec | None = None


def _validate_defaults(defaults: dict[str, Any], entries: list[Any]) -> tuple[Any, list]:
    """``defaults`` on its own, each field to its type and size rules: ``(model, errors)``.

    An error is left out when every server replaces the value it is about (it is never used);
    the model is then ``None``.
    """
    if not defaults:
        return None, []
    try:
        return ServerDefaults.model_validate(defaults), []
    except ValidationError as exc:
        errors = [
            (field_path(("defaults", *error["loc"])), error["msg"].removeprefix("Value error, "))
            for error in exc.errors(include_url=False)
            if not all(_replaces(entry, error["loc"]) for entry in entries)
        ]
        return None, errors[: bounds.MAX_ERRORS]


def _replaces(entry: Any, location: tuple[Any, ...]) -> bool:
    """Does merging ``entry`` over the defaults replace the default at ``location``?"""
    node = entry
    for part in location:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, dict):
            return True  # a value that is not a mapping replaces the default's whole subtree
    return True


def _entry_count(entry: Any, defaults: dict[str, Any]) -> int:
    """The servers an entry asks for; a bad ``count`` counts 1 here and is refused later."""
    for source in (entry, defaults):
        if isinstance(source, dict) and "count" in source:
            count = source["count"]
            return count if type(count) is int and 1 <= count <= MAX_COUNT else 1
    return 1


def _cost_errors(
    entries: list[Any], defaults: dict[str, Any], max_servers: int
) -> list[tuple[str, str]]:
    """What the batch would cost once merged and expanded, refused before any of that is done."""
    counts = [_entry_count(entry, defaults) for entry in entries]
    servers = sum(counts)
    if servers > max_servers:
        return [
            (
                "servers",
                f"{servers:,} servers asked for (counts included); a batch may hold at most "
                f"{max_servers:,} (BMS_MAX_BATCH_SERVERS): split it",
            )
        ]
    per_server = bounds.count_values(defaults)
    pairs = zip(counts, entries, strict=True)
    expanded = sum(count * (per_server + bounds.count_values(entry)) for count, entry in pairs)
    if expanded > bounds.MAX_EXPANDED_VALUES:
        return [
            (
                "servers",
                f"{expanded:,} values once defaults are merged and counts expanded; at most "
                f"{bounds.MAX_EXPANDED_VALUES:,}: split the batch",
            )
        ]
    return []


def _validate_servers(entries: list[Any], defaults: dict[str, Any]) -> tuple[list, list]:
    """Merge and validate server by server; stop once :data:`bounds.MAX_ERRORS` are found."""
    servers, errors = [], []
    for index, entry in enumerate(entries):
        merged = deep_merge(defaults, entry) if isinstance(entry, dict) else entry
        try:
            servers.append(ServerSpec.model_validate(merged))
        except ValidationError as exc:
            errors.extend(_errors_of(exc, ("servers", index)))
        if len(errors) >= bounds.MAX_ERRORS:
            errors.append(("servers", f"more errors after servers[{index}] are not listed"))
            break
    return servers, errors


def parse_batch(data: Any, max_servers: int = DEFAULT_MAX_BATCH_SERVERS) -> BatchSpec:
    """Validate a batch already loaded from JSON or YAML.

    In this order, so that no input costs more than its own size before it is refused: the
    shape (nesting, control characters, values; see :mod:`models.bounds`), the name and the
    defaults on their own, the number of servers and the size once expanded, then each server
    with the defaults merged in. ``max_servers`` caps the servers once counts are expanded.

    :raises SpecError: naming every bad field (at most :data:`bounds.MAX_ERRORS`).
    """
    errors, _values = bounds.check_shape(data)
    if errors:
        raise SpecError(errors)
    if not isinstance(data, dict):
        raise SpecError([("<root>", "must be an object: name, servers and optional defaults")])
    try:
        head = _BatchHead.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_errors_of(exc)[: bounds.MAX_ERRORS]) from None
    defaults = head.defaults or {}
    checked, errors = _validate_defaults(defaults, head.servers)
    errors = errors or _cost_errors(head.servers, defaults, max_servers)
    if errors:
        raise SpecError(errors)
    servers, errors = _validate_servers(head.servers, defaults)
    if errors:
        raise SpecError(errors)
    batch = BatchSpec.model_construct(
        name=head.name, defaults=checked, servers=servers, notify=head.notify
    )
    errors = _volumes_used_twice(batch)
    if errors:
        raise SpecError(errors)
    return batch


def check_idempotency_key(key: Any) -> str | None:
    """The key as given, when it is one the API would take too (``None``: no key).

    :raises SpecError: naming ``idempotency_key``.
    """
    if key is None:
        return None
    if not isinstance(key, str):
        raise SpecError([("idempotency_key", "must be a string")])
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        message = f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        raise SpecError([("idempotency_key", message)])
    problem = bounds.control_characters(key)
    if problem:
        raise SpecError([("idempotency_key", problem)])
    return key


def read_batch_file(path: str | Path) -> Any:
    """The data of a batch file (``.yaml``, ``.yml`` or ``.json``), not yet validated.

    :raises SpecError: the file cannot be read or does not parse.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([(str(path), f"cannot be read: {exc.strerror}")]) from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError([(str(path), f"does not parse: {exc}")]) from None


def load_batch_file(path: str | Path) -> BatchSpec:
    """Read and validate a batch file.

    :raises SpecError: the file does not parse or a field is invalid.
    """
    return parse_batch(read_batch_file(path))
