"""The web chat in a real browser, for tests: Debian's chromium driven by Playwright, and a recording HTTP server.

`ChatPage` opens the chat in a fresh browser context (its own sessionStorage, so its own history)
with a recorder installed before the page's scripts run: a MutationObserver that keeps a sample of
the last answer and the steps at every change, so a test can ask afterwards what the page showed
*while* it streamed, without polling races; and the page's `securitypolicyviolation` events. It
also keeps every run request the page made and the run id the server answered with.

Never downloads a browser: chromium comes from the system (scripts/test apt-installs it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, ConsoleMessage, Locator, Playwright, Request, Response

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

# Runs before the page's own scripts, in every document of the context. Init scripts are injected by
# the browser itself, so the page's CSP (no inline scripts) does not apply to them.
RECORDER = """
(() => {
  const rec = { samples: [], csp: [] };
  window.__rill = rec;
  document.addEventListener("securitypolicyviolation", (e) => {
    rec.csp.push({ directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample, source: e.sourceFile });
  });
  let last = "";
  const snap = () => {
    const turns = document.querySelectorAll(".msg.assistant");
    const turn = turns[turns.length - 1];
    const steps = {};
    for (const li of document.querySelectorAll("#steps li.step")) {
      steps[li.dataset.node] = [li.dataset.state ?? "", li.querySelector(".step-detail")?.textContent ?? ""];
    }
    const sample = {
      turns: turns.length,
      length: turn?.querySelector(".answer")?.textContent.length ?? 0,
      ended: Boolean(turn?.querySelector(".actions, .error")),
      steps,
    };
    const key = JSON.stringify(sample);
    if (key !== last) {
      last = key;
      rec.samples.push({ t: performance.now(), ...sample });
    }
  };
  new MutationObserver(snap).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
})();
"""


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


class ChatPage:
    """One tab of the chat at ``url``; ``close()`` ends its browser context."""

    def __init__(self, browser: Browser, url: str, **context_options: Any) -> None:
        self.url = url
        self.context = browser.new_context(**context_options)
        self.context.add_init_script(RECORDER)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.console: list[ConsoleMessage] = []
        self.page_errors: list[str] = []
        self.run_requests: list[dict[str, Any]] = []  # bodies of POST /api/flows/{name}/runs
        self.run_ids: list[str] = []  # X-Rill-Run-Id of each run, in order
        self.page.on("console", self._on_console)  # a bound method: Playwright cannot wrap a builtin like list.append
        self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        self.page.on("request", self._on_request)
        self.page.on("response", self._on_response)
        self.page.goto(url)
        self.page.wait_for_selector("#flow-select:not([disabled])")

    @staticmethod
    def _is_run(url: str, method: str) -> bool:
        return method == "POST" and "/api/flows/" in url and url.endswith("/runs")

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(message)

    def _on_request(self, request: Request) -> None:
        if self._is_run(request.url, request.method):
            self.run_requests.append(request.post_data_json or {})

    def _on_response(self, response: Response) -> None:
        if self._is_run(response.url, response.request.method) and "x-rill-run-id" in response.headers:
            self.run_ids.append(response.headers["x-rill-run-id"])

    def pick(self, flow: str) -> None:
        self.page.select_option("#flow-select", flow)

    def ask(self, question: str) -> Locator:
        """Type and send ``question``; the new answer's article."""
        before = self.page.locator(".msg.assistant").count()
        self.page.fill("#question", question)
        self.page.click("#send")
        turn = self.page.locator(".msg.assistant").nth(before)
        turn.wait_for(state="attached")
        return turn

    def wait_ended(self, turn: Locator, timeout: float = 15_000) -> None:
        """Until the turn finished (its action bar) or failed (its error box)."""
        turn.locator(".actions, .error").first.wait_for(state="attached", timeout=timeout)

    def samples(self) -> list[dict[str, Any]]:
        return list(self.page.evaluate("() => window.__rill.samples"))

    def csp_violations(self) -> list[dict[str, Any]]:
        return list(self.page.evaluate("() => window.__rill.csp"))

    def console_errors(self) -> list[str]:
        return [m.text for m in self.console if m.type == "error"]

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


def streamed_lengths(samples: list[dict[str, Any]], turn_count: int) -> list[int]:
    """The distinct non-empty lengths the ``turn_count``-th answer showed before it ended, in order."""
    lengths: list[int] = []
    for s in samples:
        if s["turns"] != turn_count or s["ended"] or not s["length"]:
            continue
        if not lengths or lengths[-1] != s["length"]:
            lengths.append(s["length"])
    return lengths


class RecordingServer:
    """A tiny HTTP server on loopback that records every path it is asked for (a would-be exfiltration sink)."""

    def __init__(self) -> None:
        paths: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        self.paths = paths
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@contextmanager
def recording_server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)
