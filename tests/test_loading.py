"""Loading foundation models from local Hugging Face directories, and the errors a user sees."""

import json
import shutil

import pytest
import torch

from uniemo.errors import UniEmoError
from uniemo.loading import load_clip, load_sd


def test_tiny_clip_and_sd_load_through_the_real_loading_code(tiny_models):
    clip_dir, sd_dir = tiny_models
    clip = load_clip(clip_dir)
    ids = clip.tokenizer(["a cake in a cemetery"], return_tensors="pt").input_ids
    pixels = clip.image_processor(images=[torch.zeros(3, 64, 64).numpy().transpose(1, 2, 0)],
                                  return_tensors="pt", do_rescale=False).pixel_values
    with torch.no_grad():
        text = clip.model.get_text_features(input_ids=ids).pooler_output  # transformers 5: projected
        image = clip.model.get_image_features(pixel_values=pixels).pooler_output
    assert text.shape[-1] == image.shape[-1] == clip.model.config.projection_dim

    pipe = load_sd(sd_dir)
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim
    images = pipe("a cake", num_inference_steps=2, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and images.min() >= 0 and images.max() <= 1


def test_the_sd_text_encoder_is_the_clip_text_tower(tiny_models):
    clip_dir, sd_dir = tiny_models
    clip, pipe = load_clip(clip_dir), load_sd(sd_dir)
    ids = clip.tokenizer(["a bench"], return_tensors="pt").input_ids
    with torch.no_grad():
        a = clip.model.text_model(input_ids=ids).last_hidden_state
        b = pipe.text_encoder(input_ids=ids).last_hidden_state
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("loader, message", [(load_clip, "CLIP"), (load_sd, "Stable Diffusion")])
def test_missing_directory_names_path_and_expectation(tmp_path, loader, message):
    with pytest.raises(UniEmoError, match=f"{tmp_path / 'nope'} does not exist: expected .*{message}"):
        loader(tmp_path / "nope")


def test_sd_dir_given_as_clip_dir_is_refused(tiny_models):
    _, sd_dir = tiny_models
    with pytest.raises(UniEmoError, match="no config.json in .*expected a Hugging Face CLIP directory"):
        load_clip(sd_dir)


def test_clip_dir_given_as_sd_dir_is_refused(tiny_models):
    clip_dir, _ = tiny_models
    with pytest.raises(UniEmoError, match="no model_index.json in .*expected a diffusers Stable Diffusion"):
        load_sd(clip_dir)


def test_non_clip_config_is_refused(tmp_path, tiny_models):
    clip_dir, _ = tiny_models
    bad = tmp_path / "clip"
    shutil.copytree(clip_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(UniEmoError, match="model_type 'bert'"):
        load_clip(bad)


def test_corrupt_clip_weights_are_a_one_line_error(tmp_path, tiny_models):
    clip_dir, _ = tiny_models
    bad = tmp_path / "clip"
    shutil.copytree(clip_dir, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UniEmoError, match="could not load CLIP") as info:
        load_clip(bad)
    assert "\n" not in str(info.value)


def test_corrupt_unet_weights_are_a_one_line_error(tmp_path, tiny_models):
    _, sd_dir = tiny_models
    bad = tmp_path / "sd"
    shutil.copytree(sd_dir, bad)
    next((bad / "unet").glob("*.safetensors")).write_bytes(b"\0" * 10)
    with pytest.raises(UniEmoError, match="could not load Stable Diffusion") as info:
        load_sd(bad)
    assert "\n" not in str(info.value)
