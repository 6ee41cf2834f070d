"""The simulator's configuration: one dataclass of defaults that mirror the seed document."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

DEFAULT_PROJECT_ID = "0123456789abcdef0123456789abcdef"
DEFAULT_AK = "BMSSIMDEMOAK0000000"
DEFAULT_SK = "BMSSIMDEMOSK00000000000000000000000000000"

#: The seed's per-minute quotas, in the ``BMS_RATE_LIMITS`` format (``nova`` is our choice).
DEFAULT_QUOTAS = (
    "create=50/minute;show=1000/minute;update=100/minute;attach=100/minute;"
    "detach=100/minute;job=2000/minute;list=500/minute;nova=600/minute"
)


@dataclass
class FaultSettings:
    """Which share of calls and jobs go wrong, and how; every decision comes from ``seed``."""

    create_fail_share: float = 0.0
    #: In each create with ``count`` > 1, this share of its sub_jobs fails (rounded, at
    #: least one when the share is not 0), the failed ones drawn from the seed.
    count_fail_share: float = 0.0
    attach_fail_share: float = 0.0
    http_500_share: float = 0.0
    http_503_share: float = 0.0
    latency_ms: int = 0
    drop_share: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def updated(self, changes: dict) -> FaultSettings:
        """A copy with ``changes`` applied; unknown keys raise ``ValueError``."""
        known = {f.name: f.type for f in fields(self)}
        unknown = set(changes) - set(known)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        values = self.to_dict()
        for name, value in changes.items():
            values[name] = int(value) if name in ("latency_ms", "seed") else float(value)
            if name.endswith("_share") and not 0.0 <= values[name] <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        return FaultSettings(**values)


@dataclass(frozen=True)
class IamUser:
    """An IAM user that may ask ``POST /v3/auth/tokens`` for a token."""

    name: str
    password: str
    domain: str


@dataclass
class SimulatorConfig:
    """Everything a simulator instance needs; the defaults serve the demo and the tests."""

    host: str = "127.0.0.1"
    #: 0 picks a free port.
    port: int = 8500
    project_id: str = DEFAULT_PROJECT_ID
    credentials: list[tuple[str, str]] = field(default_factory=lambda: [(DEFAULT_AK, DEFAULT_SK)])
    users: list[IamUser] = field(default_factory=lambda: [IamUser("demo", "demo-password", "demo")])
    auth: bool = True
    #: Each job (and each sub_job) lasts a uniform draw from this range, in seconds.
    job_seconds: tuple[float, float] = (0.2, 0.6)
    #: How long a deleted server still answers GET with status DELETED before it is a 404.
    deleted_visible_seconds: float = 30.0
    quotas: str = DEFAULT_QUOTAS
    faults: FaultSettings = field(default_factory=FaultSettings)
    #: Codes a failed create sub_job carries, picked in turn by the fault generator.
    fail_create_codes: list[str] = field(default_factory=lambda: ["BMS.3037", "BMS.3004"])
    #: Account limits that replace the default ones (``maxTotalInstances``, ``maxTotalCores``,
    #: ``maxTotalRAMSize``), restored by ``/_sim/reset``.
    limits: dict[str, int] = field(default_factory=dict)
    #: Where the cloud is kept between runs (JSON); None: in memory only.
    state_file: str | None = None

    @classmethod
    def build(cls, **options) -> SimulatorConfig:
        """Build from keyword options; fault fields (``create_fail_share=1.0``) may be flat."""
        fault_names = {f.name for f in fields(FaultSettings)}
        fault_changes = {k: options.pop(k) for k in list(options) if k in fault_names}
        config = cls(**options)
        if fault_changes:
            config.faults = config.faults.updated(fault_changes)
        return config
