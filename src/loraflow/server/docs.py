"""`/docs`: Swagger UI from files installed with loraflow (the swagger-ui-bundle package), not from a CDN,
so the API reference works on a machine without internet and leaks no visit to a third party."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/static/swagger-ui"


def install(app: FastAPI) -> None:
    """Replace FastAPI's CDN-backed /docs with one served from the installed Swagger UI files."""
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/docs"]
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        swagger_ui_path = None

    if swagger_ui_path:
        app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if not swagger_ui_path:
            return HTMLResponse(
                "<p>The interactive API reference needs the swagger-ui-bundle package: "
                "<code>pip install 'loraflow[server]'</code>. The schema itself is at "
                '<a href="/openapi.json">/openapi.json</a>.</p>'
            )
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )
