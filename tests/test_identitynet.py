"""IdentityNet (paper §III-A) in the real ComfyUI: a tiny random SD1.5-layout checkpoint loaded by core
CheckpointLoaderSimple, tiny IdentityNets with the real IP-Adapter-FaceID key names, real dlib face embeddings
of real photos, ComfyUI's own sampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import ptalk_harness as harness
from portraittalk.nodes.glue.identity_patch import IDENTITY_KEY, apply_identitynet, cross_attention_layers
from portraittalk.nodes.glue.sampling import sample_latent
from portraittalk.ptalk_models.identity import embed_faces
from portraittalk.ptalk_models.identitynet import (IdentityNetConfig, IdentityNetFormatError, infer_config, load_identitynet,
                                      new_identitynet, save_identitynet)

STEPS, CFG, SIZE = 2, 4.0, 64


@pytest.fixture(scope="module")
def sd(tiny_sd15_loaded):
    """(MODEL, CLIP, VAE) of the tiny checkpoint, loaded by core CheckpointLoaderSimple."""
    return tiny_sd15_loaded


@pytest.fixture(scope="module")
def layer_dims(tiny_identitynet):
    return tiny_identitynet.layer_dims


@pytest.fixture(scope="module")
def weights_dir(tiny_identitynet, layer_dims):
    """The registered temp models dir: portraittalk/ptalk_tiny_dlib.safetensors (our format, 128-D dlib
    projection, the tiny UNet's layers; from conftest) plus ipadapter/tiny-faceid_sd15.bin (IP-Adapter-FaceID
    nested .bin layout, 512-D, with its LoRA keys) and broken files."""
    root = tiny_identitynet.root
    ours, ipa = root / "portraittalk", root / "ipadapter"
    sd512 = new_identitynet(IdentityNetConfig(layer_dims=layer_dims), seed=2).state_dict()
    nested = {"image_proj": {k[len("image_proj."):]: v for k, v in sd512.items() if k.startswith("image_proj.")},
              "ip_adapter": {k[len("ip_adapter."):]: v for k, v in sd512.items() if k.startswith("ip_adapter.")}}
    for i in range(len(layer_dims)):  # the FaceID LoRA weights that ship inside the .bin
        nested["ip_adapter"][f"{2 * i + 1}.to_q_lora.down.weight"] = torch.zeros(128, layer_dims[i])
    torch.save(nested, ipa / "tiny-faceid_sd15.bin")
    # broken / wrong files
    good = (ours / "ptalk_tiny_dlib.safetensors").read_bytes()
    (ours / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (ipa / "truncated.bin").write_bytes((ipa / "tiny-faceid_sd15.bin").read_bytes()[:5000])
    sdxl = new_identitynet(IdentityNetConfig(token_dim=2048, layer_dims=[640, 1280]), seed=3).state_dict()
    save_file({k: v.contiguous() for k, v in sdxl.items()}, ipa / "sdxl-faceid.safetensors")
    save_file({"image_proj.proj.weight": torch.zeros(3072, 1024), "image_proj.norm.weight": torch.ones(768),
               "ip_adapter.1.to_k_ip.weight": torch.zeros(320, 768)}, ipa / "ip-adapter_sd15.safetensors")
    save_identitynet(new_identitynet(IdentityNetConfig(), seed=4), ours / "sd15_16_layers.safetensors")
    return root


@pytest.fixture(scope="module")
def nets(comfy, weights_dir):
    load = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkIdentityNetLoader"].execute
    return {"dlib": load("portraittalk/ptalk_tiny_dlib.safetensors").result[0],
            "faceid": load("ipadapter/tiny-faceid_sd15.bin").result[0]}


@pytest.fixture(scope="module")
def faces(astronaut, grid_still, astronaut_lm, grid_still_lm):
    """Real dlib embeddings (PTALK_FACE_EMBED) of two different people."""
    return {"astronaut": embed_faces(astronaut[None], landmarks=astronaut_lm),
            "grid": embed_faces(grid_still[None], landmarks=grid_still_lm)}


def _encode(comfy, clip, text, face=None, net=None):
    return comfy.nodes.NODE_CLASS_MAPPINGS["PTalkTextEncode"].execute(clip, text, face, net).result[0]


def _sample(model, pos, neg, seed=7, cfg=CFG):
    latent = {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}
    return sample_latent(model, pos, neg, latent, seed, STEPS, cfg, "euler", "normal", 1.0)["samples"]


@pytest.fixture(scope="module")
def conds(comfy, sd, nets, faces):
    clip = sd[1]
    text = "portrait photo of a person, red hair"
    return {"plain": _encode(comfy, clip, text), "neg": _encode(comfy, clip, "blurry"),
            "astronaut": _encode(comfy, clip, text, faces["astronaut"], nets["dlib"]),
            "grid": _encode(comfy, clip, text, faces["grid"], nets["dlib"]),
            "neg_astronaut": _encode(comfy, clip, "blurry", faces["astronaut"], nets["dlib"])}


# ----------------------------------------------------------------------------------------------- sampling
def test_strength_zero_is_bit_identical(sd, nets, conds):
    model = sd[0]
    base = _sample(model, conds["plain"], conds["neg"])
    patched0 = apply_identitynet(model, nets["dlib"], strength=0.0)
    assert torch.equal(_sample(patched0, conds["astronaut"], conds["neg"]), base)
    # strength > 0 but active only at sampling progress 1.0 (σ = 0, never evaluated) → also untouched
    late = apply_identitynet(model, nets["dlib"], strength=1.0, start_percent=1.0, end_percent=1.0)
    assert torch.equal(_sample(late, conds["astronaut"], conds["neg"]), base)


def test_identity_changes_output_and_depends_on_face(sd, nets, conds):
    model = sd[0]
    patched = apply_identitynet(model, nets["dlib"], strength=1.0)
    base = _sample(model, conds["plain"], conds["neg"])
    a = _sample(patched, conds["astronaut"], conds["neg"])
    a2 = _sample(patched, conds["astronaut"], conds["neg"])
    g = _sample(patched, conds["grid"], conds["neg"])
    no_face = _sample(patched, conds["plain"], conds["neg"])
    assert torch.isfinite(a).all()
    assert torch.equal(a, a2), "same seed, same face → same latent"
    assert (a - base).abs().mean() > 1e-3 * base.abs().mean()
    assert (a - g).abs().mean() > 1e-3 * base.abs().mean(), "a different face must give a different image"
    assert torch.equal(no_face, base), "a conditioning without face tokens gets no identity"
    # more strength → further from the unpatched result
    strong = _sample(apply_identitynet(model, nets["dlib"], strength=2.0), conds["astronaut"],
                     conds["neg"])
    assert (strong - base).abs().mean() > (a - base).abs().mean()
    # active for the first half only (σ 14.6 yes, σ 0.03 no): neither the full effect nor none
    half = _sample(apply_identitynet(model, nets["dlib"], strength=1.0, end_percent=0.5),
                   conds["astronaut"], conds["neg"])
    assert not torch.equal(half, a) and not torch.equal(half, base)


def _first_step_predictions(model, pos, neg):
    """(cond, uncond) denoised predictions of the first sampling step, read through ComfyUI's own
    sampler_cfg_function hook."""
    seen = {}

    def cfg_function(args):
        seen.setdefault("cond", args["cond_denoised"].clone())
        seen.setdefault("uncond", args["uncond_denoised"].clone())
        return args["uncond_denoised"] + (args["cond_denoised"] - args["uncond_denoised"]) * CFG

    m = model.clone()
    m.set_model_sampler_cfg_function(cfg_function)
    _sample(m, pos, neg)
    return seen["cond"], seen["uncond"]


def test_negative_gets_no_identity(sd, nets, conds):
    model = sd[0]
    patched = apply_identitynet(model, nets["dlib"], strength=1.0)
    c0, u0 = _first_step_predictions(model, conds["plain"], conds["neg"])
    c1, u1 = _first_step_predictions(patched, conds["astronaut"], conds["neg"])
    assert torch.equal(u1, u0), "the negative (no face tokens) must be computed exactly as without IdentityNet"
    assert not torch.equal(c1, c0)
    # a negative that explicitly carries face tokens does get them
    _, u2 = _first_step_predictions(patched, conds["astronaut"], conds["neg_astronaut"])
    assert not torch.equal(u2, u0)


def test_apply_fallback_face_is_for_positives_only(comfy, sd, nets, conds, faces):
    apply = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkIdentityNetApply"].execute
    model = sd[0]
    patched = apply(model, nets["dlib"], 1.0, 0.0, 1.0, faces["astronaut"]).result[0]
    c0, u0 = _first_step_predictions(model, conds["plain"], conds["neg"])
    c1, u1 = _first_step_predictions(patched, conds["plain"], conds["neg"])
    c2, _ = _first_step_predictions(apply_identitynet(model, nets["dlib"]), conds["astronaut"],
                                    conds["neg"])
    assert torch.equal(u1, u0) and not torch.equal(c1, c0)
    assert torch.equal(c1, c2), "fallback face on the model = the same face carried by the conditioning"


def test_clone_isolates_patches(sd, nets, conds):
    model = sd[0]
    before = _sample(model, conds["astronaut"], conds["neg"])
    patched = apply_identitynet(model, nets["dlib"], strength=1.0)
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(replace) == len(cross_attention_layers(model))
    assert "patches_replace" not in model.model_options.get("transformer_options", {})
    assert torch.equal(_sample(model, conds["astronaut"], conds["neg"]), before)
    assert not torch.equal(_sample(patched, conds["astronaut"], conds["neg"]), before)


# ------------------------------------------------------------------------------------------------ weights
def test_ip_adapter_faceid_layout_loads(nets, layer_dims):
    net = nets["faceid"]
    cfg = net.config
    assert (cfg.kind, cfg.id_dim, cfg.token_dim, cfg.num_tokens) == ("faceid", 512, 768, 4)
    assert cfg.layer_dims == layer_dims
    assert len(net.ignored_keys) == len(layer_dims) and all("lora" in k for k in net.ignored_keys)
    tokens = net.face_tokens(torch.nn.functional.normalize(torch.randn(1, 512), dim=-1))
    assert tokens.shape == (1, 4, 768) and torch.isfinite(tokens).all()


def test_plusv2_layout(tmp_path):
    """FaceID-PlusV2 key layout (perceiver resampler over CLIP-vision features) is recognised and needs CLIP."""
    cfg = IdentityNetConfig(kind="faceid_plusv2", clip_dim=96, resampler_depth=2, layer_dims=[320, 640])
    net = new_identitynet(cfg, seed=5)
    keys = set(net.state_dict())
    assert {"image_proj.perceiver_resampler.proj_in.weight", "image_proj.perceiver_resampler.layers.1.0.to_kv.weight",
            "image_proj.perceiver_resampler.layers.1.1.3.weight", "ip_adapter.3.to_v_ip.weight"} <= keys
    torch.save({"image_proj": {k[11:]: v for k, v in net.state_dict().items() if k.startswith("image_proj.")},
                "ip_adapter": {k[11:]: v for k, v in net.state_dict().items() if k.startswith("ip_adapter.")}},
               tmp_path / "plusv2.bin")
    loaded = load_identitynet(tmp_path / "plusv2.bin")
    assert loaded.config == cfg
    emb, clip = torch.randn(1, 512), torch.randn(1, 257, 96)
    assert torch.allclose(loaded.face_tokens(emb, clip), net.face_tokens(emb, clip))
    with pytest.raises(IdentityNetFormatError, match="CLIP"):
        loaded.face_tokens(emb)


def test_our_format_round_trips(tmp_path, layer_dims):
    net = new_identitynet(IdentityNetConfig(id_dim=128, hidden=256, layer_dims=layer_dims), seed=9)
    save_identitynet(net, tmp_path / "n.safetensors", {"step": 12})
    back = load_identitynet(tmp_path / "n.safetensors")
    assert back.config == net.config
    for k, v in net.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert infer_config(net.state_dict()).layer_dims == layer_dims


@pytest.mark.parametrize("name, match", [
    ("portraittalk/truncated.safetensors", "truncated"),
    ("ipadapter/truncated.bin", "truncated"),
    ("ipadapter/sdxl-faceid.safetensors", "SDXL"),
    ("ipadapter/ip-adapter_sd15.safetensors", "CLIP-image IP-Adapter"),
])
def test_bad_weights_give_clear_errors(comfy, weights_dir, name, match):
    load = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkIdentityNetLoader"].execute
    with pytest.raises(ValueError, match=match) as e:
        load(name)
    assert "IdentityNet Loader" in str(e.value) and "'weights'" in str(e.value)


def test_wrong_unet_and_wrong_embedding(comfy, sd, weights_dir, nets, faces):
    mappings = comfy.nodes.NODE_CLASS_MAPPINGS
    full = mappings["PTalkIdentityNetLoader"].execute("portraittalk/sd15_16_layers.safetensors").result[0]
    with pytest.raises(ValueError, match=r"16 cross-attention layers.*IdentityNet Apply|IdentityNet Apply.*16"):
        mappings["PTalkIdentityNetApply"].execute(sd[0], full, 1.0, 0.0, 1.0)
    # a 128-D dlib embedding into the 512-D (ArcFace) projection of IP-Adapter-FaceID
    with pytest.raises(ValueError, match=r"Text Encode.*'face_embed'.*128-D \(dlib\).*512-D") as e:
        _encode(comfy, sd[1], "a person", faces["astronaut"], nets["faceid"])
    assert "insightface" in str(e.value)
    with pytest.raises(ValueError, match=r"'identitynet'.*IdentityNet Loader"):
        _encode(comfy, sd[1], "a person", faces["astronaut"], None)


# ------------------------------------------------------------------------------------------------ graphs
def test_sampler_node_in_a_graph(comfy, tiny_sd15, weights_dir, shared_data):
    """LoadImage → Face Embed → Text Encode (+face) / Text Encode → IdentityNet Sampler (init image) → SaveImage,
    validated and executed by ComfyUI; same seed twice → the same PNG bytes."""
    name = harness.stage_input_file(shared_data / "photos" / "astronaut.png")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_sd15.name}},
        "2": {"class_type": "LoadImage", "inputs": {"image": name}},
        "3": {"class_type": "PTalkFaceEmbed", "inputs": {"image": ["2", 0], "backend": "dlib",
                                                          "insightface_model": "antelopev2",
                                                          "remove_background": True}},
        "4": {"class_type": "PTalkIdentityNetLoader", "inputs": {"weights": "portraittalk/ptalk_tiny_dlib.safetensors"}},
        "5": {"class_type": "PTalkTextEncode", "inputs": {"clip": ["1", 1], "text": "older, red hair",
                                                           "face_embed": ["3", 0], "identitynet": ["4", 0]}},
        "6": {"class_type": "PTalkTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "7": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "area", "width": 96,
                                                      "height": 96, "crop": "disabled"}},
        "8": {"class_type": "PTalkIdentityNetSampler", "inputs": {
            "model": ["1", 0], "identitynet": ["4", 0], "positive": ["5", 0], "negative": ["6", 0], "vae": ["1", 2],
            "seed": 3, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.6,
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "width": 512, "height": 512,
            "batch_size": 1, "init_image": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 1], "filename_prefix": "idnet"}},
    }
    files = [harness.output_files(harness.run_prompt(prompt))[0] for _ in range(2)]
    from portraittalk.ptalk_models.media import read_image

    img = read_image(files[0])
    assert img.shape == (96, 96, 3)
    assert files[0].read_bytes() == files[1].read_bytes()


def test_attribute_editing_workflow_end_to_end(comfy, tiny_sd15, tiny_identitynet, astronaut, shared_data,
                                               tmp_path):
    """workflows/attribute_editing.json on real inputs with the tiny random models: IdentityNet Sampler edits the
    portrait (dlib identity, 2 steps), then the foundation's talking-photo path animates it with speech → mp4
    with audio. A random model cannot draw a face, so here Face Landmarks reads the source photo (same size)
    instead of the edited one; every other link is as shipped."""
    import cv2

    from portraittalk.ptalk_models.media import read_video

    small = tmp_path / "astronaut_128.png"
    cv2.imwrite(str(small), cv2.cvtColor(cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA),
                                         cv2.COLOR_RGB2BGR))
    ui = harness.load_workflow(harness.REPO_ROOT / "workflows" / "attribute_editing.json")
    ui = harness.apply_inputs(ui, {
        "Reference portrait": small, "Speech": shared_data / "audio" / "beckett.wav",
        "CheckpointLoaderSimple": {"ckpt_name": tiny_sd15.name},
        "PTalkIdentityNetLoader": {"weights": tiny_identitynet.name},
        "PTalkFaceEmbed": {"backend": "dlib"},
        "PTalkIdentityNetSampler": {"steps": 2, "sampler_name": "euler", "scheduler": "normal"},
    })
    src = next(n["id"] for n in ui["nodes"] if n.get("title") == "Reference portrait")
    lm_node = next(n for n in ui["nodes"] if n["type"] == "PTalkFaceLandmarks")
    for link in ui["links"]:
        if link[3] == lm_node["id"]:
            link[1], link[2] = src, 0
    files = harness.run_workflow(ui, out_dir=tmp_path / "out")
    videos = [f for f in files if f.suffix == ".mp4"]
    images = [f for f in files if f.suffix == ".png"]
    assert len(videos) == 1 and len(images) == 1
    frames, fps = read_video(videos[0])
    assert frames.shape[1:] == (128, 128, 3) and abs(fps - 25) < 1e-6
    assert len(frames) > 25  # beckett.wav is several seconds of speech


# ------------------------------------------------------------------------------------ review regressions
def test_clone_of_patched_model_shares_the_managed_net(sd, nets, conds):
    """LoRA loaders, FreeU, ModelSampling… clone the MODEL after Apply (deep-copying model_options): the clone's
    patches must keep using the one IdentityNet that comfy.model_management manages, with the same result."""
    patched = apply_identitynet(sd[0], nets["dlib"], strength=1.0)
    clone = patched.clone()
    patches = clone.model_options["transformer_options"]["patches_replace"]["attn2"].values()
    assert all(p.runtime.net is nets["dlib"] for p in patches)
    assert clone.get_additional_models_with_key(IDENTITY_KEY)[0].model is nets["dlib"]
    assert torch.equal(_sample(clone, conds["astronaut"], conds["neg"]),
                       _sample(patched, conds["astronaut"], conds["neg"]))


def test_an_earlier_attn2_patch_is_kept(sd, nets, conds):
    """A patch already at a layer (e.g. IPAdapter applied before IdentityNet) computes the text term; one added
    after IdentityNet through IPAdapter_plus's ``.add`` gets a clear error."""
    import comfy.ldm.modules.attention as attention

    def damped(q, k, v, extra_options):  # a real replace patch: half the text attention
        return 0.5 * attention.optimized_attention(q, k, v, extra_options["n_heads"])

    earlier = sd[0].clone()
    for key, _, _ in cross_attention_layers(earlier):
        earlier.set_model_attn2_replace(damped, *key)
    only_earlier = _sample(earlier, conds["plain"], conds["neg"])
    assert not torch.equal(only_earlier, _sample(sd[0], conds["plain"], conds["neg"]))
    both0 = apply_identitynet(earlier, nets["dlib"], strength=0.0)
    assert torch.equal(_sample(both0, conds["astronaut"], conds["neg"]), only_earlier)
    both = apply_identitynet(earlier, nets["dlib"], strength=1.0)
    assert not torch.equal(_sample(both, conds["astronaut"], conds["neg"]), only_earlier)
    patch = next(iter(both.model_options["transformer_options"]["patches_replace"]["attn2"].values()))
    with pytest.raises(RuntimeError, match="apply it before IdentityNet Apply"):
        patch.add(lambda *a: None)


def test_combined_conditionings_keep_their_own_faces(comfy, sd, nets, conds):
    """Conditioning Combine of two identities: both faces act (≠ the same face twice, ≠ either alone)."""
    combine = comfy.nodes.NODE_CLASS_MAPPINGS["ConditioningCombine"]().combine
    patched = apply_identitynet(sd[0], nets["dlib"], strength=1.0)
    ag = _sample(patched, combine(conds["astronaut"], conds["grid"])[0], conds["neg"])
    aa = _sample(patched, combine(conds["astronaut"], conds["astronaut"])[0], conds["neg"])
    gg = _sample(patched, combine(conds["grid"], conds["grid"])[0], conds["neg"])
    assert not torch.equal(ag, aa) and not torch.equal(ag, gg)


def test_empty_percent_range_is_refused(sd, nets):
    with pytest.raises(ValueError, match="end_percent.*before start_percent"):
        apply_identitynet(sd[0], nets["dlib"], start_percent=0.8, end_percent=0.2)


def test_sampler_without_init_image(comfy, sd, nets, conds):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkIdentityNetSampler"]
    model, _, vae = sd
    args = dict(model=model, identitynet=nets["dlib"], positive=conds["astronaut"], negative=conds["neg"], vae=vae,
                seed=5, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=1.0, strength=1.0,
                start_percent=0.0, end_percent=1.0, width=64, height=72, batch_size=2)
    latent, images = node.execute(**args).result
    assert latent["samples"].shape == (2, 4, 9, 8) and images.shape == (2, 72, 64, 3)
    assert torch.isfinite(images).all() and not torch.equal(images[0], images[1])
    assert torch.equal(node.execute(**args).result[1], images)


def test_plus_v1_and_v2_differ_by_file_name(tmp_path):
    """FaceID-Plus and -PlusV2 files share one layout; v2 (name with "v2") adds the MLP tokens back."""
    net = new_identitynet(IdentityNetConfig(kind="faceid_plusv2", clip_dim=32, resampler_depth=1,
                                            layer_dims=[320]), seed=6)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, tmp_path / "ip-adapter-faceid-plus_sd15.safetensors")
    save_file(sd, tmp_path / "ip-adapter-faceid-plusv2_sd15.safetensors")
    v1 = load_identitynet(tmp_path / "ip-adapter-faceid-plus_sd15.safetensors")
    v2 = load_identitynet(tmp_path / "ip-adapter-faceid-plusv2_sd15.safetensors")
    assert (v1.config.kind, v2.config.kind) == ("faceid_plus", "faceid_plusv2")
    emb, clip = torch.randn(1, 512), torch.randn(1, 9, 32)
    x = v2.image_proj.norm(v2.image_proj.proj(emb).reshape(1, 4, 768))
    assert torch.allclose(v2.face_tokens(emb, clip) - v1.face_tokens(emb, clip), x, atol=1e-5)


def test_face_images_are_arcface_aligned_with_background(faces):
    """Face Embed's 224-px CLIP-vision face crops: the face re-detected by MediaPipe sits on the ArcFace
    template (eyes within a few pixels), with its background kept (not the neutral fill of the crops)."""
    from portraittalk.ptalk_models.face import detect_landmarks
    from portraittalk.ptalk_models.identity import ARCFACE_TEMPLATE, CLIP_FACE_SIZE, arcface_points

    img = faces["astronaut"].face_images
    assert img.shape == (1, CLIP_FACE_SIZE, CLIP_FACE_SIZE, 3) and img.dtype == np.uint8
    lm = detect_landmarks(img[0])
    five = arcface_points(lm.pixels(0))
    err = np.linalg.norm(five - ARCFACE_TEMPLATE * (CLIP_FACE_SIZE / 112.0), axis=1)
    assert err[:2].max() < 6.0, err  # the two eye centres
    corner = img[0, :20, :20].reshape(-1, 3).astype(float)
    assert corner.std(0).max() > 2.0 or abs(corner.mean() - 127) > 20  # real background, not a flat fill
