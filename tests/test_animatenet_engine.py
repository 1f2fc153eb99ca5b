"""AnimateNet engine (paper §III-B, Eq. 2) checked against ComfyUI's own SD1.5 UNet: a tiny random SD1.5-layout
UNet (scripts/random_sd15.py, real LDM key names) built with ComfyUI's ``openaimodel.UNetModel``, an AnimateNet
initialised from its state dict, the control format fed back into ComfyUI's UNet forward."""
from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save_file

from portraittalk.ptalk_models.animatenet import (FORMAT, AnimateNet, AnimateNetConfig, AnimateNetFormatError, ThreeWayAttention,
                                     check_compatible, load_animatenet, new_animatenet, save_animatenet,
                                     timestep_embedding, trainable_parameters)

B, LAT, IMG = 2, 8, 64
#: A small AnimateNet (not tied to a ComfyUI UNet) for the file and stage tests: 2.8 M parameters instead of 52 M.
SMALL = dict(model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1), num_heads=4,
             cond_dim=32, token_grid=4)


@pytest.fixture(scope="module")
def rsd():
    from ptalk_harness import random_sd15

    return random_sd15


@pytest.fixture(scope="module")
def unet_sd(rsd):
    """The tiny UNet's state dict (LDM layout, prefix stripped, fp32, random LeCun-normal weights)."""
    sd = rsd.build_sd15_state_dict("tiny", seed=0, dtype=torch.float32)
    return {k[len(rsd.UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(rsd.UNET_PREFIX)}


@pytest.fixture(scope="module")
def comfy_unet(rsd, unet_sd):
    """ComfyUI's own UNetModel with TINY_UNET and those weights."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**copy.deepcopy(rsd.TINY_UNET), dtype=torch.float32, device=torch.device("cpu"),
                     operations=comfy.ops.disable_weight_init)
    unet.load_state_dict(unet_sd, strict=True)
    return unet.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def net(rsd, unet_sd):
    cfg = AnimateNetConfig.from_unet_config(rsd.TINY_UNET)
    return new_animatenet(cfg, seed=0, unet_sd=unet_sd).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return {"x": torch.randn(B, 4, LAT, LAT, generator=g), "t": torch.tensor([999.0, 250.5]),
            "structure": torch.rand(B, 3, IMG, IMG, generator=g), "identity": torch.rand(B, 3, IMG, IMG, generator=g),
            "temporal": torch.randn(B, 4, LAT, LAT, generator=g), "context": torch.randn(B, 77, 768, generator=g)}


def _run(net, inp, **kw):
    args = dict(structure=inp["structure"], identity=inp["identity"], temporal=inp["temporal"])
    args.update(kw)
    with torch.no_grad():
        return net(inp["x"], inp["t"], **args)


def _comfy_features(unet, inp):
    """ComfyUI UNet's skip connections ``hs`` (each input block's output, as its ``input_block_patch`` sees it,
    just before ``hs.append``) and its middle-block output (a hook on the block's last layer: ComfyUI runs the
    layers of a TimestepEmbedSequential one by one, so a hook on the block itself never fires)."""
    feats = {"hs": [], "middle": None}

    def grab(h, _opts):
        feats["hs"].append(h.clone())
        return h

    hook = unet.middle_block[-1].register_forward_hook(lambda _m, _a, out: feats.__setitem__("middle", out.clone()))
    try:
        with torch.no_grad():
            out = unet(inp["x"], inp["t"], inp["context"],
                       transformer_options={"patches": {"input_block_patch": [grab]}})
    finally:
        hook.remove()
    return feats, out


def _randomised_zero_convs(net, seed=3):
    """A copy of ``net`` whose zero convs are random and w3 is 1 (a "trained", stage-2 branch)."""
    n = copy.deepcopy(net)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [z[0] for z in n.zero_convs] + [n.middle_block_out[0]]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * conv.weight.shape[1] ** -0.5)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)
        for _, attn in n.three_way_layers():
            attn.weights[2] = 1.0
    return n


# ---------------------------------------------------------------------------------------------------- config
def test_config_from_unet_config(rsd):
    tiny = AnimateNetConfig.from_unet_config(rsd.TINY_UNET)
    assert (tiny.channel_mult, tiny.num_res_blocks, tiny.transformer_depth, tiny.transformer_depth_middle) == (
        (1, 2), (1, 1), (1, 1), 1)
    full = AnimateNetConfig.from_unet_config(rsd.FULL_UNET, cond_dim=128)
    assert full.architecture() == AnimateNetConfig(cond_dim=128).architecture()
    assert full.cond_dim == 128 and full.token_grid == 16
    with pytest.raises(AnimateNetFormatError, match="use_linear_in_transformer"):
        AnimateNetConfig.from_unet_config({**rsd.FULL_UNET, "use_linear_in_transformer": True})
    with pytest.raises(AnimateNetFormatError, match="varies inside level 0"):
        AnimateNetConfig.from_unet_config({**rsd.FULL_UNET, "transformer_depth": [1, 0, 1, 1, 1, 1, 0, 0]})
    with pytest.raises(AnimateNetFormatError, match="unknown AnimateNetConfig fields"):
        AnimateNetConfig.from_unet_config(rsd.TINY_UNET, bogus=1)
    with pytest.raises(AnimateNetFormatError, match="one entry per level"):
        AnimateNetConfig(channel_mult=(1, 2), num_res_blocks=(1,), transformer_depth=(1, 1))


def test_check_compatible(rsd, net):
    check_compatible(net, rsd.TINY_UNET)
    with pytest.raises(AnimateNetFormatError, match=r"different UNet: channel_mult \[1, 2\] vs \[1, 2, 4, 4\]"):
        check_compatible(net, rsd.FULL_UNET)
    with pytest.raises(AnimateNetFormatError, match="SD1.5-style UNets only"):
        check_compatible(net, {**rsd.TINY_UNET, "adm_in_channels": 2816})


# ------------------------------------------------------------------------------------------- init from UNet
def test_init_from_unet_copies_encoder(net, unet_sd):
    report = copy.deepcopy(net).init_from_unet({"model.diffusion_model." + k: v for k, v in unet_sd.items()})
    # tiny: transformers in input blocks 1 and 3 and the middle block → 3 text attn2.to_k / to_v pairs skipped
    assert sorted(report["skipped"]) == sorted(f"{b}.transformer_blocks.0.attn2.{p}.weight" for b in (
        "input_blocks.1.1", "input_blocks.3.1", "middle_block.1") for p in ("to_k", "to_v"))
    own = net.state_dict()
    prefixes = ("time_embed.", "input_blocks.", "middle_block.")
    assert report["copied"] == sum(1 for k in own if k.startswith(prefixes)) - len(report["new"])
    assert all(k.endswith("weights") or "_structure." in k or "_identity." in k or "_temporal." in k
               for k in report["new"])
    for k in ("time_embed.0.weight", "input_blocks.0.0.weight", "input_blocks.3.0.skip_connection.weight",
              "input_blocks.2.0.op.weight", "middle_block.1.transformer_blocks.0.attn2.to_q.weight",
              "middle_block.1.transformer_blocks.0.attn2.to_out.0.bias", "middle_block.2.out_layers.3.weight"):
        assert torch.equal(own[k], unet_sd[k]), k


def test_init_from_unet_wrong_architecture(rsd, unet_sd):
    with torch.device("meta"):  # shapes only: the checks run before anything is copied
        full = AnimateNet(AnimateNetConfig.from_unet_config(rsd.FULL_UNET))
    with pytest.raises(AnimateNetFormatError, match="does not fit this AnimateNet .* branch tensors missing"):
        full.init_from_unet(unet_sd)
    with torch.device("meta"):
        wide = AnimateNet(AnimateNetConfig.from_unet_config({**rsd.TINY_UNET, "model_channels": 256}))
    with pytest.raises(AnimateNetFormatError, match="wrong shapes"):
        wide.init_from_unet(unet_sd)
    deeper = dict(unet_sd, **{"input_blocks.4.0.in_layers.0.weight": torch.ones(640)})
    with pytest.raises(AnimateNetFormatError, match="no place in the branch"):
        AnimateNet(AnimateNetConfig.from_unet_config(rsd.TINY_UNET)).init_from_unet(deeper)
    with pytest.raises(AnimateNetFormatError, match="no UNet tensors"):
        full.init_from_unet({"image_proj.norm.weight": torch.ones(768)})


# ------------------------------------------------------------------------------ the same maths as ComfyUI's
def test_timestep_embedding_and_time_embed_match_comfy(comfy_unet, net, inputs):
    from comfy.ldm.modules.diffusionmodules.util import timestep_embedding as comfy_te

    for dim in (320, 7):
        assert torch.equal(timestep_embedding(inputs["t"], dim), comfy_te(inputs["t"], dim))
    with torch.no_grad():
        e = timestep_embedding(inputs["t"], 320)
        assert torch.allclose(net.time_embed(e), comfy_unet.time_embed(e), atol=1e-6)


def test_blocks_match_comfy(comfy_unet, net, inputs):
    """ResBlocks (same width and widening), Downsample, and a SpatialTransformer with attn2 silenced in both
    (to_out zero: attn2 is the one part that differs by design) compute what ComfyUI's blocks compute."""
    from comfy.ldm.modules.diffusionmodules.util import timestep_embedding as comfy_te

    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        emb = comfy_unet.time_embed(comfy_te(inputs["t"], 320))
        h320 = torch.randn(B, 320, LAT, LAT, generator=g)
        h640 = torch.randn(B, 640, LAT // 2, LAT // 2, generator=g)
        for i, h in ((1, h320), (3, h320[:, :, ::2, ::2].contiguous())):  # 320→320 and 320→640 (skip conv)
            ours, theirs = net.input_blocks[i][0](h, emb), comfy_unet.input_blocks[i][0](h, emb)
            assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), i
        assert torch.equal(net.input_blocks[2][0](h320), comfy_unet.input_blocks[2][0](h320))
        assert torch.allclose(net.middle_block[2](h640, emb), comfy_unet.middle_block[2](h640, emb), atol=1e-5)

        st_ours, st_theirs = copy.deepcopy(net.middle_block[1]), copy.deepcopy(comfy_unet.middle_block[1])
        for st in (st_ours, st_theirs):
            st.transformer_blocks[0].attn2.to_out[0].weight.zero_()
            st.transformer_blocks[0].attn2.to_out[0].bias.zero_()
        tokens = net.encode_conditions(inputs["structure"], inputs["identity"], inputs["temporal"])
        for scale in (1.0, 1e-3):  # small activations: the GroupNorm eps (1e-6 here, 1e-5 in ResBlocks) shows
            h = h640 * scale
            ours = st_ours(h, tokens)
            theirs = st_theirs(h, context=inputs["context"], transformer_options={})
            assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), scale
            assert not torch.allclose(ours, h, atol=1e-2)  # the transformer did something
            assert torch.allclose(net.middle_block[0](h, emb), comfy_unet.middle_block[0](h, emb), atol=1e-4), scale


def test_three_way_attention_is_eq2(net, inputs):
    """Eq. 2 against ComfyUI's CrossAttention: the sum of w_k × (single-condition cross-attention with our to_q,
    to_k_<c>, to_v_<c>) through our to_out; without temporal tokens the w3 term is absent."""
    import comfy.ops
    from comfy.ldm.modules.attention import CrossAttention

    attn = copy.deepcopy(net.middle_block[1].transformer_blocks[0].attn2)
    assert isinstance(attn, ThreeWayAttention)
    with torch.no_grad():
        attn.weights.copy_(torch.tensor([0.7, -1.3, 2.0]))
        g = torch.Generator().manual_seed(7)
        x = torch.randn(B, 16, 640, generator=g)
        tokens = net.encode_conditions(inputs["structure"], inputs["identity"], inputs["temporal"])
        terms = []
        for cond in ("structure", "identity", "temporal"):
            ca = CrossAttention(640, context_dim=256, heads=8, dim_head=80, operations=comfy.ops.disable_weight_init)
            ca.to_q.weight.copy_(attn.to_q.weight)
            ca.to_k.weight.copy_(getattr(attn, f"to_k_{cond}").weight)
            ca.to_v.weight.copy_(getattr(attn, f"to_v_{cond}").weight)
            ca.to_out[0].weight.copy_(attn.to_out[0].weight)
            ca.to_out[0].bias.zero_()
            terms.append(ca(x, context=tokens[cond]))
        bias = attn.to_out[0].bias
        want3 = 0.7 * terms[0] - 1.3 * terms[1] + 2.0 * terms[2] + bias
        want2 = 0.7 * terms[0] - 1.3 * terms[1] + bias
        assert torch.allclose(attn(x, tokens), want3, atol=1e-4)
        assert torch.allclose(attn(x, {**tokens, "temporal": None}), want2, atol=1e-4)


def test_full_encoder_path_matches_comfy_unet(comfy_unet, net, inputs):
    """With attn2 silenced in both networks and identity "zero" convs, the branch's outputs are the ComfyUI UNet's
    own skip connections ``hs`` and middle output: time embedding, every input block and the middle block."""
    ours, theirs = copy.deepcopy(net), copy.deepcopy(comfy_unet)
    with torch.no_grad():
        for model in (ours, theirs):
            for name, m in model.named_modules():
                if name.endswith("attn2"):
                    m.to_out[0].weight.zero_()
                    m.to_out[0].bias.zero_()
        for conv in [z[0] for z in ours.zero_convs] + [ours.middle_block_out[0]]:
            c = conv.weight.shape[0]
            conv.weight.copy_(torch.eye(c).reshape(c, c, 1, 1))
    feats, _ = _comfy_features(theirs, inputs)
    out = _run(ours, inputs)
    assert len(out["output"]) == len(feats["hs"]) == 4
    for i, (a, b) in enumerate(zip(out["output"], feats["hs"])):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), i
    assert torch.allclose(out["middle"][0], feats["middle"], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------- control format
def _control_shapes(net: AnimateNet, batch: int, latent_h: int, latent_w: int) -> dict[str, list[tuple]]:
    """Shapes of ``net.forward``'s outputs for a ``[batch, 4, latent_h, latent_w]`` latent, from the net's
    ``input_block_channels`` / ``input_block_strides``."""
    def size(n, s):
        for _ in range(int(math.log2(s))):
            n = (n + 1) // 2  # stride-2 conv, padding 1
        return n
    out = [(batch, c, size(latent_h, s), size(latent_w, s))
           for c, s in zip(net.input_block_channels, net.input_block_strides)]
    return {"output": out, "middle": [out[-1]]}


def test_control_shapes_match_comfy_unet(comfy_unet, net, inputs):
    feats, _ = _comfy_features(comfy_unet, inputs)
    out = _run(net, inputs)
    assert set(out) == {"output", "middle"}
    assert [tuple(t.shape) for t in out["output"]] == [tuple(h.shape) for h in feats["hs"]]
    assert [tuple(t.shape) for t in out["middle"]] == [tuple(feats["middle"].shape)]
    assert _control_shapes(net, B, LAT, LAT) == {"output": [tuple(h.shape) for h in feats["hs"]],
                                                 "middle": [tuple(feats["middle"].shape)]}
    assert _control_shapes(net, 1, 9, 7)["output"][-1] == (1, 640, 5, 4)


def test_untrained_branch_is_exact_zero_and_leaves_unet_unchanged(comfy_unet, net, inputs):
    out = _run(net, inputs)
    for t in out["output"] + out["middle"]:
        assert t.dtype == torch.float32 and torch.count_nonzero(t) == 0
    with torch.no_grad():
        base = comfy_unet(inputs["x"], inputs["t"], inputs["context"], transformer_options={})
        ctrl = comfy_unet(inputs["x"], inputs["t"], inputs["context"], control=out, transformer_options={})
    assert torch.equal(base, ctrl)


def test_trained_control_feeds_comfy_unet(comfy_unet, net, inputs, caplog):
    """ComfyUI's UNet forward takes the residuals (popped from the end of each list) without a shape warning,
    and they change its output."""
    out = _run(_randomised_zero_convs(net), inputs)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        base = comfy_unet(inputs["x"], inputs["t"], inputs["context"], transformer_options={})
        ctrl = comfy_unet(inputs["x"], inputs["t"], inputs["context"],
                          control={k: list(v) for k, v in out.items()}, transformer_options={})
    assert "could not be applied" not in caplog.text
    assert (ctrl - base).abs().mean() > 1e-3


# ------------------------------------------------------------------------------------------ the conditions
def test_each_condition_changes_the_output(net, inputs):
    trained = _randomised_zero_convs(net)
    base = _run(trained, inputs)

    def differs(o):
        return not torch.allclose(o["middle"][0], base["middle"][0], atol=1e-5)

    g = torch.Generator().manual_seed(11)
    assert differs(_run(trained, inputs, structure=torch.rand(B, 3, IMG, IMG, generator=g)))
    assert differs(_run(trained, inputs, identity=torch.rand(B, 3, IMG, IMG, generator=g)))
    assert differs(_run(trained, inputs, temporal=torch.randn(B, 4, LAT, LAT, generator=g)))
    no_t = _run(trained, inputs, temporal=None)
    assert differs(no_t)
    # conv_in (input block 0) sees only x: its residual does not depend on the conditions
    assert torch.equal(no_t["output"][0], base["output"][0])

    # temporal=None skips the w3 term entirely: w3 and the temporal K/V are never touched
    broken = copy.deepcopy(trained)
    with torch.no_grad():
        for _, attn in broken.three_way_layers():
            attn.weights[2] = float("nan")
            attn.to_k_temporal.weight.fill_(float("nan"))
    skipped = _run(broken, inputs, temporal=None)
    assert all(torch.equal(a, b) for a, b in zip(skipped["output"] + skipped["middle"], no_t["output"] + no_t["middle"]))
    assert torch.isnan(_run(broken, inputs)["middle"][0]).any()

    # precomputed tokens give the same result; a batch-1 token set is broadcast
    tokens = trained.encode_conditions(inputs["structure"], inputs["identity"], inputs["temporal"])
    assert set(tokens) == {"structure", "identity", "temporal"}
    assert all(tuple(t.shape) == (B, 256, 256) for t in tokens.values())
    with torch.no_grad():
        via_tokens = trained(inputs["x"], inputs["t"], tokens=tokens)
        one = {k: v[:1] for k, v in tokens.items()}
        bcast = trained(inputs["x"], inputs["t"], tokens=one)
        ref = trained(inputs["x"], inputs["t"], tokens={k: v[:1].expand(B, -1, -1) for k, v in tokens.items()})
    assert torch.allclose(via_tokens["middle"][0], base["middle"][0], atol=1e-6)
    assert torch.equal(bcast["middle"][0], ref["middle"][0])


def test_input_errors(net, inputs):
    with pytest.raises(AnimateNetFormatError, match="ComfyUI IMAGE"):
        _run(net, inputs, structure=inputs["structure"].movedim(1, -1))
    with pytest.raises(AnimateNetFormatError, match="not both"):
        net(inputs["x"], inputs["t"], inputs["structure"], tokens={})
    with pytest.raises(AnimateNetFormatError, match="both a structure"):
        _run(net, inputs, identity=None)
    with pytest.raises(AnimateNetFormatError, match=r"latent, got \(2, 3, 8, 8\)"):
        _run(net, {**inputs, "x": inputs["x"][:, :3]})
    with pytest.raises(AnimateNetFormatError, match="timesteps has 3 entries"):
        _run(net, {**inputs, "t": torch.zeros(3)})
    with torch.no_grad():
        tokens = net.encode_conditions(inputs["structure"], inputs["identity"])
    with pytest.raises(AnimateNetFormatError, match="batch 2, the latent 3"):
        net(torch.zeros(3, 4, LAT, LAT), 10.0, tokens=tokens)


# -------------------------------------------------------------------------------------------------- training
def test_trainable_parameters_stages(net, inputs):
    n = copy.deepcopy(net).train()
    p1 = trainable_parameters(n, 1)
    names1 = {name for name, p in n.named_parameters() if any(p is q for q in p1)}
    temporal = {name for name, _ in n.named_parameters()
                if name.startswith("temporal_encoder.") or "_temporal." in name}
    assert temporal and names1 == {name for name, _ in n.named_parameters()} - temporal
    assert all(not p.requires_grad for name, p in n.named_parameters() if name in temporal)
    out = n(inputs["x"], inputs["t"], inputs["structure"], inputs["identity"], None)
    (sum(o.sum() for o in out["output"]) + out["middle"][0].sum()).backward()
    w = n.middle_block[1].transformer_blocks[0].attn2.weights
    assert w.grad is not None and w.grad[2] == 0  # w3 is untouched in stage 1
    assert n.structure_encoder.net[0].weight.grad is not None  # the gradient reaches the encoders
    p2 = trainable_parameters(n, 2)
    assert len(p2) == len(list(n.parameters())) and all(p.requires_grad for p in p2)
    with pytest.raises(AnimateNetFormatError, match="stage must be 1 or 2"):
        trainable_parameters(n, 3)


def test_without_temporal():
    n = new_animatenet(AnimateNetConfig(**SMALL, use_temporal=False), seed=1)
    assert not any("temporal" in k for k in n.state_dict())
    x, s = torch.zeros(1, 4, LAT, LAT), torch.rand(1, 3, IMG, IMG)
    with torch.no_grad():
        out = n(x, 500.0, s, s)
    assert len(out["output"]) == 4 and tuple(out["middle"][0].shape) == (1, 128, 4, 4)
    with pytest.raises(AnimateNetFormatError, match="no temporal attention"):
        n(x, 500.0, s, s, torch.zeros(1, 4, LAT, LAT))
    with pytest.raises(AnimateNetFormatError, match="no temporal attention"):
        trainable_parameters(n, 2)
    assert len(trainable_parameters(n, 1)) == len(list(n.parameters()))


# ------------------------------------------------------------------------------------------------------ files
def test_save_load_roundtrip(inputs, tmp_path):
    trained = _randomised_zero_convs(new_animatenet(AnimateNetConfig(**SMALL), seed=2))
    path = tmp_path / "animatenet_tiny.safetensors"
    save_animatenet(trained, path, metadata={"steps": 12})
    loaded = load_animatenet(path)
    assert loaded.config == trained.config and loaded.source == path.name
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    a, b = trained.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = _run(trained, inputs), _run(loaded, inputs)
    assert all(torch.equal(x, y) for x, y in zip(oa["output"] + oa["middle"], ob["output"] + ob["middle"]))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT and meta["steps"] == "12" and json.loads(meta["config"])["channel_mult"] == [1, 2]


def test_load_errors(tmp_path):
    from portraittalk.ptalk_models.identitynet import IdentityNetConfig, new_identitynet, save_identitynet

    net = new_animatenet(AnimateNetConfig(**SMALL), seed=2)
    good = tmp_path / "good.safetensors"
    save_animatenet(net, good)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(asdict(net.config))}

    def expect(name, match):
        with pytest.raises(AnimateNetFormatError, match=match):
            load_animatenet(tmp_path / name)

    (tmp_path / "truncated.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    expect("truncated.safetensors", "truncated or not a valid safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    expect("garbage.safetensors", "truncated or not a valid safetensors")
    expect("absent.safetensors", "does not exist")

    save_file({"input_hint_block.0.weight": torch.zeros(16, 3, 3, 3), "zero_convs.0.0.weight": torch.zeros(320, 320, 1, 1),
               "input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, tmp_path / "control_sd15_canny.safetensors")
    expect("control_sd15_canny.safetensors", "core ControlNet .* training-free mode with the core Load ControlNet")
    save_file({"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)}, tmp_path / "cldm.safetensors")
    expect("cldm.safetensors", "core ControlNet")
    save_identitynet(new_identitynet(IdentityNetConfig(id_dim=128, hidden=64, layer_dims=[320])),
                     tmp_path / "identitynet.safetensors")
    expect("identitynet.safetensors", "IdentityNet / IP-Adapter .* IdentityNet Loader")

    save_file(sd, tmp_path / "nometa.safetensors")
    expect("nometa.safetensors", "not an AnimateNet file .*metadata format None")
    save_file(sd, tmp_path / "v2.safetensors", metadata={**meta, "format": "portraittalk-animatenet/2"})
    expect("v2.safetensors", "format 'portraittalk-animatenet/2'.*update")
    save_file(sd, tmp_path / "badcfg.safetensors", metadata={**meta, "config": "{not json"})
    expect("badcfg.safetensors", "unreadable AnimateNet config")
    save_file({k: v for k, v in sd.items() if k != "middle_block_out.0.weight"}, tmp_path / "missing.safetensors",
              metadata=meta)
    expect("missing.safetensors", "1 weights missing .*middle_block_out.0.weight")
    other = json.dumps({**json.loads(meta["config"]), "cond_dim": 16})
    save_file(sd, tmp_path / "shapes.safetensors", metadata={**meta, "config": other})
    expect("shapes.safetensors", "wrong shapes for its config")


def test_half_precision_branch(inputs):
    """A bf16 branch (GroupNorms computed in fp32) runs on fp32 or bf16 latents and returns residuals in the
    latent's dtype, close to the fp32 branch."""
    ref_net = _randomised_zero_convs(new_animatenet(AnimateNetConfig(**SMALL), seed=4).eval())
    half = copy.deepcopy(ref_net).to(torch.bfloat16)
    ref = _run(ref_net, inputs)["middle"][0]
    assert _run(half, inputs)["middle"][0].dtype == torch.float32
    out = _run(half, {**inputs, "x": inputs["x"].bfloat16()})["middle"][0]
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_managed_by_comfy_model_patcher(inputs):
    """ComfyUI's ModelPatcher can manage the branch: it keeps its own ``device`` attribute on the module (so the
    net must not define a read-only ``device``) and loads it through ``comfy.model_management``."""
    import comfy.model_management as mm
    import comfy.model_patcher

    n = new_animatenet(AnimateNetConfig(**SMALL), seed=5).eval()
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(n, load_device=cpu, offload_device=cpu)
    assert n.device == cpu and patcher.model_size() > 0
    mm.load_models_gpu([patcher], force_full_load=True)
    assert _run(n, inputs)["middle"][0].shape == (B, 128, LAT // 2, LAT // 2)
