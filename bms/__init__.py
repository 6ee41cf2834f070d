"""The cloud API client for Huawei Cloud BMS v1, OpenStack native v2.1 and IAM: sessions, auth,
typed errors, one method per API call.

Modules, one job each:

* :mod:`bms.exceptions`: the error tree (``CloudError`` root) and ``raise_from_response``.
* :mod:`bms.auth`: ``AkSkAuth`` (SDK-HMAC-SHA256 signing) and ``TokenAuth`` (IAM token).
* :mod:`bms.transport`: one endpoint family's session and the single request path (gate,
  timeout, error mapping, GET-only retries, DEBUG logging).
* :mod:`bms.client`: ``BmsClient``, the BMS v1 methods; ``client.nova`` holds the v2.1 ones.
* :mod:`bms.nova`: ``NovaClient``, the native v2.1 methods.
* :mod:`bms.resources`: ``ResourceClient``, the IMS, VPC and EVS reads (``client.resources``).
* :mod:`bms.jobs`: ``Job`` / ``SubJob`` / ``JobOutcome``, typed asynchronous job results.

Typical use::

    from bms.auth import AkSkAuth
    from bms.client import BmsClient

    with BmsClient(endpoint, project_id, AkSkAuth(ak, sk, project_id),
                   before_call=limiter.acquire) as client:
        job_id = client.create_servers(server_spec).job_id
        job = client.show_job(job_id)        # job.outcome: RUNNING / DONE / FAILED

It imports only the standard library and ``requests``.
"""
