"""Which cloud failures are worth another attempt, by error code.

A failed create job's code says whether the same request may succeed later (no capacity now,
an internal error) or never will (unknown flavor or image, quota exhausted, a bad parameter).
"""

from __future__ import annotations

#: Job and API codes that another attempt may get past (reference section 12).
RETRYABLE_CODES = frozenset(
    {
        "BMS.3037",  # insufficient resources
        "BMS.3004",  # internal error
        "BMS.3005",  # port creation failed
        "BMS.3019",  # data disk creation failed
        "BMS.3021",
        "BMS.3029",  # system disk creation failed
        "BMS.3033",
        "BMS.0212",  # service overloaded, retry later
        "BMS.0054",  # capacity
        "BMS.0055",
    }
)

#: Codes that no retry will change (flavor, image, subnet, quota, parameters, login, order).
PERMANENT_PREFIXES = ("BMS.00", "BMS.01", "BMS.02", "APIGW.03", "Common.")

#: Our own code for a job that outlived its deadline.
TIMEOUT_CODE = "ORCH.TIMEOUT"


def is_retryable(error_code: str | None, *, from_job: bool) -> bool:
    """Whether a failure with ``error_code`` may succeed on another attempt.

    Unknown codes of a failed *job* count as retryable (jobs fail mostly inside the cloud);
    unknown codes of a refused *call* do not (the request itself was refused).
    """
    if error_code in RETRYABLE_CODES:
        return True
    if error_code and error_code.startswith(PERMANENT_PREFIXES):
        return False
    return from_job
