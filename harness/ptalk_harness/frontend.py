"""The real ComfyUI frontend in Chromium, driven by Playwright for Python: what the real-frontend tests share.

A page on a :mod:`ptalk_harness.server` process (:func:`open_page`), what it reports (:class:`Events`), loading a
workflow (:func:`load_graph`), pointing its file widgets at uploaded media (:data:`JS_SET_FILES`), pressing Run
(:func:`queue_from_ui`) and the layout of the graph on the canvas (:func:`check_layout`, :func:`layout_problems`).
Playwright is imported by the caller (``sync_playwright``); this module only needs the page objects it gets.

Chromium: :func:`find_chromium` -- ``$PTALK_CHROMIUM`` or the system one (Debian ``chromium``); Playwright only drives
it (``executable_path``), it never downloads a browser.

Console errors that are not failures (:meth:`Events.unexpected_errors` leaves them out), each with its reason:
  * ``404`` on ``/user.css``, ``/api/userdata/...`` (user.css, comfy.templates.json, saved workflows/subgraphs) and
    ``/favicon.ico``: the frontend probes optional per-user files that a fresh user directory does not have;
  * Content-Security-Policy refusals of requests to other hosts (``api.comfy.org`` registry look-ups of node packs,
    ``huggingface.co`` size probes of the default graph's models): ``--disable-api-nodes`` makes the server send
    ``connect-src 'self'``, which is what keeps the frontend off the network; the URLs are collected;
  * at start-up only, before any workflow is loaded: frontend 1.49's "ComfyApp graph accessed before initialization"
    and frontend 1.32's "TypeError: Cannot read properties of undefined (reading 'id')" (logged by Vue from a
    setting's onChange during the app's own start-up).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

__all__ = ["CHROMIUM_ARGS", "VIEWPORT", "SETTINGS", "INIT_SCRIPT", "QUEUE_BUTTON", "FILE_WIDGETS", "NOTE_TYPES",
           "LAYOUT_TOLERANCE", "JS_LOAD", "JS_FIT", "JS_LAYOUT", "JS_PREVIEWS_PENDING", "JS_REDRAW", "JS_SET_FILES",
           "JS_CLOSE_TOASTS", "BrowserUnavailable", "find_chromium", "Events", "open_page", "load_graph",
           "wait_previews", "layout_problems", "check_layout", "queue_from_ui", "page_frontend_version"]

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}
#: frontend settings for readable screenshots: full node detail at any zoom (no low-detail rendering of nodes
#: when a large graph is fitted into view), no minimap over the canvas, the top menu bar.
#: The frontend's own validation of loaded workflows against its schema (zod) is on: it is the default of
#: frontend 1.32 (which then shows an alert to the user), off by default in 1.49.
SETTINGS = {"LiteGraph.Canvas.MinFontSizeForLOD": 0, "Comfy.Minimap.Visible": False, "Comfy.UseNewMenu": "Top",
            "Comfy.Validation.Workflows": True}
#: the frontend 1.32 "Introducing Nodes 2.0" banner is dismissed through localStorage
INIT_SCRIPT = "try { localStorage.setItem('vueNodesBannerDismissed', 'true'); } catch (e) {}"
QUEUE_BUTTON = '[data-testid="queue-button"]'  # the Run button (frontend 1.32 and 1.49)
#: the widget that holds the file name, per upload node type
FILE_WIDGETS = {"LoadImage": "image", "LoadAudio": "audio", "LoadVideo": "file"}
#: node types that are notes: they lie outside the stage groups (tests/test_workflows.py)
NOTE_TYPES = {"Note", "MarkdownNote"}

_IGNORED_404 = re.compile(r"/(api/)?userdata([/?]|$)|/user\.css(\?|$)|/favicon\.ico(\?|$)")
_CSP = re.compile(r"violates the following Content Security Policy directive|because it violates the document's "
                  r"Content Security Policy")
_STARTUP_ONLY = (
    "ComfyApp graph accessed before initialization",  # frontend 1.49
    "Cannot read properties of undefined (reading 'id')",  # frontend 1.32
)


class BrowserUnavailable(RuntimeError):
    """No usable Chromium: the message says what to install or set."""


def find_chromium() -> str:
    """The Chromium/Chrome executable: ``$PTALK_CHROMIUM`` when set, else the first of ``chromium``,
    ``chromium-browser``, ``google-chrome``, ``google-chrome-stable`` on the PATH.

    Raises:
        BrowserUnavailable: ``$PTALK_CHROMIUM`` is not an executable, or none is installed.
    """
    exe = os.environ.get("PTALK_CHROMIUM")
    if exe:
        if not (Path(exe).is_file() and os.access(exe, os.X_OK)):
            raise BrowserUnavailable(f"PTALK_CHROMIUM={exe!r} is not an executable; point it at Chromium/Chrome or "
                                     f"unset it to use the system Chromium (apt-get install chromium)")
        return exe
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise BrowserUnavailable("the frontend tests need Chromium: apt-get install chromium (or set PTALK_CHROMIUM to a "
                             "Chromium/Chrome executable)")


class Events:
    """What a page reported: console messages, uncaught exceptions, HTTP errors, requests to other hosts."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.console: list[tuple[str, str, str]] = []  # (type, text, url)
        self.page_errors: list[str] = []
        self.http_errors: list[tuple[int, str]] = []
        self.external: list[str] = []  # aborted by the page's route (never cleared)
        self.blocked: set[str] = set()  # other-host URLs the server's CSP refused (never cleared)

    def on_console(self, msg):
        """Record a console message (and the URL of a CSP refusal)."""
        text = msg.text
        self.console.append((msg.type, text, (msg.location or {}).get("url", "")))
        if _CSP.search(text):
            m = re.search(r"https?://[^\s'\"]+", text)
            if m:
                self.blocked.add(m.group(0).rstrip("."))

    def clear(self):
        """Forget everything recorded so far."""
        self.console.clear()
        self.page_errors.clear()
        self.http_errors.clear()

    def unexpected_errors(self, startup: bool = False) -> list[str]:
        """Uncaught exceptions and console errors that are not in the module docstring's list of
        console errors that are not failures."""
        bad = [f"uncaught exception: {e}" for e in self.page_errors]
        for typ, text, url in self.console:
            if typ != "error":
                continue
            if "404" in text and _IGNORED_404.search(url or ""):
                continue
            if _CSP.search(text):
                continue
            if startup and any(s in text for s in _STARTUP_ONLY):
                continue
            bad.append(f"console error: {text[:500]} (at {url})")
        return bad


def open_page(browser, srv):
    """A new browser context and page on the server's frontend, the app ready (graph, canvas, Run button):
    ``(context, page, Events)``; requests to other hosts are aborted (and recorded)."""
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.add_init_script(INIT_SCRIPT)
    page = ctx.new_page()
    ev = Events(srv.url)
    page.on("console", ev.on_console)
    page.on("pageerror", lambda e: ev.page_errors.append(f"{e}"))
    page.on("response", lambda r: r.status >= 400 and ev.http_errors.append((r.status, r.url)))

    def route(r):  # belt and braces: nothing leaves the machine even if a CSP would let it
        u = r.request.url
        if u.startswith(srv.url) or u.startswith(("data:", "blob:")):
            r.continue_()
        else:
            ev.external.append(u)
            r.abort()

    page.route("**/*", route)
    page.goto(srv.url)
    page.wait_for_function("() => !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph)",
                           timeout=120_000)
    page.locator(QUEUE_BUTTON).first.wait_for(state="visible", timeout=60_000)
    page.wait_for_timeout(1000)  # the start-up workflow (the default graph) settles
    return ctx, page, ev



JS_LOAD = "async (wf) => { await window.app.loadGraphData(wf); }"
JS_FIT = """async () => {
  const cmd = window.app.extensionManager && window.app.extensionManager.command;
  if (cmd && cmd.execute) await cmd.execute('Comfy.Canvas.FitView');
  else window.app.canvas.ds && window.app.canvas.setDirty(true, true);
}"""
JS_LAYOUT = """() => {  // every node's box as drawn and its DOM widgets' boxes (graph units), and the groups
  const app = window.app, g = app.graph, c = app.canvas, th = window.LiteGraph.NODE_TITLE_HEIGHT || 30;
  const ds = c.ds, cr = c.canvas.getBoundingClientRect();
  const toGraph = r => [(r.left - cr.left) / ds.scale - ds.offset[0], (r.top - cr.top) / ds.scale - ds.offset[1],
                        r.width / ds.scale, r.height / ds.scale];
  const nodes = g._nodes.map(n => {
    // pos/size, not getBounding(): the frontends refresh the cached bounding box only when they redraw the node
    const box = [n.pos[0], n.pos[1] - th, n.size[0], n.size[1] + th];
    const dom = [];  // a preview (video, image, audio) may reach out of its widget, and the widget out of the node
    for (const w of n.widgets || []) {
      const el = w.element;
      if (!el || !el.isConnected) continue;
      for (const e of [el, ...el.querySelectorAll('video, img, audio')]) {
        const st = getComputedStyle(e);
        if (st.display === 'none' || st.visibility === 'hidden') continue;
        const r = e.getBoundingClientRect();
        if (r.width > 0 && r.height > 0) dom.push([w.name, e.tagName.toLowerCase(), ...toGraph(r)]);
      }
    }
    return {id: n.id, title: n.title, type: n.type, box, dom};
  });
  const groups = (g._groups || g.groups || []).map(gr => ({title: gr.title, box: [...(gr._bounding || gr.bounding)]}));
  return {nodes, groups};
}"""
#: media previews the frontend has not shown yet: Load Video's of a file Chromium plays (an MPEG-1 .mpg never
#: loads), Load Image's image
JS_PREVIEWS_PENDING = """() => window.app.graph._nodes.flatMap(n => {
  const value = name => String(((n.widgets || []).find(w => w.name === name) || {}).value ?? '');
  if (n.type === 'LoadVideo' && /\\.(mp4|webm)$/i.test(value('file'))) {
    const w = (n.widgets || []).find(w => w.name === 'video-preview');
    const v = w && w.element && w.element.querySelector('video');
    return v && v.readyState >= 2 ? [] : [`${n.id} ${n.type} ${value('file')}`];
  }
  if (n.type === 'LoadImage' && value('image'))
    return (n.imgs || []).length && n.imgs.every(i => i.complete) ? [] : [`${n.id} ${n.type} ${value('image')}`];
  return [];
})"""
JS_REDRAW = """async () => {  // draw now (node sizes, DOM widget positions), then let the DOM follow
  window.app.canvas.draw(true, true);
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
}"""
JS_SET_FILES = """(vals) => {
  const out = [];
  for (const n of window.app.graph._nodes) {
    const wname = vals.widgets[n.type];
    const v = vals.files[n.type];
    if (!wname || v === undefined) continue;
    const w = (n.widgets || []).find(w => w.name === wname);
    if (!w) continue;
    const opts = w.options && w.options.values;
    if (Array.isArray(opts) && !opts.includes(v)) opts.push(v);  // what an upload through the UI does
    w.value = v;
    if (w.callback) w.callback(v, window.app.canvas, n);
    out.push([n.id, n.type, w.name, w.value]);
  }
  window.app.graph.setDirtyCanvas(true, true);
  return out;
}"""
JS_CLOSE_TOASTS = """() => { for (const b of document.querySelectorAll(
    '.p-toast-message button, .p-toast-close-button, [data-testid="error-overlay"] button[aria-label]')) {
  try { if ((b.getAttribute('aria-label') || '').match(/close|dismiss/i) || b.classList.contains('p-toast-close-button')) b.click(); } catch (e) {} } }"""


def load_graph(page, wf: dict):
    """Load a UI workflow into the page's graph (closing what earlier steps left on screen) and fit it into view."""
    page.evaluate(JS_CLOSE_TOASTS)  # what earlier steps left on screen
    page.evaluate(JS_LOAD, wf)
    page.evaluate(JS_FIT)
    page.wait_for_timeout(800)  # the canvas redraws after fitting


def wait_previews(page, timeout_ms: int = 20_000) -> list[str]:
    """Wait until the frontend has shown every media preview of the loaded graph (and grown its node); return
    the previews still missing after ``timeout_ms`` (empty when all loaded)."""
    try:
        page.wait_for_function(f"() => ({JS_PREVIEWS_PENDING})().length === 0", timeout=timeout_ms)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: reported by the caller
        pass
    page.wait_for_timeout(300)  # a loaded preview resizes its node on the next frame
    page.evaluate(JS_REDRAW)
    return page.evaluate(JS_PREVIEWS_PENDING)


#: overlaps up to this many px (rounding of DOM boxes, frame borders) are not counted
LAYOUT_TOLERANCE = 4


def layout_problems(layout: dict, tolerance: float = LAYOUT_TOLERANCE) -> list[str]:
    """What is wrong with a graph's layout on the canvas (``JS_LAYOUT``): nodes overlapping each other, a node
    (with its previews and other DOM widgets) not inside exactly one group or reaching into another group. Notes
    (``NOTE_TYPES``) need no group but must not overlap one."""
    def extent(n):
        x, y, w, h = n["box"]
        x0, y0, x1, y1 = x, y, x + w, y + h
        for _name, _tag, dx, dy, dw, dh in n["dom"]:
            x0, y0, x1, y1 = min(x0, dx), min(y0, dy), max(x1, dx + dw), max(y1, dy + dh)
        return x0, y0, x1, y1

    def overlap(a, b):
        return min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])

    def fmt(b):
        return "[" + ", ".join(f"{v:.0f}" for v in b) + "]"

    nodes = [(f"{n['id']} {n['title']} ({n['type']})", n["type"], extent(n)) for n in layout["nodes"]]
    groups = [(g["title"], (g["box"][0], g["box"][1], g["box"][0] + g["box"][2], g["box"][1] + g["box"][3]))
              for g in layout["groups"]]
    problems = []
    for i, (a, _, ba) in enumerate(nodes):
        for b, _, bb in nodes[i + 1:]:
            w, h = overlap(ba, bb)
            if w > tolerance and h > tolerance:
                problems.append(f"nodes {a} {fmt(ba)} and {b} {fmt(bb)} overlap by {w:.0f} x {h:.0f} px")
    for name, typ, b in nodes:
        inside = [t for t, g in groups if g[0] - tolerance <= b[0] and g[1] - tolerance <= b[1]
                  and b[2] <= g[2] + tolerance and b[3] <= g[3] + tolerance]
        touching = [f"{t} {fmt(g)}" for t, g in groups if t not in inside and min(overlap(b, g)) > tolerance]
        if typ in NOTE_TYPES or len(inside) == 1:
            if touching:
                problems.append(f"node {name} {fmt(b)} reaches into group(s) it is not in: {touching}")
        elif inside:
            problems.append(f"node {name} {fmt(b)} lies inside {len(inside)} groups {inside}")
        elif touching:
            problems.append(f"node {name} {fmt(b)} sticks out of its group {touching}")
        else:
            problems.append(f"node {name} {fmt(b)} lies in no group")
    return problems


def check_layout(page, where: str, tmp_path: Path) -> list[str]:
    """Wait for the previews, then the layout problems of the graph on the canvas (printed as well); the layout
    goes into ``tmp_path``."""
    pending = wait_previews(page)
    layout = page.evaluate(JS_LAYOUT)
    (Path(tmp_path) / "layout.json").write_text(json.dumps(layout, indent=1))
    problems = [f"{where}: media previews not shown after 20 s: {pending}"] if pending else []
    problems += [f"{where}: {p}" for p in layout_problems(layout)]
    for p in problems:
        print(f"[frontend] layout: {p}")
    return problems


def queue_from_ui(page, timeout_ms: int = 60_000) -> str:
    """Click the Run button; return the prompt id of the POST /prompt it makes (fails on a refused prompt)."""
    with page.expect_response(lambda r: r.request.method == "POST" and re.search(r"/prompt/?(\?|$)", r.url),
                              timeout=timeout_ms) as info:
        page.locator(QUEUE_BUTTON).first.click()
    resp = info.value
    body = resp.json()
    if resp.status != 200 or body.get("node_errors"):
        raise AssertionError(f"the server refused the UI's prompt: {body}")
    return body["prompt_id"]


def page_frontend_version(page) -> tuple[int, ...]:
    """The version of the frontend the page runs, e.g. ``(1, 49, 6)`` (empty when it does not say)."""
    text = page.evaluate("() => String(window.__COMFYUI_FRONTEND_VERSION__ || '')")
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])
