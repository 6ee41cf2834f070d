"""Nova server tags (reference section 11): list, replace all, add, check, delete one, delete
all; only with ``X-OpenStack-Nova-API-Version`` >= 2.26, as upstream Nova answers 404 below it.
The bare metal marker ``__type_baremetal`` is a system tag and survives every change."""

from __future__ import annotations

from urllib.parse import unquote

from simulator.nova import TAGS_MICROVERSION, S, microversion, nova_server
from simulator.routing import RouteTable
from simulator.state import BAREMETAL_TAG, CloudState, Server
from simulator.wire import Request, Response, nova_error

routes = RouteTable()
MAX_TAGS, MAX_TAG_LENGTH = 50, 80


def tagged_server(state: CloudState, request: Request, changing: bool = False) -> Server:
    """The server, once the microversion allows tags; changes need a settled server."""
    if microversion(request) < TAGS_MICROVERSION:
        raise nova_error(404, "The resource could not be found.")
    server = nova_server(state, request.params["server_id"])
    if changing and (server.deleted or server.vm_state not in ("active", "stopped")):
        raise nova_error(409, f"Cannot change tags of instance {server.id} in {server.status}.")
    return server


def check_tag(tag: object) -> str:
    if (
        not isinstance(tag, str)
        or not 1 <= len(tag) <= MAX_TAG_LENGTH
        or tag.startswith(".")
        or "/" in tag
        or "," in tag
    ):
        raise nova_error(400, f"Invalid tag {tag!r}.")
    return tag


@routes.add("GET", S + "/{server_id}/tags", "nova")
def list_tags(state: CloudState, request: Request) -> Response:
    return Response(200, {"tags": list(tagged_server(state, request).tags)})


@routes.add("PUT", S + "/{server_id}/tags", "nova")
def replace_tags(state: CloudState, request: Request) -> Response:
    server = tagged_server(state, request, changing=True)
    tags = request.json().get("tags")
    if not isinstance(tags, list):
        raise nova_error(400, "tags must be a list.")
    wanted = list(dict.fromkeys(check_tag(tag) for tag in tags))
    # why: the bare metal marker is a system tag; replacing the user tags keeps it.
    if BAREMETAL_TAG not in wanted:
        wanted.insert(0, BAREMETAL_TAG)
    if len(wanted) > MAX_TAGS:
        raise nova_error(400, f"A server carries at most {MAX_TAGS} tags.")
    server.tags = wanted
    return Response(200, {"tags": list(server.tags)})


@routes.add("DELETE", S + "/{server_id}/tags", "nova")
def delete_tags(state: CloudState, request: Request) -> Response:
    server = tagged_server(state, request, changing=True)
    server.tags = [BAREMETAL_TAG]
    return Response(204)


@routes.add("GET", S + "/{server_id}/tags/{tag}", "nova")
def check_one_tag(state: CloudState, request: Request) -> Response:
    server = tagged_server(state, request)
    tag = unquote(request.params["tag"])
    if tag not in server.tags:
        raise nova_error(404, f"Tag {tag} not found.")
    return Response(204)


@routes.add("PUT", S + "/{server_id}/tags/{tag}", "nova")
def add_tag(state: CloudState, request: Request) -> Response:
    server = tagged_server(state, request, changing=True)
    tag = check_tag(unquote(request.params["tag"]))
    if tag in server.tags:
        return Response(204)
    if len(server.tags) >= MAX_TAGS:
        raise nova_error(400, f"A server carries at most {MAX_TAGS} tags.")
    server.tags.append(tag)
    return Response(201, None, {"Location": request.path})


@routes.add("DELETE", S + "/{server_id}/tags/{tag}", "nova")
def delete_tag(state: CloudState, request: Request) -> Response:
    server = tagged_server(state, request, changing=True)
    tag = unquote(request.params["tag"])
    if tag not in server.tags:
        raise nova_error(404, f"Tag {tag} not found.")
    if tag == BAREMETAL_TAG:
        raise nova_error(400, f"The system tag {BAREMETAL_TAG} cannot be removed.")
    server.tags.remove(tag)
    return Response(204)
