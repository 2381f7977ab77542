"""The labeling page's HTTP server, safe beside a browser that also visits other sites.

The page runs on laptops whose browsers visit anything, so the server trusts no request for being local:
- a per-session token: the address `rlhf label` prints carries it (`/?token=…`), the page sends it back in
  a header with every API call, and a request without it gets nothing (a page on another origin, or one that
  reached us by DNS rebinding, cannot know it);
- the Host header must name this server (loopback names, or the `--host` address it was started on; served
  on every address, 0.0.0.0, any name, and the token alone guards it), and an Origin header, when sent, must
  be the page's own: DNS rebinding and cross-site requests are refused;
- labels are JSON only (`Content-Type: application/json`): a cross-origin HTML form cannot send that without
  a CORS preflight, which this server never grants;
- bodies over 64 kB, slow clients (a 30 s socket timeout) and unknown paths are refused;
- every response forbids framing, sniffing and referrers (the token is in the page's address).
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from core.schema import PeopleLabeling

MAX_BODY_BYTES = 64_000
TOKEN_HEADER = "X-Label-Token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name to serve on) is reachable from this machine only."""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def make_server(task: PeopleLabeling, host: str = "127.0.0.1", port: int = 8765,
                *, token: str | None = None) -> ThreadingHTTPServer:
    """The labeling page's HTTP server (not started): GET / the page, GET /api/state[?labeler=NAME] (the next
    prompt for that person), POST /api/label, each
    behind the checks of the module docstring. The session token is `server.token`; `page_address(server)`
    is what to open."""
    token = token or secrets.token_urlsafe(24)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # seconds a client may take to send its request: a slow one does not hold a thread forever

        def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, value: dict) -> None:
            self._send(code, json.dumps(value, ensure_ascii=False).encode("utf-8"))

        def _refusal(self, *, api: bool) -> tuple[int, str] | None:
            """Why this request is refused (status, reason), or None."""
            port = self.server.server_address[1]
            addressed = self.headers.get("Host") or ""
            if host not in ("0.0.0.0", "::", ""):  # served on one address: requests must name it
                names = LOOPBACK_NAMES if is_loopback(host) else (f"[{host}]" if ":" in host else host,)
                if addressed not in {f"{name}:{port}" for name in names}:
                    return 421, "this server answers only requests addressed to it (Host header)"
            origin = self.headers.get("Origin")
            if origin is not None and origin != f"http://{addressed}":
                return 403, "requests from other sites are refused (Origin header)"
            given = self.headers.get(TOKEN_HEADER) if api else parse_qs(urlsplit(self.path).query).get("token", [""])[0]
            if not secrets.compare_digest(given or "", token):
                return 403, "missing or wrong session token: open the address `rlhf label` printed"
            return None

        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            route = urlsplit(self.path).path
            if route not in ("/", "/index.html", "/api/state"):
                self._json(404, {"error": "not found"})
                return
            refused = self._refusal(api=route == "/api/state")
            if refused:
                self._json(refused[0], {"error": refused[1]})
            elif route == "/api/state":
                labeler = parse_qs(urlsplit(self.path).query).get("labeler", [None])[0]
                problem = labeler_problem(labeler) if labeler is not None else None
                if problem is not None:
                    self._json(400, {"error": problem})
                    return
                with lock:  # handing out a prompt leases it to this person
                    self._json(200, task.state(labeler.strip() if labeler else None))
            else:
                self._send(200, task.page(), "text/html; charset=utf-8")

        def do_POST(self) -> None:  # noqa: N802
            if urlsplit(self.path).path != "/api/label":
                self._json(404, {"error": "not found"})
                return
            refused = self._refusal(api=True)
            if refused:
                self._json(refused[0], {"error": refused[1]})
                return
            if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
                self._json(415, {"error": "expected Content-Type: application/json"})
                return
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                self._json(411, {"error": "expected a Content-Length"})
                return
            if not 0 < length <= MAX_BODY_BYTES:
                self.close_connection = True
                self._json(413, {"error": f"expected a body of 1 to {MAX_BODY_BYTES} bytes"})
                return
            try:
                record = json.loads(self.rfile.read(length))
            except (ValueError, RecursionError):
                self._json(400, {"error": "expected a JSON object"})
                return
            if not isinstance(record, dict):
                self._json(400, {"error": "expected a JSON object"})
                return
            problem = labeler_problem(record.get("labeler"))
            if problem is not None:
                self._json(400, {"error": problem})
                return
            with lock:  # one submission at a time: the task checks who labeled an item first
                self._json(*task.submit(record))

        def log_message(self, format: str, *args) -> None:  # one quiet line per request is noise here
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.token = token
    return server


def labeler_problem(name) -> str | None:
    """Why `name` cannot sign a label from the page (every label names who gave it), or None."""
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 64:
        return "expected your name (1 to 64 characters) in the labeler field"
    return None


def page_address(server: ThreadingHTTPServer) -> str:
    """The address to open: this server with its session token."""
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={server.token}"
