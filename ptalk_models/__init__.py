"""PortraitTalk engine: pure torch/numpy/OpenCV models and algorithms, no ComfyUI import.

Modules: ``landmarks`` (the PTALK_LANDMARKS structure), ``face`` (MediaPipe landmarks), ``topology``
(face-mesh triangles and connection sets), ``audio``, ``phonemes``, ``visemes``, ``motion``,
``audio2landmarks`` (speech → landmark sequence), ``easing`` (smoothstep), ``render`` (landmark warp renderer),
``draw`` (face-mesh drawing), ``contour`` (head-contour guide), ``identity`` (face embeddings,
PTALK_FACE_EMBED), ``metrics`` (ADFD and companions: computation apart from the report), ``plot`` (metric
curves), ``media`` (audio/video/image I/O), ``images`` (array conventions, the one aspect rule), ``memory``
(batch pre-flight), ``errors`` (``InputError``: the rejected argument by name), ``weights`` (safetensors /
weights-only state-dict I/O), ``attention`` (scaled dot-product attention over heads), ``identitynet``
(IdentityNet, §III-A), ``animatenet`` (AnimateNet's three-way-attention branch, §III-B), ``training`` (the
shared diffusion fine-tuning base) with ``identity_training`` (masked fine-tuning, Eq. 1) and
``animatenet_training`` (Eq. 3), ``temporal`` (the Temporal Sampler's per-frame condition images),
``dubbing`` / ``dub_render`` / ``dub_crop`` (visual dubbing: the ``DubPlan`` and its input check, length
policies, landmark smoothing, lower-face warp and paste-back; aligned face crops and masks for the diffusion
path). Heavy libraries (OpenCV, MediaPipe, dlib, pocketsphinx, soxr, PyAV) are imported inside the functions
that use them, so importing the package stays cheap.
"""
