"""Face Embed node: IMAGE (reference photos of one person) → PTALK_FACE_EMBED + aligned face crops."""
from __future__ import annotations

from comfy_api.latest import io

from ..ptalk_models.errors import InputError
from ..ptalk_models.face import NoFaceError
from ..ptalk_models.identity import BACKENDS, INSIGHTFACE_MODELS, InsightFaceUnavailable, embed_faces
from .glue.convert import image_to_numpy, numpy_to_image
from .glue.errors import node_error, node_error_from
from .glue.folders import insightface_root, register_insightface_folder
from .glue.sockets import CATEGORY, FaceEmbed, Landmarks

NODE = "Face Embed"


class FaceEmbedNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        register_insightface_folder()  # models/insightface (+ extra_model_paths.yaml entries) for the insightface backend
        return io.Schema(
            node_id="PTalkFaceEmbed",
            display_name="Face Embed (PortraitTalk)",
            category=CATEGORY,
            description=(
                "Identity embedding of one person from one or several reference images (PortraitTalk §III-A): "
                "the face is placed with MediaPipe landmarks, the background outside the face oval is removed, "
                "and the aligned crop is embedded by dlib's face-recognition ResNet (128-D, embedded, Euclidean "
                "distance, 0.6 = same person) or InsightFace ArcFace (512-D unit vector from "
                "models/insightface/models/<antelopev2|buffalo_l>; never downloaded). Output PTALK_FACE_EMBED: "
                "per-image embeddings, their mean, presence flags and the aligned crops (also output as IMAGE)."),
            inputs=[
                io.Image.Input("image", tooltip="One or several reference images of the same person (a batch); "
                                                "images without a face are skipped and flagged."),
                io.Combo.Input("backend", options=list(BACKENDS), default="dlib",
                               tooltip="dlib: embedded 128-D model, offline (the identity metric). insightface: "
                                       "512-D ArcFace, what IdentityNet / IP-Adapter-FaceID consume; needs "
                                       "`pip install insightface onnxruntime` and the model pack in "
                                       "ComfyUI/models/insightface/models/<name>/."),
                io.Combo.Input("insightface_model", options=list(INSIGHTFACE_MODELS), default="antelopev2",
                               tooltip="InsightFace model pack for backend 'insightface' (antelopev2: glintr100.onnx; "
                                       "buffalo_l: w600k_r50.onnx). Ignored by dlib."),
                io.Boolean.Input("remove_background", default=True,
                                 tooltip="Replace everything outside the (slightly dilated) face oval by the "
                                         "network's neutral colour before embedding, as in the paper (§III-A)."),
                Landmarks.Input("landmarks", optional=True,
                                tooltip="Optional PTALK_LANDMARKS of these images (one frame per image, or one for "
                                        "all); without it the faces are detected with MediaPipe."),
            ],
            outputs=[
                FaceEmbed.Output("face_embed", tooltip="PTALK_FACE_EMBED: per-image embeddings, mean, presence, "
                                                       "crops, backend."),
                io.Image.Output("crops", tooltip="The aligned, background-removed face crops the network saw "
                                                 "(150x150 dlib, 112x112 ArcFace)."),
            ],
        )

    @classmethod
    def execute(cls, image, backend, insightface_model, remove_background, landmarks=None) -> io.NodeOutput:
        frames = image_to_numpy(image, NODE, "image")
        root = insightface_root(insightface_model) if backend == "insightface" else None
        try:
            emb = embed_faces(frames, landmarks=landmarks, backend=backend, insightface_root=root,
                              insightface_model=insightface_model, remove_background=bool(remove_background))
        except InsightFaceUnavailable as e:
            raise node_error(NODE, "backend", str(e)) from None
        except NoFaceError as e:
            raise node_error(NODE, "image", str(e)) from None
        except InputError as e:
            raise node_error_from(NODE, e, {"images": "image"}) from None
        except ValueError as e:  # pixels the engine cannot use
            raise node_error(NODE, "image", str(e)) from None
        return io.NodeOutput(emb, numpy_to_image(emb.crops))


NODES = [FaceEmbedNode]
