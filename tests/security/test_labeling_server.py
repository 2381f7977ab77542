"""The labeling server beside a browser that visits other sites: no token, a foreign Host (DNS rebinding), a
foreign Origin, a form's text/plain body, a huge Content-Length are each refused without touching the labels;
two people on one page cannot silently overwrite each other; a torn last line does not swallow the next label;
and in Chromium a page on another origin that auto-submits a form stores nothing."""

from __future__ import annotations

import http.client
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.label_server import make_server, page_address
from stages.rank.labeling import LabelingTask
from stages.rank.labels import read_labels
from stages.sample.artifact import sample_key
from tests.helpers import chromium_or_skip

SAMPLES = [{"prompt": [{"role": "user", "content": f"question {i}?"}], "answers": [f"a{i}", f"b{i}", f"c{i}"]}
           for i in range(3)]
KEYS = [sample_key(s["prompt"], s["answers"]) for s in SAMPLES]


@pytest.fixture
def served(tmp_path):
    """(server, labels file): a labeling server on a free loopback port, in a thread."""
    labels = tmp_path / "labels" / "labels.jsonl"
    server = make_server(LabelingTask("people", SAMPLES, KEYS, labels, 2), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, labels
    server.shutdown()
    server.server_close()


def request(server, method: str, path: str, *, body: bytes | None = None, **headers) -> tuple[int, dict, dict]:
    """(status, JSON body or {}, response headers) of one request; Host and the token header as given."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    connection.putrequest(method, path, skip_host=True)
    for name, value in headers.items():
        connection.putheader(name.replace("_", "-"), value)
    if body is not None:
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = {}
    return response.status, parsed, dict(response.headers)


def label(key: str, labeler: str, ranks=(1, 2, 3)) -> bytes:
    return json.dumps({"key": key, "ranks": list(ranks), "labeler": labeler}).encode()


def test_requests_without_the_token_from_other_hosts_or_origins_or_as_forms_are_refused(served):
    server, labels = served
    port, token = server.server_address[1], server.token
    own = {"Host": f"127.0.0.1:{port}", "X_Label_Token": token}
    assert request(server, "GET", "/api/state", Host=f"127.0.0.1:{port}")[0] == 403
    assert request(server, "GET", "/", Host=f"127.0.0.1:{port}")[0] == 403
    status, state, headers = request(server, "GET", "/api/state", **own)
    assert status == 200 and state["item"]["key"] == KEYS[0]
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"] and headers["Referrer-Policy"] == "no-referrer"
    assert request(server, "GET", f"/?token={token}", Host=f"localhost:{port}")[0] == 200
    # DNS rebinding: the right token cannot even be tried under another name
    assert request(server, "GET", "/api/state", Host=f"evil.example:{port}", X_Label_Token=token)[0] == 421
    body = label(KEYS[0], "ana")
    assert request(server, "POST", "/api/label", body=body, **own, Origin="http://evil.example",
                   Content_Type="application/json")[0] == 403
    assert request(server, "POST", "/api/label", body=body, **own, Content_Type="text/plain")[0] == 415
    assert request(server, "POST", "/api/label", body=None, **own, Content_Type="application/json",
                   Content_Length="x")[0] == 411
    huge = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    huge.putrequest("POST", "/api/label", skip_host=True)
    for name, value in {"Host": own["Host"], "X-Label-Token": token, "Content-Type": "application/json",
                        "Content-Length": str(10 ** 12)}.items():
        huge.putheader(name, value)
    huge.endheaders()
    assert huge.getresponse().status == 413
    huge.close()
    assert not labels.exists()
    status, _, _ = request(server, "POST", "/api/label", body=body, **own, Origin=f"http://127.0.0.1:{port}",
                           Content_Type="application/json")
    assert status == 200 and read_labels(labels)[KEYS[0]]["labeler"] == "ana"


def test_two_people_on_one_page_do_not_overwrite_each_other_and_a_torn_line_swallows_nothing(served):
    server, labels = served
    own = {"Host": f"127.0.0.1:{server.server_address[1]}", "X_Label_Token": server.token,
           "Content_Type": "application/json"}
    assert request(server, "POST", "/api/label", body=label(KEYS[0], ""), **own)[0] == 400  # unsigned
    assert request(server, "POST", "/api/label", body=label(KEYS[0], "ana"), **own)[0] == 200
    status, answer, _ = request(server, "POST", "/api/label", body=label(KEYS[0], "bob", (3, 2, 1)), **own)
    assert status == 409 and "ana labeled this prompt first" in answer["error"]
    assert read_labels(labels)[KEYS[0]]["ranks"] == [1, 2, 3]
    assert request(server, "POST", "/api/label", body=label(KEYS[0], "ana", (2, 1, 3)), **own)[0] == 200  # a correction

    with labels.open("ab") as torn:  # what a writer killed mid-line leaves
        torn.write(b'{"key": "' + KEYS[1].encode() + b'", "ranks": [1, 2')
    assert request(server, "POST", "/api/label", body=label(KEYS[2], "bob"), **own)[0] == 200
    stored = read_labels(labels)
    assert stored[KEYS[0]]["ranks"] == [2, 1, 3] and stored[KEYS[2]]["labeler"] == "bob" and KEYS[1] not in stored


ATTACK = """<!doctype html><html><body>
<form id="f" method="POST" enctype="text/plain" action="http://127.0.0.1:{port}/api/label">
<input name='{{"key": "{key}", "ranks": [1, 2, 3], "labeler": "mallory", "x": "' value='"}}'>
</form>
<script>
fetch("http://127.0.0.1:{port}/api/label", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
      body: JSON.stringify({{key: "{key}", ranks: [3, 2, 1], labeler: "mallory"}})}})
  .finally(() => document.getElementById("f").submit());
</script></body></html>"""


def test_a_page_on_another_origin_cannot_store_a_label_in_chromium(served, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = chromium_or_skip()
    server, labels = served
    site = tmp_path / "site"
    site.mkdir()
    (site / "attack.html").write_text(ATTACK.format(port=server.server_address[1], key=KEYS[0]))
    handler = lambda *a, **k: SimpleHTTPRequestHandler(*a, directory=str(site), **k)  # noqa: E731
    other = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            with page.expect_navigation(url=f"http://127.0.0.1:{server.server_address[1]}/api/label"):
                page.goto(f"http://localhost:{other.server_address[1]}/attack.html")
            assert "refused" in page.content()  # the Origin check, before the token would be asked for
            page.goto(page_address(server))   # the real page, opened from the printed address, still works
            page.wait_for_selector("#main:not([hidden])")
            browser.close()
    finally:
        other.shutdown()
        other.server_close()
    assert not Path(labels).exists()
