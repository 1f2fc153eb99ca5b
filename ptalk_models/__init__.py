"""PortraitTalk engine: pure torch/numpy/OpenCV models and algorithms, no ComfyUI import.

Modules: ``landmarks`` (the PTALK_LANDMARKS structure), ``face`` (MediaPipe landmarks), ``audio``,
``phonemes``, ``visemes``, ``motion``, ``audio2landmarks`` (speech → landmark sequence), ``render``
(landmark warp renderer), ``draw`` (face-mesh drawing), ``images`` (array conventions).
"""
