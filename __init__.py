"""ComfyUI-PortraitTalk: registers the PortraitTalk nodes with ComfyUI through the V3 extension API."""
from comfy_api.latest import ComfyExtension, io

WEB_DIRECTORY = "./web"


class PortraitTalkExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .nodes import NODE_LIST

        return NODE_LIST


async def comfy_entrypoint() -> PortraitTalkExtension:
    return PortraitTalkExtension()
