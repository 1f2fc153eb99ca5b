"""The ComfyUI glue of PortraitTalk: the one place where the pack touches ComfyUI internals, one concept per module.

* ``errors``: ``NodeInputError``, ``node_error`` / ``node_error_from`` (a bad input named by node, input and fix),
  the ``PortraitTalk`` logger ``log``.
* ``sockets``: the node ``CATEGORY`` and the custom socket types (PTALK_LANDMARKS, PTALK_FACE_EMBED,
  PTALK_IDENTITYNET, PTALK_ANIMATENET, PTALK_DUB_PLAN).
* ``folders``: model folders registered with ``folder_paths``, their combo options and path resolution.
* ``convert``: ComfyUI IMAGE / MASK / AUDIO ↔ the engine's numpy arrays.
* ``progress``: ``Progress`` (progress bar + interrupt check for long loops).
* ``video``: VIDEO values rendered frame by frame on demand (``StreamedTalkingVideo``, ``StreamedDubVideo``).
* ``patcher``: ``ModelPatcher`` handling of the pack's extra torch modules; a MODEL's UNet config.
* ``identity_patch``: IdentityNet as attn2 replace patches on a MODEL clone, face tokens on CONDITIONINGs.
* ``sampling``: ComfyUI's own sampling (``sample_latent``) and the KSampler-style widgets.
* ``control``: AnimateNet as a ``comfy.controlnet.ControlBase`` chained into CONDITIONINGs.
* ``temporal_sampling``: the Temporal Sampler's frame-window loop (``temporal_sample``).

The rule: node modules (``nodes/*.py``) import from these modules, from ``..ptalk_models`` and from
``comfy_api.latest``; nothing else touches ComfyUI internals, and ``ptalk_models`` never imports ComfyUI. This
package re-exports nothing: import each name from its module.
"""
