"""``/_sim/``: what tests and benchmarks read and steer, outside the cloud API.

No authentication, loopback callers only. Bodies are JSON; see each handler for its shape.
"""

from __future__ import annotations

import ipaddress
import uuid

from simulator.catalog import (
    DEFAULT_LIMITS,
    FLAVOR_STATES,
    Subnet,
    Volume,
    flavor,
    image,
    set_flavor_states,
)
from simulator.quota import parse_quotas
from simulator.routing import RouteTable
from simulator.views import introspection
from simulator.wire import ApiError, Request, Response

routes = RouteTable()


def _loopback_only(request: Request) -> None:
    try:
        loopback = ipaddress.ip_address(request.client_address).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ApiError(403, {"error": "/_sim/ answers loopback callers only"})


def _locked(app):
    """The state lock, with due lifecycle events applied."""
    app.state.lock.acquire()
    app.state.advance()
    return app.state


def _bad(message: str) -> ApiError:
    return ApiError(400, {"error": message})


@routes.add("GET", "/_sim/config", "sim")
def show_config(app, request: Request) -> Response:
    """``{project_id, credentials: [[ak, sk]], users, auth, job_seconds, ...}``."""
    _loopback_only(request)
    config = app.config
    body = {
        "project_id": config.project_id,
        "credentials": [list(pair) for pair in config.credentials],
        "users": [vars(user) for user in config.users],
        "auth": config.auth,
        "job_seconds": list(config.job_seconds),
        "deleted_visible_seconds": config.deleted_visible_seconds,
        "fail_create_codes": list(app.faults.fail_create_codes),
    }
    return Response(200, body)


@routes.add("GET", "/_sim/servers", "sim")
def list_servers(app, request: Request) -> Response:
    """``{"servers": [...]}``: every server ever created, deleted ones included, oldest first."""
    _loopback_only(request)
    state = _locked(app)
    try:
        return Response(200, {"servers": [introspection(state, s) for s in state.servers.values()]})
    finally:
        state.lock.release()


@routes.add("GET", "/_sim/servers/{server_id}", "sim")
def show_server(app, request: Request) -> Response:
    _loopback_only(request)
    state = _locked(app)
    try:
        server = state.servers.get(request.params["server_id"])
        if server is None:
            raise ApiError(404, {"error": "no such server"})
        return Response(200, {"server": introspection(state, server)})
    finally:
        state.lock.release()


@routes.add("GET", "/_sim/counters", "sim")
def show_counters(app, request: Request) -> Response:
    """``{"counters": {class: {calls, throttled, faults, errors}}}``."""
    _loopback_only(request)
    return Response(200, {"counters": app.counters_view()})


@routes.add("GET", "/_sim/faults", "sim")
def show_faults(app, request: Request) -> Response:
    _loopback_only(request)
    return Response(200, app.faults.settings.to_dict())


@routes.add("PUT", "/_sim/faults", "sim")
def change_faults(app, request: Request) -> Response:
    """Body: any subset of the fault settings; the generators are reseeded."""
    _loopback_only(request)
    try:
        settings = app.faults.settings.updated(request.json())
    except (TypeError, ValueError) as exc:
        raise _bad(str(exc)) from None
    app.faults.configure(settings)
    return Response(200, settings.to_dict())


@routes.add("GET", "/_sim/quotas", "sim")
def show_quotas(app, request: Request) -> Response:
    _loopback_only(request)
    return Response(200, {"quotas": app.quotas.to_api()})


@routes.add("PUT", "/_sim/quotas", "sim")
def change_quotas(app, request: Request) -> Response:
    """Body ``{"spec": "create=20/second;show=5000/minute"}``; classes left out get defaults."""
    _loopback_only(request)
    spec = request.json().get("spec")
    try:
        parse_quotas(spec if isinstance(spec, str) else "")
        app.quotas.configure(spec)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return Response(200, {"quotas": app.quotas.to_api()})


@routes.add("POST", "/_sim/reset", "sim")
def reset(app, request: Request) -> Response:
    """Forget servers, jobs and counters; restore the default catalog; restart the windows."""
    _loopback_only(request)
    app.state.reset()
    app.reset_counters()
    app.quotas.configure(app.config.quotas)
    app.faults.configure(app.faults.settings)
    return Response(200, {"reset": True})


@routes.add("GET", "/_sim/volumes", "sim")
def list_volumes(app, request: Request) -> Response:
    _loopback_only(request)
    state = _locked(app)
    try:
        volumes = [volume.to_api() for volume in state.catalog.volumes.values()]
    finally:
        state.lock.release()
    return Response(200, {"volumes": volumes})


@routes.add("POST", "/_sim/volumes", "sim")
def add_volumes(app, request: Request) -> Response:
    """Body ``{"count": 3, "size": 100, "volume_type": "SSD"}`` or ``{"id": ..., "name": ...}``;
    optional ``status`` (default ``available``) and ``multiattach`` (shareable)."""
    _loopback_only(request)
    body = request.json()
    count = int(body.get("count", 1))
    if body.get("id") and count != 1:
        raise _bad("give either id or count")
    created = []
    with app.state.lock:
        for _ in range(count):
            volume_id = body.get("id") or str(uuid.uuid4())
            volume = Volume(
                volume_id,
                body.get("name", f"evs-{volume_id[:8]}"),
                int(body.get("size", 100)),
                body.get("volume_type", "SSD"),
                status=_volume_status(body.get("status", "available")),
                multiattach=bool(body.get("multiattach", False)),
            )
            app.state.catalog.add_volume(volume)
            created.append(volume.to_api())
    return Response(201, {"volumes": created})


#: Volume states one may set through ``/_sim/`` (EVS disk states).
VOLUME_STATES = ("available", "in-use", "attaching", "detaching", "creating", "error")


def _volume_status(status: object) -> str:
    if status not in VOLUME_STATES:
        raise _bad(f"status must be one of {', '.join(VOLUME_STATES)}")
    return str(status)


@routes.add("PUT", "/_sim/volumes/{volume_id}", "sim")
def change_volume(app, request: Request) -> Response:
    """Body ``{"status": "in-use", "multiattach": false}`` (any subset): a disk used elsewhere,
    broken, or shareable, as the cloud would show it."""
    _loopback_only(request)
    body = request.json()
    state = _locked(app)
    try:
        volume = state.catalog.volumes.get(request.params["volume_id"])
        if volume is None:
            raise ApiError(404, {"error": "no such volume"})
        if "status" in body:
            volume.status = _volume_status(body["status"])
        if "multiattach" in body:
            volume.multiattach = bool(body["multiattach"])
        return Response(200, {"volume": volume.to_api()})
    finally:
        state.lock.release()


def _flavor_states(body: dict) -> tuple[str | None, dict[str, str]]:
    """``status`` and ``az_status`` of a body, checked against the flavor states."""
    status, per_zone = body.get("status"), body.get("az_status", {})
    if not isinstance(per_zone, dict):
        raise _bad("az_status must map zones to states")
    for value in [status, *per_zone.values()]:
        if value is not None and value not in FLAVOR_STATES:
            raise _bad(f"a flavor state is one of {', '.join(FLAVOR_STATES)}, not {value!r}")
    return status, {str(zone): str(value) for zone, value in per_zone.items()}


@routes.add("POST", "/_sim/flavors", "sim")
def add_flavor(app, request: Request) -> Response:
    """Body ``{"id": "physical.x.large", "vcpus": 16, "ram": 65536, "disk": 800}``, optional
    ``status`` and ``az_status`` ``{"cn-north-4b": "sellout"}`` (see ``PUT``)."""
    _loopback_only(request)
    body = request.json()
    try:
        item = flavor(body["id"], int(body["vcpus"]), int(body["ram"]), int(body["disk"]))
    except (KeyError, ValueError, IndexError) as exc:
        raise _bad(f"flavor needs id, vcpus, ram, disk: {exc}") from None
    set_flavor_states(item, *_flavor_states(body))
    with app.state.lock:
        app.state.catalog.flavors[item["id"]] = item
    return Response(201, {"flavor": item})


@routes.add("PUT", "/_sim/flavors/{flavor_id}", "sim")
def change_flavor(app, request: Request) -> Response:
    """Body ``{"status": "sellout", "az_status": {"cn-north-4b": "abandon"}}`` (any subset):
    the flavor's state everywhere and per zone. ``normal``, ``obt`` and ``promotion`` are on
    sale; ``sellout`` is listed but not sold; ``abandon`` is not listed."""
    _loopback_only(request)
    states = _flavor_states(request.json())
    state = _locked(app)
    try:
        item = state.catalog.flavors.get(request.params["flavor_id"])
        if item is None:
            raise ApiError(404, {"error": "no such flavor"})
        set_flavor_states(item, *states)
        return Response(200, {"flavor": item})
    finally:
        state.lock.release()


@routes.add("GET", "/_sim/limits", "sim")
def show_limits(app, request: Request) -> Response:
    """``{"limits": {maxTotalInstances, maxTotalCores, maxTotalRAMSize}}``."""
    _loopback_only(request)
    with app.state.lock:
        return Response(200, {"limits": dict(app.state.catalog.limits)})


@routes.add("PUT", "/_sim/limits", "sim")
def change_limits(app, request: Request) -> Response:
    """Body: any subset of the limits, non-negative integers; the others are kept."""
    _loopback_only(request)
    body = request.json()
    unknown = set(body) - set(DEFAULT_LIMITS)
    if unknown:
        raise _bad(f"unknown limits: {', '.join(sorted(unknown))}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in body.values()):
        raise _bad("limits are non-negative integers")
    with app.state.lock:
        app.state.catalog.limits.update(body)
        return Response(200, {"limits": dict(app.state.catalog.limits)})


@routes.add("POST", "/_sim/images", "sim")
def add_image(app, request: Request) -> Response:
    """Body ``{"id": ..., "name": "Debian 12 64bit"}``, optional ``status`` (default
    ``active``) and ``virtual_env_type`` (default ``Ironic``, a bare metal image)."""
    _loopback_only(request)
    body = request.json()
    item = image(
        body.get("id") or str(uuid.uuid4()),
        body.get("name", "custom image"),
        status=str(body.get("status", "active")),
        virtual_env_type=str(body.get("virtual_env_type", "Ironic")),
    )
    with app.state.lock:
        app.state.catalog.images[item["id"]] = item
    return Response(201, {"image": item})


@routes.add("POST", "/_sim/subnets", "sim")
def add_subnet(app, request: Request) -> Response:
    """Body ``{"id": ..., "cidr": "10.0.0.0/16", "vpc_id": ...}``; an unknown VPC is created.
    Optional ``status`` (``ACTIVE``, ``UNKNOWN``, ``ERROR``; default ``ACTIVE``)."""
    _loopback_only(request)
    body = request.json()
    try:
        ipaddress.ip_network(body["cidr"])
    except (KeyError, ValueError) as exc:
        raise _bad(f"subnet needs a valid cidr: {exc}") from None
    subnet = Subnet(body.get("id") or str(uuid.uuid4()), body.get("name", "subnet"), body["cidr"])
    if body.get("vpc_id"):
        subnet.vpc_id = body["vpc_id"]
    subnet.status = str(body.get("status", "ACTIVE"))
    with app.state.lock:
        app.state.catalog.vpcs.add(subnet.vpc_id)
        app.state.catalog.subnets[subnet.id] = subnet
    body = {
        "id": subnet.id,
        "name": subnet.name,
        "cidr": subnet.cidr,
        "vpc_id": subnet.vpc_id,
        "status": subnet.status,
    }
    return Response(201, {"subnet": body})
