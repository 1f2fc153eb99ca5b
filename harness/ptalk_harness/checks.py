"""Static checks of a UI workflow against the registered node schemas (what the frontend would flag)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .comfy import require_boot
from .errors import WorkflowFormatError
from .widgets import (CONTROL_VALUES, FRONTEND_ONLY_TYPES, MODE_BYPASS, MODE_NEVER, WidgetSlot, combo_options,
                      input_spec, input_types, is_combo, is_dynamic_combo, is_upload_combo, is_widget_input,
                      spec_parts, type_name, types_compatible)
from .workflow import Link, node_label, node_widget_layout, parse_graph, subgraph_ids, widget_values


def _check_value(label: str, slot: WidgetSlot, v: Any) -> str | None:
    t, o = slot.input_type, slot.options
    if slot.kind == "control":
        allowed = CONTROL_VALUES if is_combo(t) else CONTROL_VALUES[:4]
        if v not in allowed:
            return f"{label}: control_after_generate value {v!r} for {slot.name!r} is not one of {list(allowed)}"
        return None
    if slot.kind != "value":
        return None
    if isinstance(v, dict) and "__value__" in v:
        v = v["__value__"]
    name = slot.name
    if is_combo(t) or is_dynamic_combo(t):
        if is_upload_combo(t, o) or o.get("remote"):
            if not isinstance(v, str) or not v:
                return f"{label}: file widget {name!r} must be a file name, got {v!r}"
            return None
        options = combo_options(t, o)
        if options is None:
            return None
        if o.get("multiselect") and isinstance(v, list):
            bad = [x for x in v if x not in options]
            return f"{label}: {name!r} values {bad} not in {options}" if bad else None
        if v not in options:
            shown = options if len(options) <= 20 else f"{options[:20]}... ({len(options)} options)"
            return f"{label}: {name!r} value {v!r} is not one of {shown}"
        return None
    if t == "INT":
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            return f"{label}: INT widget {name!r} has non-integer value {v!r}"
    elif t == "FLOAT":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{label}: FLOAT widget {name!r} has non-numeric value {v!r}"
    elif t == "BOOLEAN":
        if not isinstance(v, bool):
            return f"{label}: BOOLEAN widget {name!r} has non-boolean value {v!r}"
        return None
    elif t == "STRING":
        if not isinstance(v, str):
            return f"{label}: STRING widget {name!r} has non-string value {v!r}"
        return None
    if t in ("INT", "FLOAT"):
        if o.get("min") is not None and v < o["min"]:
            return f"{label}: {name!r} = {v} is below its minimum {o['min']}"
        if o.get("max") is not None and v > o["max"]:
            return f"{label}: {name!r} = {v} is above its maximum {o['max']}"
    return None


def check_workflow(ui_workflow: Mapping) -> list[str]:
    """Statically check a UI workflow against the node schemas registered in the booted ComfyUI.

    Checks: every node type is registered; ``widgets_values`` has the length the frontend saves and each
    value fits its input (INT/FLOAT type and min/max, BOOLEAN, STRING, COMBO value in the options, except
    upload file pickers whose options depend on the input folder, and control-after-generate values); every
    link exists on both ends, its ids agree with the nodes' ``inputs[].link``/``outputs[].links``, and its
    source output type fits the target input type (ComfyUI's rule: comma-separated type sets must overlap,
    ``*`` matches anything; Reroutes are followed); every required input is linked or has a widget value;
    there is at least one output node. Muted nodes are checked too (they are part of the file).

    Returns:
        list of human-readable problems; empty when the workflow is OK.
    """
    st = require_boot()
    try:
        nodes_by_id, links = parse_graph(ui_workflow)
    except WorkflowFormatError as e:
        return [str(e)]
    g = _Graph(nodes_by_id, links, st.nodes.NODE_CLASS_MAPPINGS, subgraph_ids(ui_workflow))
    problems = _check_links(g)
    for n in nodes_by_id.values():
        problems += _check_link_refs(n, links)
        problems += _check_node(g, n)
    if not any(_is_active_output(g, n) for n in nodes_by_id.values()):
        problems.append("the workflow has no active output node (e.g. SaveVideo), so ComfyUI would run nothing")
    return problems


@dataclass(frozen=True)
class _Graph:
    """A parsed UI workflow and the node classes it is checked against."""

    nodes_by_id: dict
    links: dict[Any, Link]
    mappings: Mapping
    subgraphs: set

    def class_def(self, n: Mapping):
        """The registered class of node ``n``; None for frontend-only, subgraph and unregistered nodes."""
        t = n["type"]
        if t in FRONTEND_ONLY_TYPES or t in self.subgraphs:
            return None
        return self.mappings.get(t)

    def source_type(self, lk: Link, depth=0) -> tuple[Any, str | None]:
        """The type of what link ``lk`` carries (Reroutes followed; ``*`` from a PrimitiveNode or a dangling
        Reroute; None when unknown) and a problem when its origin has no such output slot."""
        src = self.nodes_by_id.get(lk.origin_id)
        if src is None:
            return None, None
        if src["type"] == "Reroute" and depth < 256:
            ins = src.get("inputs") or []
            up = self.links.get(ins[0].get("link")) if ins else None
            return self.source_type(up, depth + 1) if up is not None else ("*", None)
        if src["type"] == "PrimitiveNode":
            return "*", None
        cd = self.mappings.get(src["type"])
        if cd is None:
            return None, None
        rt = list(cd.RETURN_TYPES)
        if not isinstance(lk.origin_slot, int) or not 0 <= lk.origin_slot < len(rt):
            return None, (f"link {lk.id}: {node_label(src)} has no output slot {lk.origin_slot} "
                          f"(it has {len(rt)})")
        return rt[lk.origin_slot], None


def _is_active_output(g: _Graph, n: Mapping) -> bool:
    class_def = g.class_def(n)
    return (class_def is not None and getattr(class_def, "OUTPUT_NODE", False) is True
            and n.get("mode", 0) not in (MODE_NEVER, MODE_BYPASS))


def _check_links(g: _Graph) -> list[str]:
    """Every link's ends exist and agree with the nodes' ``inputs[].link`` / ``outputs[].links``."""
    problems: list[str] = []
    for lk in g.links.values():
        src, dst = g.nodes_by_id.get(lk.origin_id), g.nodes_by_id.get(lk.target_id)
        if src is None:
            problems.append(f"link {lk.id}: origin node {lk.origin_id} does not exist")
        if dst is None:
            problems.append(f"link {lk.id}: target node {lk.target_id} does not exist")
        if src is None or dst is None:
            continue
        ins = dst.get("inputs") or []
        if not isinstance(lk.target_slot, int) or not 0 <= lk.target_slot < len(ins):
            problems.append(f"link {lk.id}: {node_label(dst)} has no input slot {lk.target_slot}")
        elif ins[lk.target_slot].get("link") != lk.id:
            problems.append(f"link {lk.id}: {node_label(dst)} input {ins[lk.target_slot].get('name')!r} "
                            f"refers to link {ins[lk.target_slot].get('link')}, not {lk.id}")
        outs = src.get("outputs")
        if outs is not None:
            if not isinstance(lk.origin_slot, int) or not 0 <= lk.origin_slot < len(outs):
                problems.append(f"link {lk.id}: {node_label(src)} has no output slot {lk.origin_slot}")
            elif lk.id not in (outs[lk.origin_slot].get("links") or []):
                problems.append(f"link {lk.id}: not listed in {node_label(src)} output "
                                f"{outs[lk.origin_slot].get('name')!r} links")
    return problems


def _check_link_refs(n: Mapping, links: Mapping) -> list[str]:
    """Every link id on node ``n``'s inputs and outputs is in the workflow's ``links``."""
    label = node_label(n)
    problems: list[str] = []
    for inp in n.get("inputs") or []:
        if inp.get("link") is not None and inp["link"] not in links:
            problems.append(f"{label}: input {inp.get('name')!r} refers to link {inp['link']}, which is "
                            f"not in 'links'")
    for out in n.get("outputs") or []:
        for lid in out.get("links") or []:
            if lid not in links:
                problems.append(f"{label}: output {out.get('name')!r} refers to link {lid}, which is not in "
                                f"'links'")
    return problems


def _check_node(g: _Graph, n: Mapping) -> list[str]:
    """Node ``n`` against its schema: registered type, widget values, required inputs, link types."""
    t = n["type"]
    label = node_label(n)
    if t in FRONTEND_ONLY_TYPES:
        return []
    if t in g.subgraphs:
        return [f"{label}: subgraph nodes are not supported by the headless harness"]
    class_def = g.mappings.get(t)
    if class_def is None:
        return [f"node {n['id']} has type {t!r}, which is not registered in this ComfyUI"]
    try:
        layout = node_widget_layout(n, class_def)
    except Exception as e:  # a broken INPUT_TYPES is a problem of the node pack
        return [f"{label}: INPUT_TYPES() raised {type(e).__name__}: {e}"]
    linked = {inp.get("name") for inp in n.get("inputs") or [] if inp.get("link") is not None}
    return (_check_widget_count(label, n, layout) + _check_widget_values(label, n, layout, linked)
            + _check_required_inputs(label, n, class_def, layout, linked) + _check_link_types(g, n, class_def))


def _check_widget_count(label: str, n: Mapping, layout: list[WidgetSlot]) -> list[str]:
    """A ``widgets_values`` list has as many entries as the frontend saves for this node."""
    wv = n.get("widgets_values")
    if not isinstance(wv, list):
        return []
    # trailing unserialised widgets (audioUI, ...) leave no entry, and a file saved before the node gained
    # an input with a default (Create Video's bit_depth, Save Video's hidden codec in ComfyUI 0.33; a
    # dynamic combo defaults to its first option) lacks it: the frontend fills those in, so fewer entries
    # are fine as long as every other value/control entry is there
    need = max((i + 1 for i, s in enumerate(layout) if s.kind in ("value", "control", "filter")
                and not (s.kind == "value" and ("default" in s.options or is_dynamic_combo(s.input_type)))),
               default=0)
    if need <= len(wv) <= len(layout):
        return []
    return [f"{label}: widgets_values has {len(wv)} entries, the frontend saves "
            f"{need if need == len(layout) else f'{need}..{len(layout)}'} for this node "
            f"({[s.name + ('' if s.kind == 'value' else ':' + s.kind) for s in layout]})"]


def _check_widget_values(label: str, n: Mapping, layout: list[WidgetSlot], linked: set) -> list[str]:
    """Each saved widget value of an unlinked input fits that input (:func:`_check_value`)."""
    wv = n.get("widgets_values")
    if isinstance(wv, list):  # by position, as the frontend saves them
        entries = list(zip(layout, wv))
    elif isinstance(wv, Mapping):  # keyed by widget name: values only
        entries = [(s, wv[s.name]) for s in layout if s.kind == "value" and s.name in wv]
    else:
        entries = []
    problems: list[str] = []
    for s, v in entries:
        if s.name not in linked:
            msg = _check_value(label, s, v)
            if msg:
                problems.append(msg)
    return problems


def _check_required_inputs(label: str, n: Mapping, class_def, layout: list[WidgetSlot], linked: set) -> list[str]:
    """Every required input is linked or has a widget value."""
    widget_vals = widget_values(n, layout)
    problems: list[str] = []
    for name, spec in (input_types(class_def).get("required") or {}).items():
        if name in linked:
            continue
        t_in, opts = spec_parts(spec)
        if is_widget_input(t_in, opts) and widget_vals.get(name) is not None:
            continue
        problems.append(f"{label}: required input {name!r} ({type_name(t_in)}) is not connected"
                        + ("" if not is_widget_input(t_in, opts) else " and has no widget value"))
    return problems


def _check_link_types(g: _Graph, n: Mapping, class_def) -> list[str]:
    """Each linked input is an input of the node's class and the type its link carries fits it."""
    label = node_label(n)
    problems: list[str] = []
    for inp in n.get("inputs") or []:
        lid = inp.get("link")
        if lid is None or lid not in g.links:
            continue
        spec = input_spec(class_def, inp.get("name"))
        if spec is None:
            problems.append(f"{label}: linked input {inp.get('name')!r} is not an input of {n['type']}")
            continue
        src_t, problem = g.source_type(g.links[lid])
        if problem:
            problems.append(problem)
        if src_t is None:
            continue
        if not types_compatible(src_t, spec[0]):
            src = g.nodes_by_id.get(g.links[lid].origin_id)
            problems.append(f"link {lid}: {node_label(src)} output {g.links[lid].origin_slot} is "
                            f"{type_name(src_t)}, but {label} input {inp.get('name')!r} takes "
                            f"{type_name(spec[0])}")
    return problems
