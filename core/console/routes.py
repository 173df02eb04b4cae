"""The console's paths (pure): a request path in, the page it names or the error to answer out.

Pages (HTML): ``/``, ``/topics``, ``/topics/NAME``, ``/smartmodules``, ``/groups``,
``/groups/NAME``, ``/policy``. The JSON API serves the same data under ``/api/v1/``:
``/api/v1/overview``, ``/api/v1/topics``, ``/api/v1/topics/NAME``, ``/api/v1/smartmodules``,
``/api/v1/groups``, ``/api/v1/groups/NAME``, ``/api/v1/policy``. A trailing ``/`` is the same
path without it. Anything else is 404; a NAME that cannot be a topic or group name is 400 with
the reason (checked here, before any lookup or policy decision).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..client.groups_admin import checked_group
from ..metadata.specs import SpecError, check_name
from ..protocol.errors import InvalidRequestError

API_PREFIX = "/api/v1"
OVERVIEW, TOPICS, TOPIC, SMARTMODULES, GROUPS, GROUP, POLICY = (
    "overview", "topics", "topic", "smartmodules", "groups", "group", "policy")
PAGES = (OVERVIEW, TOPICS, TOPIC, SMARTMODULES, GROUPS, GROUP, POLICY)

# Path segments of the pages without a name; the two with one are /topics/NAME and /groups/NAME.
_LISTS = {"": OVERVIEW, "overview": OVERVIEW, "topics": TOPICS, "smartmodules": SMARTMODULES, "groups": GROUPS,
          "policy": POLICY}
_ONE = {"topics": TOPIC, "groups": GROUP}


@dataclass(frozen=True)
class Route:
    page: str  # one of PAGES
    name: str | None = None  # the topic's or group's name on TOPIC and GROUP
    api: bool = False  # JSON under /api/v1, else HTML


@dataclass(frozen=True)
class RouteError:
    status: int  # 404 or 400
    message: str  # one line
    api: bool = False


def topic_problem(name: str) -> str | None:
    try:
        check_name(name, "topic")
        return None
    except SpecError as e:
        return e.message


def group_problem(name: str) -> str | None:
    try:
        checked_group(name)
        return None
    except InvalidRequestError as e:
        return str(e)


def route(path: str) -> Route | RouteError:
    """The page ``path`` names, or why there is none."""
    api = path == API_PREFIX or path.startswith(API_PREFIX + "/")
    rest = path[len(API_PREFIX):] if api else path
    if len(rest) > 1 and rest.endswith("/"):
        rest = rest[:-1]
    if not rest.startswith("/") and rest != "":
        return RouteError(404, f"no console page at {path[:200]}", api)
    parts = rest[1:].split("/") if rest else [""]
    if len(parts) == 1:
        page = _LISTS.get(parts[0])
        if page is None or (page == OVERVIEW and parts[0] == "overview" and not api):
            return RouteError(404, f"no console page at {path[:200]}", api)
        if api and parts[0] == "":
            return RouteError(404, f"no API at {path[:200]}: try {API_PREFIX}/overview", api)
        return Route(page, None, api)
    if len(parts) == 2 and parts[0] in _ONE:
        page, name = _ONE[parts[0]], parts[1]
        problem = topic_problem(name) if page == TOPIC else group_problem(name)
        if problem is not None:
            return RouteError(400, problem, api)
        return Route(page, name, api)
    return RouteError(404, f"no console page at {path[:200]}", api)
