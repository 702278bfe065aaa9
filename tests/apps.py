"""The apps the tests' clients talk to: built once per set of settings, started afresh for
each client.

FastAPI prepares a route's request handling on the first request that reaches it in an
app (an app's first requests took 20-100 ms each), so a new app per client cost the suite
about a minute per backend. An app is built once per settings sections; each client gets
it as a new process would have it: with the test's runtime, an empty API-key cache and new
middleware (the storefront's origin cache), so nothing of earlier requests is left in it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import FastAPI

from backinstock.auth.service import KeyCache
from backinstock.runtime import Runtime

_APPS: dict[str, FastAPI] = {}  # by the settings sections they were built with


def app_for(runtime: Runtime, **sections: Any) -> FastAPI:
    """The app for ``runtime`` with these settings sections replaced (``rate_limits=…``)."""
    # Imported here, not at the top: the app's routers import the worker module, which builds
    # its broker from the environment when first imported, and the environment is the one
    # conftest.py sets up (per pytest-xdist process), not the one the suite was started in.
    from backinstock.main import create_app

    rt = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, **sections))
    built_with = repr(sorted(sections.items()))
    app = _APPS.get(built_with)
    if app is None:
        app = _APPS[built_with] = create_app(runtime=rt)
    app.state.runtime = rt
    app.state.key_cache = KeyCache()
    app.middleware_stack = None  # rebuilt, with new middleware, on the next request
    return app
