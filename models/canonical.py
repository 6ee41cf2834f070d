"""The canonical form of a validated batch, and its digest.

Two submissions mean the same batch when their canonical forms are equal: the name and the
servers with ``defaults`` merged in, as validated, keys sorted. The command line sends this form
(never the raw file), and the intake stores its SHA-256 on the batch, so that a resubmission
with the same ``Idempotency-Key`` and another body can be told apart.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from models.spec import BatchSpec


def canonical_body(spec: BatchSpec) -> dict[str, Any]:
    """The batch as JSON-ready data that validates to ``spec`` again (defaults merged in)."""
    return {
        "name": spec.name,
        "servers": [server.model_dump(mode="json", exclude_none=True) for server in spec.servers],
    }


def batch_digest(spec: BatchSpec) -> str:
    """SHA-256 (hex) of the canonical body, keys sorted, no whitespace."""
    text = json.dumps(canonical_body(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
