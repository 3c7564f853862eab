"""MEMatte as a transformers model: routing, cap, batching, ViTMatte equivalence, Auto classes, dtypes."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageMatting,
    VitMatteForImageMatting,
)

from mematte_hf import MEMatteConfig, MEMatteForImageMatting
from mematte_hf.modeling_mematte import eca_kernel_size, select_global_tokens
from tests.utils import random_inputs, randomize_weights, tiny_config, tiny_model


def _run(model: MEMatteForImageMatting, pixel_values: torch.Tensor, **settings):
    with torch.no_grad():
        return model(pixel_values, **settings)


def test_output_shapes_and_routing_masks():
    model = tiny_model()
    output = _run(model, random_inputs(2, 96, 128))
    assert output.alphas.shape == (2, 1, 96, 128)
    assert 0.0 <= output.alphas.min() and output.alphas.max() <= 1.0
    assert len(output.routing_masks) == len(model.config.global_block_indices) == 2
    for mask, log_probs in zip(output.routing_masks, output.router_log_probs, strict=True):
        assert mask.dtype == torch.bool and mask.shape == (2, 6, 8)
        assert log_probs.shape == (2, 6, 8, 2)
        # index 0 = global attention: the mask is exactly logp[0] > logp[1] when the cap does not bind
        assert torch.equal(mask, log_probs[..., 0] > log_probs[..., 1])
    assert output.backbone_features.shape == (2, 32, 6, 8)


def test_eca_kernel_sizes_match_the_spec():
    assert [eca_kernel_size(c) for c in (64, 384, 768)] == [3, 5, 5]


def test_cap_keeps_top_k_tokens_by_margin_per_image():
    generator = torch.Generator().manual_seed(1)
    log_probs = torch.log_softmax(torch.randn(3, 50, 2, generator=generator) * 3, dim=-1)
    margin = log_probs[..., 0] - log_probs[..., 1]
    selected = select_global_tokens(log_probs, max_tokens=5)
    for index in range(3):
        uncapped = margin[index] > 0
        expected = uncapped.clone()
        if uncapped.sum() > 5:
            expected = torch.zeros_like(uncapped)
            expected[margin[index].topk(5).indices] = True
        assert torch.equal(selected[index], expected)
        assert selected[index].sum() <= 5


def test_cap_on_model_bounds_routed_tokens_and_is_read_at_call_time():
    model = tiny_model(seed=3)
    pixel_values = random_inputs(2, 128, 160, seed=3)
    uncapped = _run(model, pixel_values)
    counts = [mask.flatten(1).sum(1) for mask in uncapped.routing_masks]
    assert max(int(c.max()) for c in counts) > 4, "the random router must select more tokens than the cap"
    model.config.max_global_tokens = 4  # changed on a loaded model: honoured at the next call
    capped = _run(model, pixel_values)
    for mask, log_probs in zip(capped.routing_masks, capped.router_log_probs, strict=True):
        flat_mask = mask.flatten(1)
        assert (flat_mask.sum(1) <= 4).all()
        margin = (log_probs[..., 0] - log_probs[..., 1]).flatten(1)
        for index in range(2):
            chosen = margin[index][flat_mask[index]]
            rejected = margin[index][~flat_mask[index]]
            if len(chosen) and len(rejected):
                assert chosen.min() > rejected.max() or chosen.min() <= 0  # the chosen are the top-k
    assert not torch.equal(capped.alphas, uncapped.alphas)


@pytest.mark.parametrize("tile_size", [0, 64])
def test_batch_gives_the_same_result_as_each_image_alone(tile_size):
    model = tiny_model(seed=5, max_global_tokens=20, decoder_tile_size=tile_size)
    batch = random_inputs(3, 96, 128, seed=7)
    batch[1, :3] *= 3.0  # different content, so that the images select different numbers of tokens
    batch[2, 3] = 0.5
    together = _run(model, batch)
    for index in range(3):
        alone = _run(model, batch[index : index + 1])
        torch.testing.assert_close(together.alphas[index], alone.alphas[0], atol=1e-5, rtol=0)
        for mask_batch, mask_alone in zip(together.routing_masks, alone.routing_masks, strict=True):
            assert torch.equal(mask_batch[index], mask_alone[0])
    counts = torch.stack([mask.flatten(1).sum(1) for mask in together.routing_masks])
    assert len(set(counts.flatten().tolist())) > 1, "images should select different numbers of tokens"
    assert (counts <= 20).all() and (counts == 20).any(), "the cap should bind for some image"


def test_global_mode_equals_transformers_vitmatte_with_zeroed_global_relative_positions():
    config = tiny_config(decoder_tile_size=0)
    vitmatte = randomize_weights(VitMatteForImageMatting(config.to_vitmatte_config()), seed=11).eval()
    with torch.no_grad():
        for index in config.global_block_indices:
            vitmatte.backbone.encoder.layer[index].attention.rel_pos_h.zero_()
            vitmatte.backbone.encoder.layer[index].attention.rel_pos_w.zero_()
    model, report = MEMatteForImageMatting.from_vitmatte(
        vitmatte, output_loading_info=True, routing_mode="global", decoder_tile_size=0
    )
    model.eval()
    pixel_values = random_inputs(2, 96, 128, seed=2)
    with torch.no_grad():
        expected = vitmatte(pixel_values).alphas
        actual = model(pixel_values).alphas
    assert expected.std() > 1e-3, "random weights must give a non-constant matte"
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert all(mask.all() for mask in model(pixel_values).routing_masks)
    # only routers and LTRMs are new; only the global blocks' relative positions are dropped
    assert report.new and all(".router." in key or ".ltrm." in key for key in report.new)
    assert sorted(report.dropped) == sorted(
        f"backbone.encoder.layer.{i}.attention.rel_pos_{axis}" for i in config.global_block_indices for axis in "hw"
    )


def test_routing_modes_route_everything_or_nothing():
    pixel_values = random_inputs(1, 64, 96)
    model = tiny_model(seed=2)
    adaptive = _run(model, pixel_values)
    model.config.routing_mode = "light"
    light = _run(model, pixel_values)
    model.config.routing_mode = "global"
    global_ = _run(model, pixel_values)
    assert all(not mask.any() for mask in light.routing_masks)
    assert all(mask.all() for mask in global_.routing_masks)
    assert float(light.compression_ratio) == pytest.approx(0.0, abs=1e-7)
    assert float(global_.compression_ratio) == pytest.approx(1.0, abs=1e-7)
    assert 0.0 < float(adaptive.compression_ratio) < 1.0
    assert not torch.allclose(light.alphas, global_.alphas)


def test_tiled_and_untiled_decoders_both_exist_and_agree_away_from_borders():
    model = tiny_model(seed=4, decoder_tile_size=0)
    pixel_values = random_inputs(1, 192, 256, seed=4)
    whole = _run(model, pixel_values).alphas
    model.config.decoder_tile_size = 64  # honoured on a loaded model
    tiled = _run(model, pixel_values).alphas
    assert tiled.shape == whole.shape
    assert not torch.equal(tiled, whole)
    # the tiles see enough context that the interior matches the whole-image decoder closely
    torch.testing.assert_close(tiled[..., 64:-64, 64:-64], whole[..., 64:-64, 64:-64], atol=2e-2, rtol=0)


def test_training_forward_is_differentiable_through_the_gumbel_decisions():
    torch.manual_seed(0)
    model = tiny_model(seed=6).train()
    pixel_values = random_inputs(2, 64, 64, seed=6)
    output = model(pixel_values)
    loss = output.alphas.mean() + output.compression_ratio
    loss.backward()
    layer = model.backbone.encoder.layer[1]
    for name in ("router.in_proj.weight", "router.out_proj.4.weight", "ltrm.fc1.weight", "attention.qkv.weight"):
        grad = layer.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_save_and_load_round_trip_through_the_auto_classes(tmp_path):
    model = tiny_model(seed=8, max_global_tokens=7, decoder_tile_size=64)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, MEMatteConfig)
    assert (config.max_global_tokens, config.decoder_tile_size) == (7, 64)
    loaded = AutoModelForImageMatting.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MEMatteForImageMatting)
    assert isinstance(AutoModel.from_pretrained(tmp_path), MEMatteForImageMatting)
    pixel_values = random_inputs(1, 96, 96)
    torch.testing.assert_close(_run(loaded, pixel_values).alphas, _run(model, pixel_values).alphas)
    assert (tmp_path / "model.safetensors").is_file()


def test_bfloat16_forward_on_cpu_stays_close_to_float32():
    model = tiny_model(seed=9, decoder_tile_size=0)
    pixel_values = random_inputs(1, 96, 128, seed=9)
    reference = _run(model, pixel_values).alphas
    half = _run(model.to(torch.bfloat16), pixel_values.to(torch.bfloat16)).alphas
    assert half.dtype == torch.bfloat16
    assert (half.float() - reference).abs().mean() < 0.02


def test_bad_pixel_values_get_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="RGB plus trimap"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 4, 60, 64))


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="routing_mode"):
        MEMatteConfig(routing_mode="fast")
    with pytest.raises(ValueError, match="decoder_tile_size"):
        MEMatteConfig(decoder_tile_size=100)


@pytest.mark.parametrize("band_tokens", [100, 4096, None])  # 16-row chunks (68 of them), 2 chunks, all rows
def test_lean_inference_decoder_equals_the_transformers_decoder_across_row_chunks(band_tokens):
    from mematte_hf import modeling_mematte

    model = tiny_model(seed=13, decoder_tile_size=0)
    generator = torch.Generator().manual_seed(13)
    pixel_values = torch.randn(2, 4, 1088, 96, generator=generator)
    features = torch.randn(2, 32, 68, 6, generator=generator)
    with torch.no_grad():
        expected = model.decoder(features, pixel_values)  # transformers' module, batch norm in eval mode
        folded = modeling_mematte.FoldedDecoder.fold(model.decoder)
        actual = modeling_mematte.lean_detail_capture(folded, features, pixel_values, band_tokens)
    assert expected.std() > 1e-3
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_window_blocks_in_row_bands_equal_the_whole_grid():
    from mematte_hf.modeling_mematte import ExecutionPlan

    model = tiny_model(seed=14, decoder_tile_size=0)
    pixel_values = random_inputs(1, 480, 224, seed=14)  # 30 token rows: several 14-row bands
    whole = _run(model, pixel_values, execution=ExecutionPlan(band_tokens=None, tile_batch=1))
    banded = _run(model, pixel_values, execution=ExecutionPlan(band_tokens=14 * 14, tile_batch=1))
    torch.testing.assert_close(banded.alphas, whole.alphas, atol=1e-5, rtol=0)
    torch.testing.assert_close(banded.backbone_features, whole.backbone_features, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_gradient_forward_after_an_inference_forward(mode):
    # A model built from its config has run no forward yet: what its first forward caches is made under
    # inference mode here, and must still serve the forward with gradients that follows (predict, then fine-tune).
    model = randomize_weights(MEMatteForImageMatting(tiny_config()), seed=81).eval()
    pixel_values = random_inputs(1, 96, 128, seed=81)
    with torch.inference_mode():
        model(pixel_values)
    model.train(mode == "train")
    labels = torch.rand(1, 1, 96, 128, generator=torch.Generator().manual_seed(81))
    output = model(pixel_values, labels=labels, decoder_tile_size=0)
    output.loss.backward()
    gradient = model.backbone.encoder.layer[0].attention.rel_pos_h.grad
    assert gradient is not None and gradient.abs().sum() > 0
