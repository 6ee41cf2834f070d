"""The canonical form of a validated batch, and its digest.

Two submissions mean the same batch when their canonical forms are equal: the name, the
servers with ``defaults`` merged in, as validated, and ``notify`` when given, keys sorted. Of
``notify.secret`` only its presence counts: the digest is returned in a 409 and stored, and a
hash of the secret in either would let anyone holding it test guesses offline. The intake
stores the SHA-256 of this form on the batch, so that a resubmission with the same
``Idempotency-Key`` and another body can be told apart.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from models.spec import BatchSpec


def canonical_body(spec: BatchSpec) -> dict[str, Any]:
    """The batch as JSON-ready data (defaults merged in; the secret only said to be set)."""
    body: dict[str, Any] = {
        "name": spec.name,
        "servers": [server.model_dump(mode="json", exclude_none=True) for server in spec.servers],
    }
    if spec.notify is not None:
        # Left out when absent, so that the digests of batches without notify never change.
        body["notify"] = {
            "url": spec.notify.url,
            "request_events": spec.notify.request_events,
            **({"secret": "set"} if spec.notify.secret else {}),
        }
    return body


def batch_digest(spec: BatchSpec) -> str:
    """SHA-256 (hex) of the canonical body, keys sorted, no whitespace."""
    text = json.dumps(canonical_body(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
