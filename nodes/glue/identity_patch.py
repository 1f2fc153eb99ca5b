"""IdentityNet on a ComfyUI MODEL (IPAdapter_plus style): decoupled cross-attention installed as attn2 replace
patches on a clone, an OUTER_SAMPLE wrapper handing each CONDITIONING's face tokens to the patches, and the
helpers that attach face tokens to a CONDITIONING or to a direct UNet call's ``transformer_options``.
"""
from __future__ import annotations

import torch

from .errors import node_error
from .patcher import module_patcher

#: Key of the face tokens in a CONDITIONING entry's dict (float ``[1, N, T]``, set by Text Encode) and of the
#: per-step identity state in ``transformer_options`` (set by the sampling wrapper below).
IDENTITY_KEY = "ptalk_identity"


def cross_attention_layers(model) -> list[tuple[tuple, int, int]]:
    """The UNet cross-attention layers of a MODEL in IP-Adapter order (input blocks, output blocks, middle):
    ``[(("input", block_id, transformer_index), width W, context width T), …]`` — the keys ComfyUI's attn2
    replace patches use."""
    dm = model.get_model_object("diffusion_model")
    out = []

    def scan(name, block_id, block):
        for m in block:
            for t, tb in enumerate(getattr(m, "transformer_blocks", ())):
                attn2 = getattr(tb, "attn2", None)
                if attn2 is not None:
                    out.append(((name, block_id, t), attn2.to_k.out_features, attn2.to_k.in_features))

    for i, blk in enumerate(getattr(dm, "input_blocks", ())):
        scan("input", i, blk)
    for i, blk in enumerate(getattr(dm, "output_blocks", ())):
        scan("output", i, blk)
    if getattr(dm, "middle_block", None) is not None:
        scan("middle", 0, dm.middle_block)
    return out


class _IdentityRuntime:
    """What the attn2 patches of one IdentityNet Apply share: the net, strength, the active range of sampling
    progress and the fallback face tokens for positive conditionings that carry none.

    Per sampling run, the OUTER_SAMPLE wrapper puts ``{"by_uuid": {uuid: tokens}, "positive": {uuids},
    "model_sampling": …}`` into ``transformer_options[IDENTITY_KEY]``; direct UNet calls (the trainer) put
    ``{"rows": tokens [B, N, T]}`` there instead. ``ModelPatcher.clone`` deep-copies ``model_options``; the
    runtime is shared by clones, never copied (the net stays the one ``comfy.model_management`` manages).
    """

    def __init__(self, net, strength: float, start_percent: float, end_percent: float, default_tokens):
        self.net, self.strength = net, float(strength)
        self.percent_range = (float(start_percent), float(end_percent))
        self.default_tokens = default_tokens
        self._memo = None  # (uuids list, sigmas tensor, batch, model_sampling, result) of the last lookup
        self._sigma_range = (None, None)  # (model_sampling, (sigma_start, sigma_end))

    def __deepcopy__(self, memo):
        return self

    def _active(self, sigmas, model_sampling) -> bool:
        if sigmas is None or model_sampling is None or not torch.is_tensor(sigmas) or not sigmas.numel():
            return True
        if self._sigma_range[0] is not model_sampling:  # thresholds of the model sampling used now
            self._sigma_range = (model_sampling, tuple(float(model_sampling.percent_to_sigma(p))
                                                       for p in self.percent_range))
        hi, lo = self._sigma_range[1]
        return lo <= float(sigmas.detach().flatten()[0]) <= hi

    def _check(self, tok: torch.Tensor, per: int) -> torch.Tensor:
        tok = tok.reshape(-1, tok.shape[-2], tok.shape[-1])
        if tok.shape[-1] != self.net.config.token_dim or tok.shape[0] not in (1, per):
            raise ValueError(f"[PortraitTalk · IdentityNet] face tokens of shape {tuple(tok.shape)} do not fit "
                             f"{self.net.source} (width {self.net.config.token_dim}) on a batch of {per}: make the "
                             "conditioning with Text Encode and the same IdentityNet")
        return tok.expand(per, -1, -1)

    def rows_and_tokens(self, batch: int, opts: dict):
        """(row index ``[R]`` long or None for all rows, face tokens ``[R, N, T]``) for this forward pass of a
        ``batch``-row UNet call, or None when no row has an identity, strength is 0 or the step is outside
        [start, end]. Positive chunks without tokens get the fallback; other chunks get none."""
        if self.strength == 0.0:
            return None
        state = opts.get(IDENTITY_KEY) or {}
        if "rows" in state:  # direct UNet calls (training): one token set per batch row, always active
            return None, state["rows"]
        uuids, cond_or_uncond, sigmas = opts.get("uuids"), opts.get("cond_or_uncond"), opts.get("sigmas")
        ms = state.get("model_sampling")
        m = self._memo  # the 16 layers of one UNet call share uuids/sigmas objects: compute once per call
        if m is not None and m[0] is uuids and m[1] is sigmas and m[2] == batch and m[3] is ms:
            return m[4]
        result = None
        if cond_or_uncond and self._active(sigmas, ms):
            by_uuid, positive = state.get("by_uuid", {}), state.get("positive")
            per = batch // len(cond_or_uncond)
            rows, toks = [], []
            for j, kind in enumerate(cond_or_uncond):
                uid = uuids[j] if uuids else None
                tok = by_uuid.get(uid)
                is_positive = (uid in positive) if positive is not None else kind == 0
                if tok is None and is_positive:  # positive without its own identity → Apply's face embed
                    tok = self.default_tokens
                if tok is None:  # negative / no identity: zero face tokens contribute exactly nothing
                    continue
                rows.extend(range(j * per, (j + 1) * per))
                toks.append(self._check(tok, per))
            if rows:
                result = (torch.tensor(rows, dtype=torch.long), torch.cat(toks))
        self._memo = (uuids, sigmas, batch, ms, result)
        return result


class _IdentityAttn2Patch:
    """attn2 replace patch of one cross-attention layer. ComfyUI hands it the layer's projected ``q`` ``[B, Lq,
    H·d]``, ``k``, ``v`` ``[B, Lt, H·d]`` (UNet dtype and device); it returns the decoupled cross-attention
    (paper §III-A) ``Attn(q, k, v) + strength · Attn(q, K_face, V_face)`` — face K/V computed in the net's dtype,
    cast to q's. The text term is ComfyUI's own attention (bit-identical at strength 0) or, when the MODEL already
    had an attn2 replace patch at this layer (applied before IdentityNet), that patch's output."""

    def __init__(self, runtime: _IdentityRuntime, layer: int, inner=None):
        self.runtime, self.layer, self.inner = runtime, layer, inner

    def __deepcopy__(self, memo):
        import copy

        return _IdentityAttn2Patch(self.runtime, self.layer, copy.deepcopy(self.inner, memo))

    def add(self, *args, **kwargs):
        """IPAdapter_plus adds to the patch already at a key; IdentityNet cannot host its callbacks."""
        raise RuntimeError("[PortraitTalk · IdentityNet Apply] an IPAdapter (or another attn2 patch) was applied "
                           "after IdentityNet Apply on this MODEL: apply it before IdentityNet Apply instead")

    def __call__(self, q, k, v, extra_options):
        import comfy.ldm.modules.attention as attention_module

        from ...ptalk_models.identitynet import add_face_attention

        def attention(q_, k_, v_, heads):
            return attention_module.optimized_attention(q_, k_, v_, heads,
                                                        attn_precision=extra_options.get("attn_precision"),
                                                        transformer_options=extra_options)

        heads = extra_options["n_heads"]
        out = self.inner(q, k, v, extra_options) if self.inner is not None else attention(q, k, v, heads)
        found = self.runtime.rows_and_tokens(q.shape[0], extra_options)
        if found is None:
            return out
        rows, tokens = found
        kv = self.runtime.net.layer(self.layer)
        w_k, w_v = kv.to_k_ip.weight, kv.to_v_ip.weight
        t = tokens.to(device=w_k.device, dtype=w_k.dtype)
        k_face = torch.nn.functional.linear(t, w_k).to(q.device)
        v_face = torch.nn.functional.linear(t, w_v).to(q.device)
        return add_face_attention(out, q, k_face, v_face, heads, self.runtime.strength, attention,
                                  None if rows is None else rows.to(q.device, non_blocking=True))


def _identity_outer_wrapper(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: before sampling, reads the guider's conditionings — which uuids are positive, and
    the face tokens each carries (``IDENTITY_KEY``, from Text Encode) — into ``transformer_options`` of this
    run (the guider's model_options are a per-run copy), for the attn2 patches."""
    guider = executor.class_obj
    by_uuid, positive = {}, set()
    for kind, group in (getattr(guider, "conds", None) or {}).items():
        for c in group or ():
            uid = c.get("uuid")
            if kind == "positive":
                positive.add(uid)
            if c.get(IDENTITY_KEY) is not None:
                by_uuid[uid] = c[IDENTITY_KEY]
    transformer_options = guider.model_options.setdefault("transformer_options", {})
    transformer_options[IDENTITY_KEY] = {"by_uuid": by_uuid, "positive": positive,
                                         "model_sampling": guider.model_patcher.get_model_object("model_sampling")}
    return executor(*args, **kwargs)


def apply_identitynet(model, net, strength: float = 1.0, start_percent: float = 0.0, end_percent: float = 1.0,
                      default_tokens: torch.Tensor | None = None, node: str = "IdentityNet Apply"):
    """A clone of the ComfyUI MODEL ``model`` with IdentityNet installed; ``model`` itself is untouched.

    Every cross-attention layer gets an attn2 replace patch (decoupled cross-attention, §III-A; an attn2 patch
    already there, e.g. IPAdapter applied before, is kept and computes the text term); an OUTER_SAMPLE wrapper
    hands each CONDITIONING's face tokens (``IDENTITY_KEY``, from Text Encode) to the patches by uuid, so every
    conditioning keeps its own identity: one without tokens gets none (zero face tokens — unlike IP-Adapter's
    zero-*embedding* negative), except that positive ones fall back to ``default_tokens`` (``[1, N, T]``)
    when given. ``strength`` scales the face term; it acts for sampling progress in [``start_percent``,
    ``end_percent``] (converted to sigmas with the model sampling in use at sample time). The net's weights
    are an additional model of the clone (loaded and offloaded by ``comfy.model_management``).

    Raises :class:`NodeInputError` when the net does not fit the model (layer count/widths, context width) or
    the percent range is empty.
    """
    import comfy.patcher_extension

    from ...ptalk_models.identitynet import IdentityNetFormatError

    if end_percent < start_percent:
        raise node_error(node, "end_percent", f"end_percent {end_percent} is before start_percent {start_percent}: "
                                              "the identity would never act")
    layers = cross_attention_layers(model)
    if not layers:
        raise node_error(node, "model", "this MODEL has no UNet cross-attention layers; IdentityNet needs an "
                                        "SD1.5 checkpoint")
    try:
        net.check_layers([w for _, w, _ in layers], layers[0][2])
    except IdentityNetFormatError as e:
        raise node_error(node, "identitynet", f"{e}. Use an SD1.5 checkpoint with an SD1.5 IdentityNet") from None
    runtime = _IdentityRuntime(net, strength, start_percent, end_percent, default_tokens)
    patched = model.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for i, (key, _, _) in enumerate(layers):
        inner = existing.get(key, existing.get(key[:2]))
        if isinstance(inner, _IdentityAttn2Patch):  # a second Apply replaces the first IdentityNet
            inner = inner.inner
        patched.set_model_attn2_replace(_IdentityAttn2Patch(runtime, i, inner), *key)
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, IDENTITY_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, IDENTITY_KEY,
                                 _identity_outer_wrapper)
    patched.set_additional_models(IDENTITY_KEY, [module_patcher(net)])
    return patched


def with_row_tokens(transformer_options: dict, tokens: torch.Tensor) -> dict:
    """``transformer_options`` (a copy) for a direct ``diffusion_model(x, t, context, transformer_options=…)``
    call of a patched MODEL in which batch row b uses face tokens ``tokens[b]`` (``[B, N, T]``; gradients flow
    to the net — the trainer's path)."""
    out = dict(transformer_options)
    out[IDENTITY_KEY] = {"rows": tokens}
    return out


def attach_face_tokens(conditioning: list, tokens: torch.Tensor) -> list:
    """A copy of a CONDITIONING list whose every entry carries ``tokens`` (``[1, N, T]``) under IDENTITY_KEY."""
    out = []
    for cond, extra in conditioning:
        extra = dict(extra)
        extra[IDENTITY_KEY] = tokens
        out.append([cond, extra])
    return out
