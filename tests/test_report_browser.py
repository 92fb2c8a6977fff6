"""Open the built report in headless Chromium and check it really renders (offline, file:// URL).

Talks to Chromium over the DevTools protocol on ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, messages are
JSON terminated by NUL), so it needs only the standard library: no websocket package, no downloaded browser.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image
from report_fixtures import EVIL, make_run_dir

from reports.build import build_report
from reports.stats import CD_METRICS

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]

CHECK_JS = r"""
(() => {
  const divs = Array.from(document.querySelectorAll('.plot .plotly-graph-div'));
  const empty = divs.filter(d => !d.querySelector('svg, canvas')).map(d => d.id);
  const ratio = Array.from(document.querySelectorAll('.plot-ratio .plotly-graph-div')).map(d => ({
    id: d.id,
    means: (d.data || []).filter(t => t.meta === 'mean').map(t => t.name),
    bands: (d.data || []).filter(t => t.meta === 'band').length,
  }));
  const text = document.body.innerText;
  return JSON.stringify({
    n: divs.length, empty, ratio, plotly: typeof Plotly,
    evilText: text.includes('<script>alert(1)</script>'),
    imgs: Array.from(document.querySelectorAll('.gallery img')).filter(i => i.naturalWidth > 0).length,
    toc: document.querySelectorAll('nav a').length,
    robust: document.querySelectorAll('#robustness table.sortable tbody tr').length,
    pairwise: document.querySelectorAll('#pairwise table.sortable tbody tr').length,
    cd: Array.from(document.querySelectorAll('.plot-cd .plotly-graph-div')).map(d => ({
      id: d.id,
      drawn: !!d.querySelector('svg'),
      variants: (d.data || []).filter(t => t.meta === 'variant').map(t => t.name),
      groups: (d.data || []).filter(t => t.meta === 'group').length,
      cdBar: (d.data || []).filter(t => t.meta === 'cd').length,
    })),
  });
})()
"""

# Click the robustness table's image-AUROC change header twice; return that column after each click.
SORT_CHECK_JS = r"""
(() => {
  const table = document.querySelector('#robustness table.sortable');
  const heads = Array.from(table.tHead.rows[0].cells);
  const col = heads.findIndex(h => h.textContent.startsWith('Δ image_auroc'));
  const read = () => Array.from(table.tBodies[0].rows).map(r => parseFloat(r.cells[col].textContent));
  const before = read();
  heads[col].click();
  const asc = read(), ascSort = heads[col].getAttribute('aria-sort');
  heads[col].click();
  const desc = read(), descSort = heads[col].getAttribute('aria-sort');
  return JSON.stringify({col, before, asc, ascSort, desc, descSort});
})()
"""

# Keep only the robustness and critical-difference sections in view and ask for a screenshot of them.
STATS_SHOT_JS = r"""
(() => {
  document.querySelectorAll('main section').forEach(s => {
    if (!['robustness', 'cd'].includes(s.id)) { s.style.display = 'none'; }
  });
  document.querySelector('nav').style.display = 'none';
  window.scrollTo(0, 0);
  const top = document.getElementById('robustness').getBoundingClientRect();
  const cds = Array.from(document.querySelectorAll('#cd .plot-cd')).slice(0, 2);
  const bottom = cds.length ? cds[cds.length - 1].getBoundingClientRect().bottom : top.bottom;
  return JSON.stringify({clip: {x: 0, y: top.top, width: 1400, height: bottom - top.top, scale: 1}});
})()
"""


class Chromium:
    """Minimal DevTools client over Chromium's debugging pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # move the child's ends to high fds first so the dup2 to 3/4 below cannot clobber one another
        child_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 100)
        child_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 100)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def wire() -> None:
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=wire,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(child_r)
        os.close(child_w)
        self._next = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Condition()
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        self._replies[msg["id"]] = msg
                        self._lock.notify_all()
                else:
                    self.events.put(msg)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send one command and wait for its reply; raise on protocol errors."""
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._next not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no reply to {method}")
                self._lock.wait(min(left, 0.5))
            reply = self._replies.pop(self._next)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def drain(self) -> list[dict[str, Any]]:
        """Events received so far."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        """Ask the browser to exit, then make sure it did (only this process, by its id)."""
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass


def _errors(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions, failed loads and any JS dialog (an alert would mean injection)."""
    bad = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            bad.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
            )
        elif m == "Runtime.exceptionThrown":
            bad.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            bad.append("log: " + p["entry"].get("text", ""))
        elif m == "Page.javascriptDialogOpening":
            bad.append("dialog: " + p.get("message", ""))
    return bad


def render_in_chromium(
    report: Path, profile: Path, steps: Sequence[str] = ()
) -> tuple[dict[str, Any], list[dict[str, Any]], bytes]:
    """Open `report` from its file:// URL; return the page state (CHECK_JS), all events and a screenshot.

    Each of ``steps`` (JS returning a JSON string) then runs in turn; its value lands in ``state["steps"]``,
    and a value with a ``clip`` also gets a screenshot of that region (``"png"``).
    """
    binary = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if binary is None:
        pytest.fail("chromium not found: run `bash scripts/ensure_chromium.sh`")
    browser = Chromium(binary, profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1400, "height": 1800, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.send("Page.navigate", {"url": report.resolve().as_uri()}, session=session)
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in events):
            assert time.monotonic() < deadline, "page did not load"
            try:
                events.append(browser.events.get(timeout=1))
            except queue.Empty:
                pass
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:  # plotly draws after load; wait until every plot has its svg
            res = browser.send(
                "Runtime.evaluate", {"expression": CHECK_JS, "returnByValue": True}, session=session
            )
            state = json.loads(res["result"]["value"])
            if state["n"] and not state["empty"]:
                break
            time.sleep(0.5)
        time.sleep(0.5)
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        state["steps"] = []
        for js in steps:
            res = browser.send("Runtime.evaluate", {"expression": js, "returnByValue": True}, session=session)
            value = json.loads(res["result"]["value"])
            if "clip" in value:
                time.sleep(0.5)  # plotly relayouts after sections are hidden
                params = {"format": "png", "clip": value["clip"], "captureBeyondViewport": True}
                value["png"] = base64.b64decode(
                    browser.send("Page.captureScreenshot", params, session=session)["data"]
                )
            state["steps"].append(value)
        events += browser.drain()
    finally:
        browser.close()

    return state, events, base64.b64decode(shot["data"])


@pytest.mark.slow
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    report = build_report(run)

    # expected variants, straight from the Parquet rows: one per (method, params) among ok rows
    ok = pd.read_parquet(run / "results")
    ok = ok[ok["status"] == "ok"]
    variants = ok[["method", "params"]].drop_duplicates()

    state, events, png = render_in_chromium(
        report, tmp_path / "profile", steps=[SORT_CHECK_JS, STATS_SHOT_JS]
    )
    # A test artifact only: docs/img/report.png (README) is refreshed by hand from a real sweep's report.
    dest = ROOT / "artifacts" / "report_screenshot.png"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(png)
    sort, shot = state["steps"]
    _save_stats_shot(shot["png"])

    assert _errors(events) == []
    assert state["plotly"] == "object"
    assert state["n"] >= 10 and state["empty"] == [], state
    assert state["ratio"], "no ratio plots"
    for plot in state["ratio"]:
        assert len(plot["means"]) == len(variants), plot
        assert {n.split(" ")[0] for n in plot["means"]} == set(ok["method"]), plot
        assert plot["bands"] <= len(variants)
    assert state["evilText"], "the <script> category must be shown as text"
    assert state["imgs"] > 0 and state["toc"] >= 8
    assert EVIL not in report.read_text(encoding="utf-8")

    # statistics sections: one robustness row per variant and contaminated ratio, one pairwise row per pair
    # and ratio, one CD diagram per CD metric and ratio with every variant, the CD bar and at least one group
    ratios = ok["ratio"].nunique()
    assert state["robust"] == len(variants) * (ratios - 1)
    assert state["pairwise"] == len(variants) * (len(variants) - 1) // 2 * ratios
    assert len(state["cd"]) == len(CD_METRICS) * ratios, state["cd"]
    for plot in state["cd"]:
        assert plot["drawn"] and len(plot["variants"]) == len(variants), plot
        assert plot["cdBar"] == 1 and plot["groups"] >= 1, plot
    # clicking a header sorts the robustness table by it, a second click reverses the order
    assert sort["col"] >= 0 and sorted(sort["before"]) == sort["asc"] and sort["ascSort"] == "ascending"
    assert sort["desc"] == sort["asc"][::-1] and sort["descSort"] == "descending"


def _save_stats_shot(png: bytes) -> None:
    """The robustness table + CD diagrams: full size in artifacts/, and the small palette copy that
    docs/img/report_stats.png is refreshed from by hand (a test never rewrites a tracked file)."""
    (ROOT / "artifacts" / "report_stats.png").write_bytes(png)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.width > 1000 and img.height > 400, img.size
    small = img.resize((900, round(img.height * 900 / img.width)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
    assert buf.tell() <= 150 * 1024, buf.tell()
    (ROOT / "artifacts" / "report_stats_docs.png").write_bytes(buf.getvalue())
