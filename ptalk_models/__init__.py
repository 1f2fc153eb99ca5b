"""PortraitTalk engine: pure torch/numpy/OpenCV models and algorithms, no ComfyUI import.

Modules: ``landmarks`` (the PTALK_LANDMARKS structure), ``face`` (MediaPipe landmarks), ``topology``
(face-mesh triangles and connection sets), ``audio``, ``phonemes``, ``visemes``, ``motion``,
``audio2landmarks`` (speech → landmark sequence), ``render`` (landmark warp renderer), ``draw`` (face-mesh
drawing), ``contour`` (head-contour guide), ``identity`` (face embeddings, PTALK_FACE_EMBED), ``metrics``
(ADFD and companions), ``plot`` (metric curves), ``media`` (audio/video/image I/O), ``images`` (array
conventions), ``identitynet`` / ``identity_training`` (IdentityNet, §III-A, and its masked fine-tuning),
``animatenet`` / ``animatenet_training`` (AnimateNet's three-way-attention branch, §III-B, and its training),
``temporal`` (the Temporal Sampler's per-frame condition images), ``dubbing`` / ``dub_render`` /
``dub_crop`` (visual dubbing: length policies, landmark smoothing, dubbed mouth/jaw landmarks, lower-face warp
and paste-back; aligned face crops and masks for the diffusion path). Heavy libraries (OpenCV, MediaPipe, dlib,
pocketsphinx, soxr, PyAV) are imported inside the functions that use them, so importing the package stays
cheap.
"""
