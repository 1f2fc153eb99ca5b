"""Benchmark IdentityNet: sampling step time patched vs plain MODEL, and training samples/s.

    .venv/bin/python bench/bench_identitynet.py [--size 512] [--steps 4] [--repeats 3] [--cfg 7] [--device auto]
    .venv/bin/python bench/bench_identitynet.py --train [--size 512] [--train-steps 3] [--micro-batch 4]

Builds the full-size SD1.5 architecture with random weights in memory (``scripts/random_sd15.py``: UNet 859.5 M
parameters, CLIP ViT-L/14 text encoder, KL-f8 VAE; fp16 on GPU, fp32 on CPU as ComfyUI picks), loads it through
ComfyUI's own ``comfy.sd.load_state_dict_guess_config``, and a random full-size IdentityNet (IP-Adapter-FaceID
SD1.5 shapes: 512-D ArcFace → 4 tokens of 768, 16 face K/V pairs). The same ``--steps``-step euler sampling at
``--size``² (batch 1, CFG on: cond + uncond batched, as KSampler does) runs on

* the plain MODEL;
* the IdentityNet-patched clone (strength 1; the positive carries face tokens, the negative none).

Runs alternate, after one warm-up each; each figure is the best of ``--repeats`` in seconds per step, and the
overhead is patched/plain − 1 (goal: ≤ 10 %). ComfyUI runs in-process (no server); its device choice applies
(``--device cpu`` forces CPU). Random weights: the figures are about speed only.

``--train``: masked fine-tuning throughput (``scripts/train_identitynet.py``, bf16 autocast on CUDA, fp32 on CPU)
with the same full-size random checkpoint (written to a temp file, 2.1 GB) on a dataset prepared from the real
photos and GRID frames of ``../shared/data`` at ``--size``: ``--train-steps`` optimiser steps of one micro-batch
each after one warm-up step; samples/s = samples / time of the timed steps.
"""
from __future__ import annotations

import argparse
import time

import _common
import ptalk_harness as harness


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (latent = size/8)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--device", choices=["auto", "cpu"], default="auto")
    ap.add_argument("--train", action="store_true", help="measure training samples/s instead")
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--micro-batch", type=int, default=4)
    args = ap.parse_args(argv)
    if args.train:
        return bench_training(args)

    if args.device == "cpu":
        harness.prepare()
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # ComfyUI's --cpu, read when comfy.model_management is first imported
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="ptalk_bench_"))
    harness.boot(input_dir=root / "in", output_dir=root / "out", temp_dir=root / "tmp", load_pack=True)
    import importlib

    import comfy.model_management as mm
    import comfy.sd
    from ptalk_harness import random_sd15
    import torch

    identity_patch = importlib.import_module("portraittalk.nodes.glue.identity_patch")
    sampling = importlib.import_module("portraittalk.nodes.glue.sampling")
    engine = importlib.import_module("portraittalk.ptalk_models.identitynet")

    t0 = time.perf_counter()
    sd = random_sd15.build_sd15_state_dict("full", seed=0, dtype=torch.float16)
    model, clip, vae = comfy.sd.load_state_dict_guess_config(sd, output_vae=True, output_clip=True)[:3]
    del sd
    print(f"device {mm.get_torch_device()} ({torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}), "
          f"UNet dtype {model.model.get_dtype()}, built+loaded in {time.perf_counter() - t0:.1f} s")

    layers = identity_patch.cross_attention_layers(model)
    net = engine.new_identitynet(engine.IdentityNetConfig(layer_dims=[w for _, w, _ in layers]), seed=0)
    emb = torch.nn.functional.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    with torch.no_grad():
        tokens = net.face_tokens(emb).float()
    pos_text = clip.encode_from_tokens_scheduled(clip.tokenize("portrait photo of a person, red hair"))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    pos = identity_patch.attach_face_tokens(pos_text, tokens)
    patched = identity_patch.apply_identitynet(model, net, strength=1.0)

    n = args.size // 8

    def run(m, p):
        latent = {"samples": torch.zeros(1, 4, n, n)}
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        sampling.sample_latent(m, p, neg, latent, 0, args.steps, args.cfg, "euler", "normal", 1.0)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / args.steps

    run(model, pos_text), run(patched, pos)  # warm-up (loads weights, autotunes)
    plain, with_id = [], []
    for _ in range(args.repeats):
        plain.append(run(model, pos_text))
        with_id.append(run(patched, pos))
    a, b = min(plain), min(with_id)
    print(f"{args.size}x{args.size}, {args.steps} euler steps, CFG {args.cfg} (cond+uncond batched), best of "
          f"{args.repeats}:")
    print(f"  plain MODEL          {a * 1000:9.1f} ms/step")
    print(f"  IdentityNet patched  {b * 1000:9.1f} ms/step   overhead {100 * (b / a - 1):+.1f} %  (goal <= +10 %)")
    return 0


def bench_training(args) -> int:
    """Training samples/s on the full-size random SD1.5 (see the module docstring)."""
    import tempfile
    from pathlib import Path

    import torch
    from ptalk_harness import identity_data as prep
    from ptalk_harness import random_sd15
    from ptalk_harness import train_identitynet as trainer

    data_src = _common.require_shared_data()
    harness.prepare()  # ComfyUI importable (random_sd15 builds the shapes with comfy's own modules)
    root = Path(tempfile.mkdtemp(prefix="ptalk_bench_train_"))
    src = root / "src"
    src.mkdir()
    for f in ("photos/astronaut.png", "photos/grid_still_lbax4n.png", "video/bbaf2n.mpg", "video/lwbsza.mpg"):
        (src / Path(f).name).symlink_to(data_src / f)
    prep.prepare_dataset(src, root / "data", frames_per_video=4, size=args.size, backend="dlib")
    t = time.perf_counter()
    ckpt = random_sd15.write_sd15_checkpoint(root / "sd15_full_random.safetensors", size="full", seed=0)
    print(f"full random checkpoint written in {time.perf_counter() - t:.1f} s")
    common = ["--data", str(root / "data"), "--checkpoint", str(ckpt), "--resolution", str(args.size),
              "--batch", str(args.micro_batch), "--micro-batch", str(args.micro_batch), "--eval-samples", "0",
              "--save-every", "100000", "-q", "--device", "cpu" if args.device == "cpu" else "auto"]
    trainer.train(trainer._parse(common + ["--out", str(root / "warm"), "--steps", "1"]))  # load + warm-up
    s = trainer.train(trainer._parse(common + ["--out", str(root / "run"), "--steps", str(args.train_steps)]))
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and s["device"] != "cpu" else "cpu"
    print(f"IdentityNet training, full-size SD1.5 UNet (random), {args.size}x{args.size}, micro-batch "
          f"{args.micro_batch}, {s['precision']} on {dev}: {s['seconds_per_step']:.2f} s/step = "
          f"{s['samples_per_second']:.2f} samples/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
