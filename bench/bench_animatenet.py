"""Benchmark the AnimateNet Temporal Sampler (frames/s, peak memory) against diffusers' per-frame ControlNet pipeline.

    .venv/bin/python bench/bench_animatenet.py                       # GPU: 512², 30 frames, window 16
    .venv/bin/python bench/bench_animatenet.py --vram-sweep          # + peak VRAM at 30 vs 300 frames
    .venv/bin/python bench/bench_animatenet.py --dtype bf16 --channels-last --compile
    .venv/bin/python bench/bench_animatenet.py --size 128 --frames 4 --window 2 --quality-steps 2 --threads 1  # CPU

What runs (all in this one process, ComfyUI in-process through ``ptalk_harness``, no server):

* **Ours**: the real ``PTalkAnimateNetTemporalSampler`` node (its ``execute``: condition drawing, windows of
  ``--window`` frames denoised as one batch with ComfyUI's own sampler, VAE encode of the reference and decode of
  every frame) on the full-size SD1.5 architecture with random weights (``scripts/random_sd15.py``, UNet 859.5 M
  parameters, loaded through ``comfy.sd.load_state_dict_guess_config``, so ComfyUI picks the dtype: fp16 on a GPU,
  fp32 on CPU, unless ``--dtype``) and an AnimateNet built for it (``AnimateNetConfig.from_unet_config``,
  ``new_animatenet`` initialised from the UNet) whose zero convs get small random values (std 0.05, as a trained
  branch, so its residuals are really added). The AnimateNet stays fp32 by default, which is what the AnimateNet
  Loader gives (``--animatenet-dtype``); when the UNet runs in another dtype, one extra fast-mode row shows the
  branch cast to the UNet's dtype.
* Driving signal: real MediaPipe landmarks of ``photos/astronaut.png`` driven by real speech (``audio/jfk.flac``,
  Audio → Landmarks engine, 25 fps; cycled when more frames are asked than the 11 s clip has), the photo resized
  to ``--size``² as the reference. Media from ``$PTALK_SHARED_DATA`` or ``<repo>/../shared/data``.
* Modes: **fast** = ``--fast-steps`` (4) euler steps, CFG 1 (ComfyUI then skips the uncond batch); **quality** =
  ``--quality-steps`` (25) steps, CFG ``--quality-cfg`` (7; cond + uncond batched). ``contour_source`` is
  ``"reference"`` for speed (the reference's head contour for every frame: no VAE decode / contour extraction
  between windows); one fast run with ``"previous frame"`` (the paper's setting) shows its cost.
* **Baseline**: diffusers' ``StableDiffusionControlNetPipeline`` called once per frame with the same steps / CFG /
  size and the same landmark drawing as ControlNet hint, random weights of the same SD1.5 shapes (UNet,
  ``ControlNetModel.from_unet``, KL-f8 VAE built from config dicts in code, no hub access), prompt embeddings
  passed directly (ComfyUI's CLIP output: no tokenizer or text encoder), no safety checker, euler scheduler, the
  UNet's dtype. Needs ``diffusers`` (``.venv/bin/pip install -r requirements-bench.txt``); skipped with that hint
  when it is missing. Its ComfyUI models are unloaded from the GPU first.
* Both run under ``torch.inference_mode()``, as ComfyUI's executor runs a prompt.
* fps = frames / wall time of the whole node call (resp. of the per-frame pipeline calls), best of ``--repeats``
  after one warm-up (``min(frames, window + 2)`` frames: loads the weights, compiles, covers a full and a partial
  window). Peak memory: ``torch.cuda.max_memory_allocated`` (weights included) on a GPU; on CPU the process's peak
  RSS (sampled every 10 ms; the weights, the frames kept in RAM and the VAE decode of up to 16 frames at once
  included, so on CPU it is flat only from 16 frames on). ``--threads 1`` on a CPU shared with other jobs: with
  two OpenMP threads each small op waited ~16 ms for a descheduled thread here (10× slower overall).
* ``--vram-sweep``: fast mode at ``--sweep-frames`` (30 and 300) frames: peak VRAM must not grow with the video.
* Options: ``--dtype`` (UNet weights through ComfyUI's ``model_options``), ``--channels-last`` (UNet, AnimateNet,
  VAE; the baseline's too), ``--compile`` (``torch.compile``: ComfyUI's own TorchCompileModel wrapper on the
  UNet plus the AnimateNet module; in the baseline the UNet and the ControlNet; a failure is reported and the run
  falls back to eager). Attention: ComfyUI's choice is printed (SDPA = ``attention_pytorch`` is its default on
  CUDA); the AnimateNet always uses ``F.scaled_dot_product_attention``.

Goals printed next to the figures: ≥ 50 fps in fast mode at 512² on one H100; ≥ 3× the diffusers per-frame
baseline; peak VRAM flat in the video length and ≤ 8 GiB at 512² fast mode. Random weights: speed only.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import threading
import time
import traceback

import _common
import ptalk_harness as harness

GOAL_FPS, GOAL_SPEEDUP, GOAL_VRAM_GIB = 50.0, 3.0, 8.0
GIB = 1024 ** 3

#: diffusers configs of the SD1.5 shapes (runwayml/stable-diffusion-v1-5 unet/ and vae/ config.json, inline)
DIFFUSERS_UNET = dict(sample_size=64, in_channels=4, out_channels=4, center_input_sample=False,
                      flip_sin_to_cos=True, freq_shift=0,
                      down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                        "DownBlock2D"],
                      up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                      block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, downsample_padding=1,
                      mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
                      cross_attention_dim=768, attention_head_dim=8)
DIFFUSERS_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
                     act_fn="silu", norm_num_groups=32, block_out_channels=[128, 256, 512, 512],
                     down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
DIFFUSERS_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                           beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1,
                           timestep_spacing="linspace")


def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512, help="reference / frame side in pixels (multiple of 8, ≥ 64)")
    ap.add_argument("--frames", type=int, default=30, help="frames generated per timed run")
    ap.add_argument("--window", type=int, default=16, help="frames_per_window (frames denoised as one batch)")
    ap.add_argument("--modes", default="fast,quality", help="comma list of fast, quality")
    ap.add_argument("--fast-steps", type=int, default=4)
    ap.add_argument("--quality-steps", type=int, default=25)
    ap.add_argument("--quality-cfg", type=float, default=7.0)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--scheduler", default="normal")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per row (best is kept)")
    ap.add_argument("--no-previous-frame", action="store_true", help="skip the contour_source 'previous frame' row")
    ap.add_argument("--vram-sweep", action="store_true", help="fast mode at each of --sweep-frames frames")
    ap.add_argument("--sweep-frames", default="30,300", help="comma list of frame counts for --vram-sweep")
    ap.add_argument("--dtype", choices=["auto", "fp16", "bf16", "fp32"], default="auto",
                    help="UNet weight dtype (auto = ComfyUI's pick: fp16 on GPU, fp32 on CPU)")
    ap.add_argument("--animatenet-dtype", choices=["fp32", "unet"], default="fp32",
                    help="fp32 = as the AnimateNet Loader gives it (default); unet = cast to the UNet's dtype")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNets and the AnimateNet/ControlNet")
    ap.add_argument("--no-baseline", action="store_true", help="skip the diffusers baseline")
    ap.add_argument("--baseline-frames", type=int, default=None, help="frames per baseline run (default --frames)")
    ap.add_argument("--device", choices=["auto", "cpu"], default="auto")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0 = torch's default); on a shared CPU, 1 avoids OpenMP stalls")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(args.modes) <= {"fast", "quality"}:
        ap.error(f"--modes: unknown {sorted(set(args.modes) - {'fast', 'quality'})}")
    args.sweep_frames = [int(n) for n in args.sweep_frames.split(",") if n.strip()]
    if args.size < 64 or args.size % 8:
        ap.error("--size must be a multiple of 8, at least 64")
    if min(args.frames, args.window, args.fast_steps, args.quality_steps, args.repeats) < 1:
        ap.error("--frames, --window, steps and --repeats must be ≥ 1")
    return args


class PeakMemory:
    """Peak memory of a block: ``torch.cuda.max_memory_allocated`` on CUDA, else the process's peak RSS sampled
    every 10 ms by a thread (``ru_maxrss`` never goes down, so it cannot give the peak of one run)."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak = cuda, 0

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc, self._stop = psutil.Process(), threading.Event()
            self.peak = proc.memory_info().rss

            def poll():
                while not self._stop.wait(0.01):
                    self.peak = max(self.peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            import psutil

            self.peak = max(self.peak, psutil.Process().memory_info().rss)
        return False


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _short(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


class Row:
    def __init__(self, label, contour, size, frames, window, steps, cfg, seconds, peak, note=""):
        self.label, self.contour, self.size, self.frames, self.window = label, contour, size, frames, window
        self.steps, self.cfg, self.seconds, self.peak, self.note = steps, cfg, seconds, peak, note

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


def _table(rows, mem_label):
    head = (f"{'run':<34} {'contour':<14} {'size':>5} {'frames':>6} {'window':>6} {'steps':>5} {'cfg':>4} "
            f"{'fps':>8} {'s/frame':>8} {mem_label:>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.label:<34} {r.contour:<14} {r.size:>5} {r.frames:>6} {str(r.window):>6} {r.steps:>5} "
              f"{r.cfg:>4g} {r.fps:>8.2f} {r.seconds / r.frames:>8.3f} {r.peak / GIB:>9.2f} GiB"
              + (f"  {r.note}" if r.note else ""))


def main(argv=None) -> int:
    args = _parse(argv)
    t_start = time.perf_counter()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    data = _common.require_shared_data()
    harness.prepare()
    if args.device == "cpu":
        import comfy.cli_args  # ComfyUI parses no command line in-process: set its flag before model_management

        comfy.cli_args.args.cpu = True
    import logging
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="ptalk_bench_animatenet_"))
    import atexit
    import shutil

    atexit.register(shutil.rmtree, root, True)
    st = harness.boot(input_dir=root / "in", output_dir=root / "out", temp_dir=root / "tmp", load_pack=True)
    logging.getLogger().setLevel(logging.WARNING)  # ComfyUI's "Requested to load …" lines would drown the table

    import numpy as np
    import torch

    import comfy.ldm.modules.attention as comfy_attention
    import comfy.model_management as mm
    import comfy.sd
    from ptalk_harness import random_sd15

    def pack(name):
        return importlib.import_module(f"portraittalk.{name}")

    glue_patcher = pack("nodes.glue.patcher")
    an = pack("ptalk_models.animatenet")
    face, a2l, media, lmmod = (pack("ptalk_models.face"), pack("ptalk_models.audio2landmarks"),
                               pack("ptalk_models.media"), pack("ptalk_models.landmarks"))
    temporal = pack("ptalk_models.temporal")
    node = st.nodes.NODE_CLASS_MAPPINGS["PTalkAnimateNetTemporalSampler"]

    device = mm.get_torch_device()
    cuda = device.type == "cuda"
    mem_label = "peak VRAM" if cuda else "peak RSS"
    dev_name = torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores)"

    # ---------------------------------------------------------------- driving landmarks from real photo + speech
    import cv2

    t0 = time.perf_counter()
    photo = media.read_image(data / "photos" / "astronaut.png")
    ref_lm = face.detect_landmarks(photo)
    wav, sr = media.read_audio(data / "audio" / "jfk.flac")
    speech = a2l.generate_landmarks(wav, sr, ref_lm, fps=25.0, seed=0)
    size = args.size
    ref_img = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA if size < photo.shape[0]
                         else cv2.INTER_CUBIC)
    reference = torch.from_numpy(np.ascontiguousarray(ref_img)).float().div(255.0)[None]

    def driving(n):
        idx = np.arange(n) % len(speech)
        return lmmod.FaceLandmarks.from_points(speech.points[idx], (size, size), speech.fps, speech.present[idx])

    print(f"landmarks: MediaPipe on astronaut.png ({photo.shape[1]}x{photo.shape[0]}) + Audio → Landmarks on "
          f"jfk.flac: {len(speech)} frames at {speech.fps:g} fps ({time.perf_counter() - t0:.1f} s)")

    # ---------------------------------------------------------------- full-size random SD1.5 through ComfyUI
    t0 = time.perf_counter()
    sd = random_sd15.build_sd15_state_dict("full", seed=0, dtype=torch.float16)
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    model_options = {} if args.dtype == "auto" else {"dtype": dtypes[args.dtype]}
    model, clip, vae = comfy.sd.load_state_dict_guess_config(sd, output_vae=True, output_clip=True,
                                                             model_options=model_options)[:3]
    del sd
    gc.collect()
    unet_dtype = model.model.get_dtype()
    compute_dtype = model.model.manual_cast_dtype or unet_dtype
    print(f"device {device} ({dev_name}, {torch.get_num_threads()} torch CPU threads), torch {torch.__version__}; "
          f"full-size SD1.5 (random) built+loaded in {time.perf_counter() - t0:.1f} s")
    print(f"UNet weights {unet_dtype}" + (f" (computed in {compute_dtype}: manual cast)"
                                          if model.model.manual_cast_dtype else "")
          + f", VAE {vae.vae_dtype}; ComfyUI attention: {comfy_attention.optimized_attention.__name__}"
          + (" (= PyTorch SDPA)" if comfy_attention.optimized_attention.__name__ == "attention_pytorch" else "")
          + "; AnimateNet attention: F.scaled_dot_product_attention")

    with torch.inference_mode():  # as ComfyUI's executor runs every prompt (no autograd graph anywhere)
        positive = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a person talking, detailed face"))
        negative = clip.encode_from_tokens_scheduled(clip.tokenize("blurry, deformed"))
    del clip
    mm.unload_all_models()  # CLIP off the GPU: the peaks below are what sampling needs
    mm.soft_empty_cache()

    t0 = time.perf_counter()
    cfg_an = an.AnimateNetConfig.from_unet_config(glue_patcher.unet_config(model))
    net = an.new_animatenet(cfg_an, seed=0, unet_sd=model.model.diffusion_model.state_dict())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # "trained" zero convs: the branch's residuals are non-zero and really added
        for name, p in net.named_parameters():
            if name.startswith(("zero_convs", "middle_block_out")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    net.eval().requires_grad_(False)
    if args.animatenet_dtype == "unet":
        net.to(compute_dtype)
    n_params, an_dtype = sum(p.numel() for p in net.parameters()), net.dtype
    print(f"AnimateNet: {n_params / 1e6:.1f} M parameters, {net.dtype}, token grid {cfg_an.token_grid}² × "
          f"{cfg_an.cond_dim} (built in {time.perf_counter() - t0:.1f} s)")

    if args.channels_last:
        cl = torch.channels_last
        model.model.diffusion_model.to(memory_format=cl)
        vae.first_stage_model.to(memory_format=cl)
        net.to(memory_format=cl)
        print("channels_last: UNet, VAE, AnimateNet")

    sampling_model = model
    compile_state = {"on": False, "note": ""}
    if args.compile:
        try:
            import torch._dynamo.config as dynamo_config
            from comfy_api.torch_helpers import set_torch_compile_wrapper

            # ComfyUI's UNet forward graph-breaks, so each transformer block / ResBlock frame is compiled on its own
            # and specialised on its block index / widths: 8 recompiles (torch's default limit) are not enough, and
            # the blocks beyond them would silently run eager
            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
            dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4096)
            sampling_model = model.clone()
            set_torch_compile_wrapper(model=sampling_model, backend="inductor")
            net.compile()
            compile_state["on"] = True
            print("torch.compile: UNet (ComfyUI TorchCompileModel wrapper, inductor) + AnimateNet (nn.Module.compile)")
        except Exception as e:  # noqa: BLE001  (report and run eager)
            print(f"torch.compile unavailable ({_short(e)}); running eager")
            sampling_model = model

    def disable_compile(e):
        nonlocal sampling_model
        print(f"torch.compile FAILED ({_short(e)}); falling back to eager")
        traceback.print_exc(limit=3)
        sampling_model = model
        net._compiled_call_impl = None
        compile_state.update(on=False, note="compile failed")
        torch._dynamo.reset()

    # ------------------------------------------------------------------------------------ ours: the node
    def unload_module(module):
        """Take one extra module (an AnimateNet) off ComfyUI's compute device, leaving the UNet / VAE loaded."""
        patcher = glue_patcher.module_patcher(module)
        for i in range(len(mm.current_loaded_models) - 1, -1, -1):
            if mm.current_loaded_models[i].model is patcher:
                mm.current_loaded_models[i].model_unload()
                mm.current_loaded_models.pop(i)
        mm.soft_empty_cache()

    def node_call(frames, steps, cfg, contour, animatenet):
        # under inference_mode, as ComfyUI's executor runs a prompt: outside it ComfyUI's VAE encode/decode (whose
        # weights require grad) would record an autograd graph that the returned frames keep alive — memory
        # growing with the video length, and slower
        with torch.inference_mode():
            out = node.execute(sampling_model, positive, negative, vae, driving(frames), reference, args.seed,
                               steps, cfg, args.sampler, args.scheduler, 1.0, args.window, 1.0, 0.0, 1.0, contour,
                               animatenet=animatenet)
        images = out.result[0]
        assert images.shape == (frames, size, size, 3), images.shape
        return images

    warmed = set()

    def ours(label, frames, steps, cfg, contour="reference", animatenet=None):
        animatenet = net if animatenet is None else animatenet
        key = (steps, cfg, contour, id(animatenet))
        if key not in warmed:
            try:
                node_call(min(frames, args.window + 2), steps, cfg, contour, animatenet)
            except Exception as e:  # noqa: BLE001
                if not compile_state["on"]:
                    raise
                disable_compile(e)
                node_call(min(frames, args.window + 2), steps, cfg, contour, animatenet)
            warmed.add(key)
        best, peak = None, 0
        for _ in range(args.repeats):
            with PeakMemory(cuda) as pm:
                _sync()
                t = time.perf_counter()
                images = node_call(frames, steps, cfg, contour, animatenet)
                _sync()
                dt = time.perf_counter() - t
            del images
            best, peak = (dt if best is None else min(best, dt)), max(peak, pm.peak)
        note = compile_state["note"] + (" compiled" if compile_state["on"] else "")
        row = Row(label, contour, size, frames, args.window, steps, cfg, best, peak, note.strip())
        print(f"  {label:<34} {row.fps:8.2f} fps  {mem_label} {peak / GIB:.2f} GiB", flush=True)
        return row

    modes = {"fast": (args.fast_steps, 1.0), "quality": (args.quality_steps, args.quality_cfg)}
    rows, by_mode = [], {}
    print(f"\nAnimateNet Temporal Sampler (node execute), {args.sampler}/{args.scheduler}, seed {args.seed}:")
    for m in args.modes:
        steps, cfg = modes[m]
        by_mode[m] = ours(m, args.frames, steps, cfg)
        rows.append(by_mode[m])
        if m == "fast" and not args.no_previous_frame:
            rows.append(ours("fast", args.frames, steps, cfg, contour="previous frame"))
    sweep = []
    if args.vram_sweep:
        steps, cfg = modes["fast"]
        for n in args.sweep_frames:
            sweep.append(ours(f"fast, sweep {n} frames", n, steps, cfg))
        rows += sweep
    if "fast" in args.modes and an_dtype != compute_dtype:  # last: the fp32 branch is unloaded for it
        steps, cfg = modes["fast"]
        cast = an.new_animatenet(cfg_an, seed=0)
        cast.load_state_dict(net.state_dict())
        cast = cast.to(compute_dtype).eval().requires_grad_(False)
        if args.channels_last:
            cast.to(memory_format=torch.channels_last)
        if compile_state["on"]:
            cast.compile()
        unload_module(net)  # so its weights do not count in this row's peak
        rows.append(ours(f"fast, AnimateNet cast to {str(compute_dtype).split('.')[-1]}", args.frames, steps, cfg,
                         animatenet=cast))
        by_mode["fast_cast"] = rows[-1]
        unload_module(cast)
        del cast

    # ------------------------------------------------------------------------------------ baseline: diffusers
    base_rows, base_note = {}, ""
    if args.no_baseline:
        base_note = "baseline skipped (--no-baseline)"
    else:
        try:
            import diffusers
        except ImportError:
            diffusers = None
            base_note = ("baseline skipped: diffusers is not installed — install it with "
                         "`.venv/bin/pip install -r requirements-bench.txt`")
        if diffusers is not None:
            # free ComfyUI's models (off the GPU, and out of RAM) so the baseline's peak memory is its own
            del model, vae, net, sampling_model
            mm.unload_all_models()
            gc.collect()
            mm.soft_empty_cache()
            if not cuda:
                import ctypes

                import psutil

                try:  # give the freed weights' heap pages back to the OS, so RSS shows the baseline's own
                    ctypes.CDLL("libc.so.6").malloc_trim(0)
                except (OSError, AttributeError):
                    pass
                print(f"(ComfyUI models freed; RSS now {psutil.Process().memory_info().rss / GIB:.2f} GiB)")
            base_rows = baseline(args, diffusers, device, compute_dtype, positive, negative, driving, temporal,
                                 modes, cuda, mem_label)
            rows += list(base_rows.values())
    if base_note:
        print(base_note)

    # ------------------------------------------------------------------------------------ report
    print(f"\n== AnimateNet Temporal Sampler benchmark — {dev_name}, UNet {str(compute_dtype).split('.')[-1]}, "
          f"AnimateNet {str(an_dtype).split('.')[-1]}, attention {comfy_attention.optimized_attention.__name__}"
          f"{', channels_last' if args.channels_last else ''}{', compiled' if compile_state['on'] else ''} ==")
    print("(random full-size SD1.5 weights: speed only; contour 'reference' = the reference's head contour for every "
          "frame, the fast setting; 'previous frame' = the paper's)")
    _table(rows, mem_label)
    print()
    on_h100 = cuda and "H100" in dev_name
    where = "" if on_h100 else f"  [goal is for one H100; this is {dev_name}]"
    if "fast" in by_mode:
        f = by_mode["fast"]
        ok = "met" if f.fps >= GOAL_FPS else "NOT met"
        print(f"goal fast mode ≥ {GOAL_FPS:g} fps at 512²: {f.fps:.2f} fps at {size}² → {ok}{where}")
        if "fast_cast" in by_mode:
            print(f"     (with the AnimateNet cast to the UNet dtype: {by_mode['fast_cast'].fps:.2f} fps)")
    for m in args.modes:
        if m in base_rows:
            r = by_mode[m].fps / base_rows[m].fps
            print(f"goal ≥ {GOAL_SPEEDUP:g}× diffusers per-frame, {m}: {by_mode[m].fps:.2f} / "
                  f"{base_rows[m].fps:.2f} fps = {r:.2f}× → {'met' if r >= GOAL_SPEEDUP else 'NOT met'}")
    if not base_rows:
        print(f"goal ≥ {GOAL_SPEEDUP:g}× diffusers per-frame: not measured ({base_note or 'no baseline'})")
    if sweep:
        lo, hi = sweep[0], sweep[-1]
        growth = (hi.peak - lo.peak) / GIB
        flat = abs(growth) <= max(0.25, 0.05 * lo.peak / GIB)
        line = (f"goal {mem_label} flat in video length: {lo.frames} frames {lo.peak / GIB:.2f} GiB, {hi.frames} "
                f"frames {hi.peak / GIB:.2f} GiB ({growth:+.2f} GiB) → {'flat' if flat else 'NOT flat'}")
        if cuda:
            line += (f"; ≤ {GOAL_VRAM_GIB:g} GiB: {max(r.peak for r in sweep) / GIB:.2f} GiB → "
                     f"{'met' if max(r.peak for r in sweep) <= GOAL_VRAM_GIB * GIB else 'NOT met'}"
                     + ("" if size == 512 else f" (at {size}², goal is for 512²)"))
        else:
            line += ("  [CPU: RSS includes the weights, the frames kept in RAM (T×H×W×3 float32) and the VAE "
                     "decode of up to 16 frames at once, so it grows with T up to 16 frames and then by the frames "
                     "only; the VRAM goal needs a GPU]")
        print(line)
    elif "fast" in by_mode and cuda:
        p = by_mode["fast"].peak / GIB
        print(f"goal peak VRAM ≤ {GOAL_VRAM_GIB:g} GiB at 512² fast mode: {p:.2f} GiB at {size}² → "
              f"{'met' if p <= GOAL_VRAM_GIB else 'NOT met'} (flatness: run with --vram-sweep)")
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")
    return 0


def baseline(args, diffusers, device, dtype, positive, negative, driving, temporal, modes, cuda, mem_label):
    """diffusers' StableDiffusionControlNetPipeline, one call per frame; returns {mode: Row}."""
    import torch

    diffusers.utils.logging.set_verbosity_error()  # "modules that should be kept in float32: []" on .to(dtype)
    from diffusers import (AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, StableDiffusionControlNetPipeline,
                           UNet2DConditionModel)

    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        unet = UNet2DConditionModel(**DIFFUSERS_UNET)
        controlnet = ControlNetModel.from_unet(unet)
        vae = AutoencoderKL(**DIFFUSERS_VAE)
    with torch.no_grad():  # "trained" zero convs, like our AnimateNet (speed is the same either way)
        for name, p in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                p.normal_(0.0, 0.05)
    mods = [m.to(device=device, dtype=dtype).eval().requires_grad_(False) for m in (unet, controlnet, vae)]
    if args.channels_last:
        for m in mods:
            m.to(memory_format=torch.channels_last)
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, controlnet=controlnet,
        scheduler=EulerDiscreteScheduler(**DIFFUSERS_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    n_unet = sum(p.numel() for p in unet.parameters()) / 1e6
    n_cn = sum(p.numel() for p in controlnet.parameters()) / 1e6
    attn = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    print(f"\ndiffusers {diffusers.__version__} baseline: StableDiffusionControlNetPipeline per frame, UNet "
          f"{n_unet:.1f} M + ControlNet {n_cn:.1f} M parameters (random), {dtype}, attention {', '.join(attn)}, "
          f"euler (built in {time.perf_counter() - t0:.1f} s)")
    compiled = False
    if args.compile:
        try:
            unet.compile()
            controlnet.compile()
            compiled = True
        except Exception as e:  # noqa: BLE001
            print(f"baseline torch.compile unavailable ({_short(e)}); eager")

    pe, ne = positive[0][0].to(device, dtype), negative[0][0].to(device, dtype)
    frames = args.baseline_frames or args.frames
    size = args.size
    lms = driving(frames)

    @torch.inference_mode()  # like ours (the pipeline itself runs under no_grad)
    def run(n, steps, cfg):
        conds = temporal.FrameConditions(lms, (size, size), None, "reference")
        for t in range(n):
            hint = conds.structure(t, t + 1)  # the frame's landmark drawing, [1, 3, H, W] in [0, 1]
            out = pipe(prompt_embeds=pe, negative_prompt_embeds=ne, image=hint, height=size, width=size,
                       num_inference_steps=steps, guidance_scale=cfg,
                       generator=torch.Generator("cpu").manual_seed(args.seed + t), output_type="pt").images
            assert out.shape == (1, 3, size, size), out.shape
        return out

    rows = {}
    for m in args.modes:
        steps, cfg = modes[m]
        try:
            run(1, steps, cfg)  # warm-up
        except Exception as e:  # noqa: BLE001
            if not compiled:
                raise
            print(f"baseline torch.compile FAILED ({_short(e)}); eager")
            unet._compiled_call_impl = controlnet._compiled_call_impl = None
            torch._dynamo.reset()
            compiled = False
            run(1, steps, cfg)
        best, peak = None, 0
        for _ in range(args.repeats):
            with PeakMemory(cuda) as pm:
                _sync()
                t = time.perf_counter()
                run(frames, steps, cfg)
                _sync()
                dt = time.perf_counter() - t
            best, peak = (dt if best is None else min(best, dt)), max(peak, pm.peak)
        rows[m] = Row(f"diffusers per-frame, {m}", "-", size, frames, "1/call", steps, cfg, best, peak,
                      "compiled" if compiled else "")
        print(f"  {rows[m].label:<34} {rows[m].fps:8.2f} fps  {mem_label} {peak / GIB:.2f} GiB", flush=True)
    pipe = unet = controlnet = vae = None  # drop them (``run`` holds ``pipe`` too) before collecting
    gc.collect()
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
