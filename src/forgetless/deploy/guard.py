"""Who may talk to a server that forgetless runs on this machine without an API key (`serve`, `ui`).

Binding to 127.0.0.1 keeps other machines out, but not web pages open in this machine's browser: a
page can POST to http://127.0.0.1:PORT ("no-cors" requests reach the server, the page only cannot
read the answer), and with DNS rebinding a page's own host name points at 127.0.0.1 and it can read
the answers too. Both leave a trace in the request: a rebinding page sends its own name as `Host`, a
cross-site request sends the page's `Origin`. Without a key, a request must name a loopback host in
both (the Origin may be absent: curl, the OpenAI clients and other programs send none).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import JSONResponse

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _host_name(value: str) -> str:
    """The name in a Host header or an Origin URL, without its port ('[::1]:8000' -> '::1')."""
    netloc = urlsplit(value).netloc if "//" in value else value
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def refusal(headers: dict[bytes, bytes]) -> str | None:
    """Why a keyless local server must refuse this request (None: it is from this machine's programs
    or from a page that the server itself served)."""
    host = headers.get(b"host", b"").decode("latin-1")
    if _host_name(host).lower() not in LOOPBACK:
        return f"Host '{host}' is not a loopback name; open the server as http://127.0.0.1:PORT"
    origin = headers.get(b"origin")
    if origin is not None and _host_name(origin.decode("latin-1")).lower() not in LOOPBACK:
        return f"requests from pages of {origin.decode('latin-1')!r} are refused; this server has no API key"
    return None


class LocalOnly:
    """ASGI middleware refusing (403) HTTP and websocket requests that `refusal` names."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            why = refusal(dict(scope["headers"]))
            if why is not None:
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                body = {"error": {"message": why, "type": "permission_error", "param": None, "code": None}}
                return await JSONResponse(body, status_code=403)(scope, receive, send)
        return await self.app(scope, receive, send)
