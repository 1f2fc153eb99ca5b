"""Weight files: reading and writing flat state dicts (safetensors, or PyTorch pickles loaded with
``torch.load(weights_only=True)``), the ``{"format", "config"}`` metadata of the pack's own files, and the
checks that a state dict fits a module.

Model-agnostic: every reader and check takes the ``error`` class to raise (a ValueError subclass such as
``IdentityNetFormatError``), so callers keep their own exception types and messages. The model-specific
loaders (``load_identitynet``, ``load_animatenet``, …) live with their models.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict

import torch
from torch import nn


def flatten_state_dict(sd: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """A nested ``{name: {name: tensor}}`` dict flattened to ``{"name.name": tensor}`` (non-tensor leaves are
    dropped)."""
    out = {}
    for k, v in sd.items():
        if isinstance(v, dict):
            out.update(flatten_state_dict(v, f"{prefix}{k}."))
        elif torch.is_tensor(v):
            out[f"{prefix}{k}"] = v
    return out


#: First bytes of PyTorch's pickled files: a zip archive (``torch.save`` since 1.6) or a bare pickle protocol 2+
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def read_safetensors(path: str | os.PathLike, error: type[ValueError], hint: str | None = "copy it again"
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file. Raises ``error`` (a ValueError subclass) naming the file when
    it is missing, a PyTorch pickle (``.pt``/``.pth`` content, never unpickled here: it could run code),
    truncated or otherwise not safetensors, followed by ``hint`` (the fix; None: the caller adds its own)."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise error(f"{path} does not exist")
    tail = f"; {hint}" if hint else ""
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head.startswith(_PICKLE_MAGIC):
            raise error(f"{name} is a pickled PyTorch file, not safetensors; it is not loaded (unpickling can run "
                        f"code): use the .safetensors version of these weights{tail}") from None
        raise error(f"{name} is truncated or not a valid safetensors file ({e}){tail}") from None


def read_state_dict(path: str | os.PathLike, error: type[ValueError], missing_hint: str = ""
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(flat state dict, safetensors metadata) of a ``.safetensors`` file, or of a pickled ``.bin``/``.pt``/
    ``.pth`` loaded on the CPU with ``torch.load(weights_only=True)`` (nested dicts are flattened with
    :func:`flatten_state_dict`; metadata ``{}``). Raises ``error`` (a ValueError subclass) for a missing file
    (``missing_hint`` appended to the message after a colon), a truncated/corrupt file, or a pickle that is not
    plain tensors (named as such, without PyTorch's advice to load it with ``weights_only=False``)."""
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise error(f"{path} does not exist" + (f": {missing_hint}" if missing_hint else ""))
    if path.endswith(".safetensors"):
        return read_safetensors(path, error)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a global (code), or a garbled pickle
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            # PyTorch's own text suggests weights_only=False: never shown, that would run the file's code
            raise error(f"{name} is a pickle that holds more than tensors (Python objects whose loading could "
                        "run code), so it is refused: .pt/.pth/.bin weights are loaded as plain tensors only. Use "
                        "the .safetensors version of these weights, or re-save the file as a state dict of "
                        "tensors only") from None
        raise error(f"{name} could not be read as PyTorch weights (a damaged pickle): the file is truncated or "
                    "corrupt; copy or download it again") from None
    except Exception as e:  # EOFError, RuntimeError (zip), … from a truncated or corrupt file
        raise error(f"{name} could not be read as PyTorch weights ({type(e).__name__}): the file is truncated "
                    "or corrupt; copy or download it again") from None
    if not isinstance(obj, dict):
        raise error(f"{name} holds a {type(obj).__name__}, not a state dict")
    return flatten_state_dict(obj), {}


def check_state_dict(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], name: str,
                     error: type[ValueError], mismatch: str, shapes_note: str = "",
                     allow_unexpected: bool = True) -> None:
    """Raise ``error`` naming the first few keys when ``sd`` lacks keys of the module state dict ``own``, has
    other shapes for them, or (``allow_unexpected`` False) has extra keys. ``mismatch`` completes "the file is
    incomplete or …" / "the file …" in the messages; ``shapes_note`` is put after "wrong shapes"."""
    missing = [k for k in own if k not in sd]
    if missing:
        raise error(f"{name}: {len(missing)} weights missing (e.g. {', '.join(missing[:3])}) — the file is "
                    f"incomplete or {mismatch}")
    bad = [f"{k} {tuple(sd[k].shape)} ≠ {tuple(own[k].shape)}" for k in own
           if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        raise error(f"{name}: wrong shapes{shapes_note}: {'; '.join(bad[:3])}")
    unexpected = sorted(k for k in sd if k not in own)
    if unexpected and not allow_unexpected:
        raise error(f"{name}: {len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:3])}) — the file "
                    f"{mismatch}")


def load_fp32(net: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load the keys of ``net``'s own state dict from ``sd`` (keys beyond them ignored), cast to float32 —
    check them first with :func:`check_state_dict`."""
    net.load_state_dict({k: sd[k].float() for k in net.state_dict()})


def config_from_metadata(meta: dict[str, str], config_cls: type, name: str, error: type[ValueError],
                         what: str):
    """``config_cls(**json.loads(meta["config"]))`` — the architecture a file of ours records (see
    :func:`save_module`); ``error`` ``"<name>: unreadable <what> config in the metadata (…)"`` when the entry is
    missing, not JSON, or rejected by the config class (TypeError/ValueError)."""
    try:
        return config_cls(**json.loads(meta["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise error(f"{name}: unreadable {what} config in the metadata ({e})") from None


def save_module(net: nn.Module, path: str | os.PathLike, fmt: str, metadata: dict | None = None) -> None:
    """Write ``net``'s state dict as fp32 safetensors with metadata ``{"format": fmt, "config": <json of the
    dataclass net.config>}`` (+ ``metadata``, values as ``str``), atomically (:func:`write_safetensors`)."""
    meta = {"format": fmt, "config": json.dumps(asdict(net.config))}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    write_safetensors({k: v.detach().float() for k, v in net.state_dict().items()}, path, meta)


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                      metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (moved to CPU, made contiguous) as safetensors atomically (temp file + rename), with the
    permissions the umask gives (safetensors itself creates 0600 files, unreadable to a ComfyUI running as
    another user)."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    tmp = path + ".tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
