"""Model folders the pack registers with ComfyUI's ``folder_paths`` (``models/mediapipe``, ``models/insightface``,
``models/portraittalk``, ``models/ipadapter``), the combo options listing their files and the functions resolving a
chosen option to a full path. Registration keeps entries other packs or extra_model_paths.yaml made.
"""
from __future__ import annotations

import os

MEDIAPIPE_FOLDER = "mediapipe"
AUTO_MODEL = "auto"


def _register_folder(name: str, extension: str) -> None:
    """Register ``models/<name>`` with ``folder_paths`` (a new entry lists ``extension`` files), or add that path
    to an entry another pack or extra_model_paths.yaml made (its other paths and extensions are kept)."""
    import folder_paths

    path = os.path.join(folder_paths.models_dir, name)
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([path], {extension})
    else:
        folder_paths.add_model_folder_path(name, path)  # no-op when the path is listed already


def register_model_folders() -> None:
    """Register ``models/mediapipe`` (``*.task`` files) with ``folder_paths``; safe to call repeatedly."""
    import folder_paths

    _register_folder(MEDIAPIPE_FOLDER, ".task")
    folder_paths.folder_names_and_paths[MEDIAPIPE_FOLDER][1].add(".task")  # also in an entry made elsewhere


def mediapipe_model_options() -> list[str]:
    """Combo options for the landmarker model: ``auto`` then every ``*.task`` in ``models/mediapipe``."""
    import folder_paths

    register_model_folders()
    return [AUTO_MODEL] + folder_paths.get_filename_list(MEDIAPIPE_FOLDER)


def resolve_mediapipe_model(choice: str) -> str | None:
    """Path of the chosen ``.task`` file. ``auto``: ``models/mediapipe/face_landmarker.task`` if present,
    else None (= the embedded model of ``ptalk_models.face``)."""
    import folder_paths

    register_model_folders()
    name = "face_landmarker.task" if choice == AUTO_MODEL else choice
    path = folder_paths.get_full_path(MEDIAPIPE_FOLDER, name)
    if path is None and choice != AUTO_MODEL:
        raise FileNotFoundError(f"{choice} is not in ComfyUI/models/{MEDIAPIPE_FOLDER}")
    return path


INSIGHTFACE_FOLDER = "insightface"


def register_insightface_folder() -> None:
    """Register ``models/insightface`` with ``folder_paths`` (the folder IPAdapter-FaceID / InstantID packs use;
    model packs live in ``models/insightface/models/<name>/*.onnx``); keeps other packs' registrations."""
    _register_folder(INSIGHTFACE_FOLDER, ".onnx")


def insightface_root(model_name: str) -> str:
    """The registered ``insightface`` folder holding ``models/<model_name>/`` (also found via
    extra_model_paths.yaml), else ComfyUI's default ``models/insightface`` (for the missing-model message)."""
    import folder_paths

    register_insightface_folder()
    roots = folder_paths.get_folder_paths(INSIGHTFACE_FOLDER)
    for root in roots:
        if os.path.isdir(os.path.join(root, "models", model_name)):
            return root
    return roots[0] if roots else os.path.join(folder_paths.models_dir, INSIGHTFACE_FOLDER)


IDENTITYNET_FOLDERS = ("portraittalk", "ipadapter")
_WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth")


def register_identitynet_folders() -> None:
    """Register ``models/portraittalk`` and ``models/ipadapter`` (``.safetensors``/``.bin``/``.pt``/``.pth``) with
    ``folder_paths``, keeping entries other packs (IPAdapter_plus) or extra_model_paths.yaml made."""
    import folder_paths

    for name in IDENTITYNET_FOLDERS:
        _register_folder(name, ".safetensors")
        paths, exts = folder_paths.folder_names_and_paths[name]
        if not set(_WEIGHT_EXTENSIONS) <= set(exts):  # a new set: another pack's may be shared with other folders
            folder_paths.folder_names_and_paths[name] = (paths, set(exts) | set(_WEIGHT_EXTENSIONS))


def identitynet_options() -> list[str]:
    """Combo options: ``portraittalk/<file>`` and ``ipadapter/<file>`` for every weights file in those folders."""
    import folder_paths

    register_identitynet_folders()
    return [f"{folder}/{f}" for folder in IDENTITYNET_FOLDERS for f in folder_paths.get_filename_list(folder)]


def resolve_identitynet(choice: str) -> str:
    """Full path of a :func:`identitynet_options` entry; FileNotFoundError naming the folders when missing."""
    import folder_paths

    register_identitynet_folders()
    folder, _, name = choice.partition("/")
    if folder in IDENTITYNET_FOLDERS:
        path = folder_paths.get_full_path(folder, name)
    else:  # a bare file name (older workflows, IPAdapter-style): look in both folders
        path = next((p for p in (folder_paths.get_full_path(f, choice) for f in IDENTITYNET_FOLDERS) if p), None)
    if path is None:
        raise FileNotFoundError(f"{choice!r} was not found; put IdentityNet / IP-Adapter-FaceID weights in "
                                f"ComfyUI/models/portraittalk or ComfyUI/models/ipadapter")
    return path


def portraittalk_options() -> list[str]:
    """Combo options: the weights files in ``models/portraittalk``."""
    import folder_paths

    register_identitynet_folders()
    return folder_paths.get_filename_list("portraittalk")


def resolve_portraittalk(name: str) -> str:
    """Full path of a file in ``models/portraittalk``; FileNotFoundError naming the folder when missing."""
    import folder_paths

    register_identitynet_folders()
    path = folder_paths.get_full_path("portraittalk", name)
    if path is None:
        raise FileNotFoundError(f"{name!r} is not in ComfyUI/models/portraittalk")
    return path


AUDIO2MOTION_FOLDER = "audio2motion"
EMBEDDED_AUDIO2MOTION = "embedded (log-mel)"


def audio2motion_options() -> list[str]:
    """Combo options for the neural audio→motion model: the embedded one, then every ``*.safetensors`` in
    ``models/audio2motion`` (models trained with ``scripts/train_audio2motion.py``)."""
    import folder_paths

    _register_folder(AUDIO2MOTION_FOLDER, ".safetensors")
    return [EMBEDDED_AUDIO2MOTION] + folder_paths.get_filename_list(AUDIO2MOTION_FOLDER)


def resolve_audio2motion(choice: str) -> str | None:
    """Path of the chosen audio→motion file; None for the embedded model. Raises FileNotFoundError when the file
    is not in ``models/audio2motion``."""
    import folder_paths

    if not choice or choice == EMBEDDED_AUDIO2MOTION:
        return None
    _register_folder(AUDIO2MOTION_FOLDER, ".safetensors")
    path = folder_paths.get_full_path(AUDIO2MOTION_FOLDER, choice)
    if path is None:
        raise FileNotFoundError(f"{choice} is not in ComfyUI/models/{AUDIO2MOTION_FOLDER}")
    return path
