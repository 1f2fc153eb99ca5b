"""PortraitTalk ComfyUI nodes (V3 schema). Thin classes over ``ptalk_models``; one file per pipeline stage."""
from .audio_landmarks import AudioToLandmarks
from .draw_landmarks import DrawLandmarks
from .face_landmarks import FaceLandmarks
from .warp_render import LandmarkWarpRender, LandmarkWarpRenderVideo

NODE_LIST = [FaceLandmarks, AudioToLandmarks, DrawLandmarks, LandmarkWarpRender, LandmarkWarpRenderVideo]
