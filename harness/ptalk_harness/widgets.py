"""A port of the frontend's widget layout: which widgets a node shows, in which order, with which values.

``widgets_values`` in a saved workflow is positional; this module reproduces how the frontend (1.32 and
1.49) lays the widgets out from a node's schema (``INPUT_TYPES``/V3 schema), including the control widget
after seeds, upload buttons and dynamic combos.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .comfy import require_boot
from .errors import UnknownNodeTypeError

#: Node types that exist only in the frontend (never sent to the backend).
FRONTEND_ONLY_TYPES = {"Reroute", "Note", "MarkdownNote", "PrimitiveNode"}
#: LiteGraph node modes.
MODE_ALWAYS, MODE_ON_EVENT, MODE_NEVER, MODE_ON_TRIGGER, MODE_BYPASS = 0, 1, 2, 3, 4
#: Values of the frontend's "control after generate" widget.
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize", "increment-wrap")
#: Nodes to which the frontend extension Comfy.AudioWidget adds an (unserialised) ``audioUI`` widget.
AUDIO_UI_NODES = {"LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3", "SaveAudioOpus"}
#: Frontend extensions that add a display-only widget to a node: node type -> widget name (Comfy.AudioWidget's
#: ``audioUI`` on the audio nodes, Comfy.PreviewAny's ``preview``).
UI_WIDGETS = {**{t: "audioUI" for t in AUDIO_UI_NODES}, "PreviewAny": "preview"}
#: V3 dynamic combo (``io.DynamicCombo``, e.g. core Save Video's format/codec in ComfyUI 0.33): a combo whose
#: chosen option adds the widgets of that option's inputs right after it, named ``<combo>.<input>``.
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
_PRIMITIVE_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", DYNAMIC_COMBO}
_IMAGE_UPLOAD_KEYS = ("image_upload", "video_upload", "animated_image_upload")
_UPLOAD_KEYS = _IMAGE_UPLOAD_KEYS + ("audio_upload", "file_upload")


def frontend_version() -> tuple[int, ...]:
    """Version of the ComfyUI frontend installed beside the booted ComfyUI (``comfyui-frontend-package``, the
    one its ``requirements.txt`` pins and its server serves), e.g. ``(1, 49, 6)``; ``(0,)`` when not installed.

    Where frontends differ in what ``graphToPrompt`` sends, :func:`workflow_to_prompt` follows this version.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("comfyui-frontend-package")
    except PackageNotFoundError:
        return (0,)
    return tuple(int(x) for x in v.split(".")[:3] if x.isdigit())


def sends_ui_widgets() -> bool:
    """Frontend 1.32 (ComfyUI 0.3.75's) sends display-only widgets (``audioUI``, ``preview``) as ``""`` in the API
    prompt; 1.49 (ComfyUI 0.33's) does not. Both seen in the real frontends; versions between are not tested,
    the cut is put at 1.49."""
    return frontend_version() < (1, 49)


@dataclass(frozen=True)
class WidgetSlot:
    """One entry of a node's ``widgets_values`` as the ComfyUI frontend (1.32) lays them out.

    ``kind``: "value" (the value of input ``name``), "control" (control-after-generate of ``name``),
    "filter" (combo control filter list), "upload" (upload button of combo ``name``), "ui" (a display-only
    widget such as ``audioUI``). Only "value" slots are sent to the backend.
    """

    name: str
    kind: str
    input_type: Any = None
    options: Mapping = field(default_factory=dict)
    category: str = "required"


def spec_parts(spec) -> tuple[Any, dict]:
    if not isinstance(spec, (tuple, list)) or not spec:
        return spec, {}
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0], opts


def is_combo(t) -> bool:
    return isinstance(t, (list, tuple)) or (isinstance(t, str) and t == "COMBO")


def is_dynamic_combo(t) -> bool:
    return isinstance(t, str) and t == DYNAMIC_COMBO


def combo_options(t, opts) -> list | None:
    if isinstance(t, (list, tuple)):
        return list(t)
    if isinstance(t, str) and t == "COMBO":
        o = opts.get("options")
        return list(o) if o is not None else None
    if is_dynamic_combo(t):
        return [o.get("key") for o in opts.get("options") or []]
    return None


def widget_default(t, opts) -> Any:
    """The value a new widget of input type ``t`` starts with in the frontend (its ``default``, else the first
    combo option, 0 / min for numbers, "" for strings, False for booleans)."""
    if "default" in opts:
        return opts["default"]
    options = combo_options(t, opts)
    if options is not None:
        return options[0] if options else None
    if t in ("INT", "FLOAT"):
        return max(opts.get("min", 0), 0)
    return {"STRING": "", "BOOLEAN": False}.get(t)


def is_widget_input(t, opts) -> bool:
    if opts.get("forceInput") or opts.get("rawLink"):
        return False
    return is_combo(t) or (isinstance(t, str) and t in _PRIMITIVE_WIDGET_TYPES)


def is_upload_combo(t, opts) -> bool:
    return is_combo(t) and any(opts.get(k) for k in _UPLOAD_KEYS)


def input_types(class_def) -> dict:
    it = class_def.INPUT_TYPES()
    return it if isinstance(it, dict) else {}


def widget_layout(class_type: str, class_def=None, values: list | None = None) -> list[WidgetSlot]:
    """The ``widgets_values`` layout the ComfyUI frontend saves for a node of ``class_type``.

    Follows frontends 1.32 (ComfyUI 0.3.75's) and 1.49 (ComfyUI 0.33's): one widget per widget input (INT,
    FLOAT, STRING, BOOLEAN, COMBO/list, dynamic combo; not ``forceInput``), in INPUT_TYPES order, required then
    optional; an INT with ``control_after_generate`` (default: named ``seed``/``noise_seed``) is followed by its
    control widget; a COMBO with ``control_after_generate`` by a control and a filter-list widget; a dynamic
    combo by the widgets of its chosen option's inputs, named ``<combo>.<input>`` (recursively), the choice being
    its entry in ``values`` (a node's saved ``widgets_values``) or else its default; an image/video upload combo
    adds an upload button (saved value ``"image"``), an audio upload combo an upload button (saved
    ``null``/``""``), both appended after the required inputs, as is the display-only widget of
    :data:`UI_WIDGETS` (``audioUI``: saved ``null``; ``preview``: not saved).

    Raises:
        UnknownNodeTypeError: ``class_type`` is not registered.
    """
    if class_def is None:
        class_def = require_boot().nodes.NODE_CLASS_MAPPINGS.get(class_type)
        if class_def is None:
            raise UnknownNodeTypeError(f"node type {class_type!r} is not registered in ComfyUI")
    it = input_types(class_def)
    values = values if isinstance(values, list) else []
    slots: list[WidgetSlot] = []
    required = it.get("required", {}) or {}
    for name, spec in required.items():
        _add_widgets(slots, name, spec, "required", values)
    slots += _extension_widgets(class_type, required)
    for name, spec in (it.get("optional", {}) or {}).items():
        _add_widgets(slots, name, spec, "optional", values)
    return slots


def _add_widgets(slots: list[WidgetSlot], name: str, spec, category: str, values: list) -> None:
    """Append to ``slots`` the widgets of input ``name``, if it is a widget input: its value widget and what the
    frontend puts after it (an INT's control widget, a COMBO's control and filter widgets, a dynamic combo's
    widgets of the option chosen in ``values``, recursively)."""
    t, opts = spec_parts(spec)
    if not is_widget_input(t, opts):
        return
    at = len(slots)
    slots.append(WidgetSlot(name, "value", t, opts, category))
    if isinstance(t, str) and t == "INT":
        ctrl = opts.get("control_after_generate")
        if ctrl is None:
            ctrl = name in ("seed", "noise_seed")
        if ctrl:
            slots.append(WidgetSlot(name, "control", t, opts, category))
    elif is_combo(t) and opts.get("control_after_generate"):
        slots.append(WidgetSlot(name, "control", t, opts, category))
        slots.append(WidgetSlot(name, "filter", t, opts, category))
    elif is_dynamic_combo(t):
        key = values[at] if at < len(values) else widget_default(t, opts)
        chosen = next((o for o in opts.get("options") or [] if o.get("key") == key), None)
        if chosen is not None:
            inputs = chosen.get("inputs") or {}
            for sub_category in ("required", "optional"):
                for sub_name, sub_spec in (inputs.get(sub_category) or {}).items():
                    _add_widgets(slots, f"{name}.{sub_name}", sub_spec, sub_category, values)


def _extension_widgets(class_type: str, required: Mapping) -> list[WidgetSlot]:
    """The widgets that frontend extensions append after the required inputs' (Comfy.UploadImage,
    Comfy.UploadAudio, Comfy.AudioWidget, Comfy.PreviewAny)."""
    slots: list[WidgetSlot] = []
    for name, spec in required.items():
        t, opts = spec_parts(spec)
        if is_combo(t) and any(opts.get(k) for k in _IMAGE_UPLOAD_KEYS):
            slots.append(WidgetSlot(name, "upload", t, opts, "required"))
            break
    aud = required.get("audio")
    if aud is not None and spec_parts(aud)[1].get("audio_upload"):
        slots.append(WidgetSlot("audio", "upload", spec_parts(aud)[0], spec_parts(aud)[1], "required"))
    if class_type in UI_WIDGETS:
        slots.append(WidgetSlot(UI_WIDGETS[class_type], "ui", "UI", {}, "required"))
    return slots


def input_spec(class_def, name) -> tuple[Any, dict, str] | None:
    it = input_types(class_def)
    for cat in ("required", "optional"):
        d = it.get(cat) or {}
        if name in d:
            t, opts = spec_parts(d[name])
            return t, opts, cat
    return None


def types_compatible(src, dst) -> bool:
    """ComfyUI's link type rule (``comfy_execution.validation.validate_node_input``) plus the frontend's
    ``*`` wildcard on either side."""
    if isinstance(src, str) and src == "*" or isinstance(dst, str) and dst == "*":
        return True
    if is_combo(dst):
        # a COMBO input accepts a COMBO output (V3 Combo.Output has the options list as its type)
        return is_combo(src) or src == "COMBO"
    from comfy_execution.validation import validate_node_input
    return bool(validate_node_input(src, dst))


def type_name(t) -> str:
    if isinstance(t, (list, tuple)):
        return "COMBO"
    return str(t)
