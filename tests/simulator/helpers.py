"""Request bodies and URLs shared by the simulator tests."""

from __future__ import annotations

import requests

IMAGE_ID = "a3e5c3e0-0000-4000-8000-000000000001"
FLAVOR_ID = "physical.o2.medium"
VPC_ID = "c1d0e0f0-0000-4000-8000-0000000000a1"
SUBNET_ID = "c1d0e0f0-0000-4000-8000-0000000000b1"
VOLUME_ID = "e5e5e5e5-0000-4000-8000-000000000001"


def create_body(**overrides) -> dict:
    """A valid v1 create body for the default catalog."""
    server = {
        "imageRef": IMAGE_ID,
        "flavorRef": FLAVOR_ID,
        "name": "bms-test",
        "metadata": {"op_svc_userid": "user-1"},
        "nics": [{"subnet_id": SUBNET_ID}],
        "availability_zone": "cn-north-4a",
        "vpcid": VPC_ID,
        "extendparam": {"chargingMode": "postPaid"},
        "key_name": "demo-key",
    }
    server.update(overrides)
    return {"server": server}


class V1:
    """Plain HTTP to the v1 API of a simulator started with ``auth=False``."""

    def __init__(self, simulator) -> None:
        self.base = f"{simulator.base_url}/v1/{simulator.project_id}"
        self.session = requests.Session()

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.session.request(method, self.base + path, timeout=10, **kwargs)

    def create(self, **overrides) -> requests.Response:
        return self.call("POST", "/baremetalservers", json=create_body(**overrides))

    def job(self, job_id: str) -> dict:
        response = self.call("GET", f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def server_ids(self, job: dict) -> list[str]:
        return [sub["entities"]["server_id"] for sub in job["entities"]["sub_jobs"]]

    def create_active(self, **overrides) -> str:
        """Create one server with instant jobs and return its id."""
        response = self.create(**overrides)
        assert response.status_code == 200, response.text
        job = self.job(response.json()["job_id"])
        assert job["status"] == "SUCCESS", job
        return self.server_ids(job)[0]
