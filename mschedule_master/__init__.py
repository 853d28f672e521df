"""mschedule's master: registry, store, rollout engine, HTTP API and page, and the CLI.

They need the ``master`` extra (aiohttp, rich); ``pip install mschedule`` alone is the agent.
"""

from importlib.util import find_spec as _find_spec

if _missing := [_m for _m in ("aiohttp", "rich") if _find_spec(_m) is None]:
    raise SystemExit(
        f"mschedule: the master and the CLI need {', '.join(_missing)}, which the agent-only install "
        "leaves out: pip install 'mschedule[master]'"
    )
