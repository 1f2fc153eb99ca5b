"""UI workflow JSON (what the frontend saves) → API prompt (what it sends): a port of ``graphToPrompt``."""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .comfy import require_boot
from .errors import UnknownNodeTypeError, WorkflowFormatError
from .widgets import (FRONTEND_ONLY_TYPES, MODE_ALWAYS, MODE_BYPASS, MODE_NEVER, WidgetSlot, input_spec,
                      sends_ui_widgets, type_name, widget_default, widget_layout)


@dataclass
class Link:
    id: int
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int
    type: Any


def load_workflow(workflow: str | os.PathLike | Mapping) -> dict:
    """Return the UI workflow as a dict (a deep copy when a dict is given; the JSON file read otherwise)."""
    if isinstance(workflow, Mapping):
        return copy.deepcopy(dict(workflow))
    p = Path(workflow)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"workflow file {p} does not exist") from None
    except json.JSONDecodeError as e:
        raise WorkflowFormatError(f"workflow file {p} is not valid JSON: {e}") from None


def parse_graph(ui: Mapping) -> tuple[dict, dict]:
    if not isinstance(ui, Mapping) or not isinstance(ui.get("nodes"), list):
        if isinstance(ui, Mapping) and ui and all(isinstance(v, Mapping) and "class_type" in v for v in ui.values()):
            raise WorkflowFormatError("this is an API-format prompt (id -> {class_type, inputs}), not a UI "
                                      "workflow; pass it to run_prompt() directly")
        raise WorkflowFormatError("not a ComfyUI UI workflow: expected a JSON object with a 'nodes' list")
    nodes_by_id: dict = {}
    for n in ui["nodes"]:
        if not isinstance(n, Mapping) or "id" not in n or "type" not in n:
            raise WorkflowFormatError(f"workflow node without 'id'/'type': {str(n)[:120]}")
        if n["id"] in nodes_by_id:
            raise WorkflowFormatError(f"duplicate node id {n['id']}")
        nodes_by_id[n["id"]] = n
    links: dict = {}
    for raw in ui.get("links", []) or []:
        if isinstance(raw, Mapping):
            lk = Link(raw.get("id"), raw.get("origin_id"), raw.get("origin_slot"), raw.get("target_id"),
                       raw.get("target_slot"), raw.get("type"))
        elif isinstance(raw, (list, tuple)) and len(raw) >= 5:
            lk = Link(*list(raw[:5]), raw[5] if len(raw) > 5 else None)
        else:
            raise WorkflowFormatError(f"malformed link entry {raw!r}: expected [id, origin_id, origin_slot, "
                                      f"target_id, target_slot, type]")
        if lk.id in links:
            raise WorkflowFormatError(f"duplicate link id {lk.id}")
        links[lk.id] = lk
    return nodes_by_id, links


def node_label(n: Mapping) -> str:
    t = n.get("title")
    return f"node {n.get('id')} ({n.get('type')}{', ' + repr(t) if t and t != n.get('type') else ''})"


def subgraph_ids(ui: Mapping) -> set:
    defs = (ui.get("definitions") or {}).get("subgraphs") or []
    return {d.get("id") for d in defs if isinstance(d, Mapping)}


def node_widget_layout(n: Mapping, class_def=None) -> list[WidgetSlot]:
    """:func:`widget_layout` of workflow node ``n``, following the dynamic-combo choices in its values."""
    return widget_layout(n["type"], class_def, n.get("widgets_values"))


def widget_values(n: Mapping, layout: list[WidgetSlot]) -> dict[str, Any]:
    """Input name -> widget value, as the frontend's ``graphToPrompt`` sends them: the value slots of ``layout``
    by position in ``widgets_values`` (or by name when a dict is saved); a widget with no saved entry (a
    file saved by an older frontend, before the node gained an input) keeps its default; display-only widgets
    are sent as ``""`` where the frontend does (:func:`sends_ui_widgets`)."""
    wv = n.get("widgets_values")
    out: dict[str, Any] = {}
    ui_sent = sends_ui_widgets()
    for i, s in enumerate(layout):
        if s.kind == "ui" and ui_sent:
            out[s.name] = ""
        if s.kind != "value":
            continue
        if isinstance(wv, Mapping):  # some custom-node frontends save a dict keyed by widget name
            if s.name in wv:
                out[s.name] = wv[s.name]
        elif isinstance(wv, list) and i < len(wv):
            out[s.name] = wv[i]
        else:
            out[s.name] = widget_default(s.input_type, s.options)
    return out


def _slot_default(s: WidgetSlot) -> Any:
    if s.kind == "value":
        return widget_default(s.input_type, s.options)
    if s.kind == "upload":
        return None if s.name == "audio" else "image"
    return "randomize" if s.kind == "control" else None


def set_widget_value(node: dict, name: str, value: Any) -> None:
    """Set widget ``name`` of a UI workflow node (in place), respecting the frontend's widget layout.

    Choosing another option of a dynamic combo re-lays the values out as the frontend does: the old option's
    widgets go, the new option's come in with their defaults; the other widgets keep their values.

    Raises:
        ValueError: the node has no widget called ``name``.
    """
    wv = node.get("widgets_values")
    layout = node_widget_layout(node)
    if not any(s.kind == "value" and s.name == name for s in layout):
        raise ValueError(f"{node_label(node)} has no widget {name!r}; its widgets are "
                         f"{[s.name for s in layout if s.kind == 'value']}")
    if isinstance(wv, dict):
        wv[name] = value
        return
    wv = list(wv or [])
    old = {(s.name, s.kind): v for s, v in zip(layout, wv)}
    old[(name, "value")] = value
    # the new layout, slot by slot: each value decided before the slots that depend on it are laid out
    new: list = []
    while True:
        layout = widget_layout(node["type"], None, new)
        if len(layout) == len(new):
            break
        s = layout[len(new)]
        new.append(old.get((s.name, s.kind), _slot_default(s)))
    node["widgets_values"] = new


# ----------------------------------------------------------------------------------------------------------
# UI workflow -> API prompt
# ----------------------------------------------------------------------------------------------------------
class _Resolver:
    """Follows a link to the real producing node through Reroute, PrimitiveNode, muted and bypassed nodes."""

    def __init__(self, nodes_by_id, links, mappings):
        self.nodes_by_id, self.links, self.mappings = nodes_by_id, links, mappings

    def _input_type(self, n, slot) -> Any:
        ins = n.get("inputs") or []
        if slot < len(ins):
            t = ins[slot].get("type")
            if t is not None:
                return t
            cd = self.mappings.get(n.get("type"))
            if cd is not None:
                spec = input_spec(cd, ins[slot].get("name"))
                if spec:
                    return type_name(spec[0])
        return None

    def resolve(self, link_id, want_type=None, _depth=0):
        """Returns ("link", node_id, slot) | ("value", v) | None (input left unconnected)."""
        if _depth > 256:
            raise WorkflowFormatError(f"link {link_id}: cycle through Reroute/bypassed nodes")
        lk = self.links.get(link_id)
        if lk is None:
            raise WorkflowFormatError(f"link id {link_id} is referenced by a node input but is not in 'links'")
        src = self.nodes_by_id.get(lk.origin_id)
        if src is None:
            raise WorkflowFormatError(f"link {link_id} comes from node {lk.origin_id}, which does not exist")
        st = src.get("type")
        if st == "Reroute":
            ins = src.get("inputs") or []
            if not ins or ins[0].get("link") is None:
                return None
            return self.resolve(ins[0]["link"], want_type, _depth + 1)
        if st == "PrimitiveNode":
            wv = src.get("widgets_values") or []
            if not wv:
                raise WorkflowFormatError(f"{node_label(src)} has no value")
            return ("value", wv[0])
        if st in FRONTEND_ONLY_TYPES:
            raise WorkflowFormatError(f"link {link_id} comes from {node_label(src)}, which has no outputs")
        mode = src.get("mode", MODE_ALWAYS)
        if mode == MODE_NEVER:
            return None
        if mode == MODE_BYPASS:
            # the frontend passes a bypassed node's input through: the input at the same index if its type
            # matches the downstream input's type, else the first input of that type.
            want = want_type if want_type is not None else lk.type
            ins = src.get("inputs") or []
            order = [lk.origin_slot] + [i for i in range(len(ins)) if i != lk.origin_slot]
            for i in order:
                if i < len(ins) and want is not None and self._input_type(src, i) == want:
                    if ins[i].get("link") is None:
                        return None
                    return self.resolve(ins[i]["link"], want, _depth + 1)
            return None
        return ("link", str(lk.origin_id), int(lk.origin_slot))


def workflow_to_prompt(ui_workflow: Mapping) -> dict:
    """Convert a UI workflow (the LiteGraph JSON the ComfyUI frontend saves) into an API prompt.

    Returns ``{"<node id>": {"class_type": str, "inputs": {name: value | [str(src_id), src_slot]},
    "_meta": {"title": str}}}`` as the frontend's ``graphToPrompt`` does: widget values are mapped to input
    names with :func:`widget_layout` (control-after-generate, upload-button and ``audioUI`` entries are
    skipped); links become ``[str(origin_id), origin_slot]``; Reroute nodes are followed, a PrimitiveNode's
    value is inlined, Note/MarkdownNote are dropped; muted nodes (mode 2) are dropped together with links
    from them; bypassed nodes (mode 4) are dropped and their outputs wired to the input of the same type
    (same index first), as the frontend does.

    Raises:
        WorkflowFormatError: malformed JSON structure (missing nodes, dangling link ids).
        UnknownNodeTypeError: a node type that is not registered (message names node id and type).
        NotImplementedError: subgraph or group nodes (unpack them in the editor first).
    """
    st = require_boot()
    mappings = st.nodes.NODE_CLASS_MAPPINGS
    nodes_by_id, links = parse_graph(ui_workflow)
    subgraphs = subgraph_ids(ui_workflow)
    resolver = _Resolver(nodes_by_id, links, mappings)
    prompt: dict = {}
    for nid, n in nodes_by_id.items():
        t = n["type"]
        if t in FRONTEND_ONLY_TYPES:
            continue
        if t in subgraphs:
            raise NotImplementedError(f"{node_label(n)} is a subgraph node; the harness runs flat workflows "
                                      f"only (convert the subgraph to nodes in the editor)")
        mode = n.get("mode", MODE_ALWAYS)
        if mode in (MODE_NEVER, MODE_BYPASS):
            continue
        class_def = mappings.get(t)
        if class_def is None:
            if isinstance(t, str) and (t.startswith("workflow>") or t.startswith("workflow/")):
                raise NotImplementedError(f"{node_label(n)} is a group node; convert it to nodes first")
            raise UnknownNodeTypeError(
                f"node {nid} has type {t!r}, which is not registered in this ComfyUI (a missing custom node "
                f"pack, a comfy_extras module that failed to import, or a typo)")
        inputs = _prompt_inputs(n, class_def, links, resolver)
        title = n.get("title") or getattr(st.nodes, "NODE_DISPLAY_NAME_MAPPINGS", {}).get(t) or t
        prompt[str(nid)] = {"class_type": t, "inputs": inputs, "_meta": {"title": title}}
    _drop_links_to_dropped_nodes(prompt)
    return prompt


def _prompt_inputs(n: Mapping, class_def, links: Mapping, resolver: _Resolver) -> dict[str, Any]:
    """The API prompt inputs of node ``n``: its widget values, then its links resolved by ``resolver``
    (a PrimitiveNode's value inlined; an input whose link leads nowhere left out)."""
    inputs: dict[str, Any] = {}
    for name, v in widget_values(n, node_widget_layout(n, class_def)).items():
        # a list value would be read as a link; the frontend wraps it the same way
        inputs[name] = {"__value__": v} if isinstance(v, list) else v
    for inp in n.get("inputs") or []:
        link_id = inp.get("link")
        if link_id is None:
            continue
        lk = links.get(link_id)
        if lk is None:
            raise WorkflowFormatError(f"{node_label(n)} input {inp.get('name')!r} references link "
                                      f"{link_id}, which is not in 'links'")
        want = inp.get("type") or lk.type
        r = resolver.resolve(link_id, want)
        if r is None:
            continue
        if r[0] == "value":
            inputs[inp["name"]] = {"__value__": r[1]} if isinstance(r[1], list) else r[1]
        else:
            inputs[inp["name"]] = [r[1], r[2]]
    return inputs


def _drop_links_to_dropped_nodes(prompt: dict) -> None:
    """Remove (in place) the inputs linked to nodes that are not in ``prompt``: links from nodes that were
    dropped (muted/bypassed chains)."""
    for node in prompt.values():
        for k, v in list(node["inputs"].items()):
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] not in prompt:
                del node["inputs"][k]
