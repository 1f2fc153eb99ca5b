"""ComfyUI model management for the pack's extra torch modules (IdentityNet, AnimateNet): one ``ModelPatcher``
per module so ``comfy.model_management`` loads and offloads it with the UNet, and the UNet config ComfyUI detected
for a MODEL.
"""
from __future__ import annotations


def module_patcher(module):
    """A ModelPatcher for an extra torch module (IdentityNet, AnimateNet), made once per module and kept on it,
    so ``comfy.model_management`` loads it to the sampling device with the UNet and offloads it after."""
    patcher = module.__dict__.get("_ptalk_patcher")
    if patcher is None:
        import comfy.model_management as mm
        import comfy.model_patcher

        patcher = comfy.model_patcher.ModelPatcher(module, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        module.__dict__["_ptalk_patcher"] = patcher  # a plain attribute (not a submodule); freed with the module
    return patcher


def load_module(module) -> None:
    """Load an extra module (IdentityNet, AnimateNet) fully onto ComfyUI's compute device through
    ``comfy.model_management`` before using it outside a sampler (e.g. to make tokens)."""
    import comfy.model_management as mm

    mm.load_models_gpu([module_patcher(module)], force_full_load=True)


def unet_config(model) -> dict:
    """The UNet config ComfyUI detected for a MODEL (``model_config.unet_config``: channels, depths, heads …)."""
    return dict(model.model.model_config.unet_config)
