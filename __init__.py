"""ComfyUI-PortraitTalk: registers the PortraitTalk nodes with ComfyUI through the V3 extension API.

``comfy_api`` is imported only when ComfyUI calls :func:`comfy_entrypoint`, so the engine
(``ptalk_models``) can be imported without ComfyUI (see ``harness/ptalk_harness/pack.py``).
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """V3 entry point: the extension whose ``get_node_list`` returns the pack's nodes (``nodes.NODE_LIST``)."""
    from comfy_api.latest import ComfyExtension

    from .nodes import NODE_LIST

    class PortraitTalkExtension(ComfyExtension):
        async def get_node_list(self):
            return NODE_LIST

    return PortraitTalkExtension()
