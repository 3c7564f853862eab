"""Text prompts -> boxes -> SAM masks -> trimaps, with a tiny random OWLv2 and a tiny random SAM built from
configs (a CLIP tokenizer from a vocabulary written here: nothing is downloaded), and `mematte predict --text`.

Random weights find arbitrary boxes, so the assertions are about what the pipeline guarantees: boxes in photo
pixels, masks inside their boxes, a three-valued trimap with its band around the mask, thresholds that decide
what matches, and one clear line for what cannot be loaded.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from mematte_hf.cli import main
from mematte_hf.errors import CheckpointError, HubError, InputError
from mematte_hf.segmentation import ClickSegmenter, MissingBackendError
from mematte_hf.text_prompts import NothingFoundError, TextDetector, TextSegmenter, load_text_model, split_phrases
from mematte_hf.trimap import BACKGROUND, FOREGROUND, UNKNOWN, mask_to_trimap
from tests.space_utils import disc_photo, save_tiny_mematte, save_tiny_sam
from tests.utils import randomize_weights

HEIGHT, WIDTH = 180, 240


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_tiny_owlv2(folder: Path, seed: int = 0) -> Path:
    """A tiny random OWLv2 detector with a character-level CLIP tokenizer, saved like a Hub checkpoint."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    folder.mkdir(parents=True, exist_ok=True)
    characters = list(string.ascii_lowercase + string.digits + ".,;!?'-")
    vocabulary = {token: index for index, token in enumerate(characters + [c + "</w>" for c in characters])}
    # OWL treats a query whose first token id is 0 as padding: the special tokens go last.
    vocabulary |= {"<|startoftext|>": len(vocabulary), "<|endoftext|>": len(vocabulary) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocabulary))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    start, end = vocabulary["<|startoftext|>"], vocabulary["<|endoftext|>"]
    text = {"vocab_size": len(vocabulary), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 24, "bos_token_id": start, "eos_token_id": end,
            "pad_token_id": end}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 64, "patch_size": 16}  # fmt: skip
    torch.manual_seed(seed)
    config = Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
    randomize_weights(Owlv2ForObjectDetection(config), seed).eval().save_pretrained(folder)
    Owlv2Processor(Owlv2ImageProcessorPil(size={"height": 64, "width": 64}), tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("text_models")
    return {"owl": save_tiny_owlv2(root / "owl"), "sam": save_tiny_sam(root / "sam"),
            "mematte": save_tiny_mematte(root / "mematte")}  # fmt: skip


@pytest.fixture(scope="module")
def detector(folders) -> TextDetector:
    return load_text_model(folders["owl"], device="cpu")


def best_score(detector: TextDetector, image: np.ndarray, text: str) -> float:
    found = detector.detect(image, text, threshold=0.0)
    return float(found.scores.max()) if len(found) else 0.0


def test_phrases_split_on_punctuation_and_empty_text_is_refused():
    assert split_phrases("The Dog, the ball.  hair;") == ["the dog", "the ball", "hair"]
    with pytest.raises(InputError, match="empty"):
        split_phrases(" ,. ")


def test_detections_are_boxes_in_photo_pixels_best_first(detector):
    image = disc_photo(WIDTH, HEIGHT)
    found = detector.detect(image, "the dog, a ball", threshold=0.0)
    assert len(found) > 0 and found.boxes.shape == (len(found), 4)
    assert (np.diff(found.scores) <= 0).all(), "best first"
    x0, y0, x1, y1 = found.boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= WIDTH).all() and (y1 <= HEIGHT).all()
    assert (x1 > x0).all() and (y1 > y0).all()
    assert set(found.phrases) <= {"the dog", "a ball"}
    assert len(detector.detect(image, "the dog", threshold=1.0)) == 0, "no score reaches 1"


def test_text_prompt_makes_a_trimap_with_the_band_around_a_mask_inside_the_box(detector, folders):
    image = disc_photo(WIDTH, HEIGHT)
    sam = ClickSegmenter.from_pretrained(folders["sam"], device="cpu")
    segmenter = TextSegmenter(detector, sam)
    threshold = best_score(detector, image, "the dog") - 1e-3  # only the best box counts
    found = segmenter.predict_mask(image, "the dog", threshold=threshold)
    assert len(found.detections) == 1
    x0, y0, x1, y1 = found.detections.boxes[0]
    inside = np.zeros((HEIGHT, WIDTH), dtype=bool)
    inside[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = True
    assert found.mask.any() and not (found.mask & ~inside).any(), "the mask stays inside its box"

    band = 3
    trimap = mask_to_trimap(found.mask, band)
    assert set(np.unique(trimap).tolist()) == {BACKGROUND, UNKNOWN, FOREGROUND}
    assert not ((trimap == FOREGROUND) & ~inside).any()
    near_box = ndimage.binary_dilation(inside, iterations=band + 1)
    assert not ((trimap == UNKNOWN) & ~near_box).any(), "the unknown band hugs the mask, so the box"
    distance = np.where(found.mask, ndimage.distance_transform_edt(found.mask),
                        ndimage.distance_transform_edt(~found.mask))  # fmt: skip
    assert (distance[trimap == UNKNOWN] <= band).all()


def test_nothing_matching_is_an_error_not_a_blind_matte(detector, folders):
    image = disc_photo(WIDTH, HEIGHT)
    segmenter = TextSegmenter(detector, ClickSegmenter.from_pretrained(folders["sam"], device="cpu"))
    with pytest.raises(NothingFoundError, match=r"nothing in the photo matches 'the dog' \(no detection scored 1"):
        segmenter.predict_mask(image, "the dog", threshold=1.0)


def test_models_that_cannot_be_used_for_text_say_so_in_one_line(folders, tmp_path):
    with pytest.raises(CheckpointError, match="'sam' checkpoint, not a text-prompt model"):
        load_text_model(folders["sam"], device="cpu")
    with pytest.raises(HubError, match="mematte-tests/no-such-detector"):
        load_text_model("mematte-tests/no-such-detector", device="cpu")
    with pytest.raises(InputError, match="finds boxes only: also give a SAM model"):
        TextSegmenter.from_pretrained(folders["owl"], None, device="cpu")


def test_a_sam3_checkpoint_needs_torchvision(tmp_path):
    """Where torchvision imports, SAM 3 loads (tested on such machines); here it is refused in one line."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        pytest.skip("torchvision imports here: the SAM 3 backend loads, so the refusal cannot be shown")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam3"}))
    with pytest.raises(MissingBackendError, match=r"SAM 3 checkpoint, and transformers' SAM 3 needs torchvision"):
        load_text_model(tmp_path, device="cpu")


# ----------------------------------------------------------------------------------------------------------
# mematte predict --text


def test_predict_with_text_mattes_a_folder_and_reports_what_matched_nothing(folders, tmp_path, capsys):
    detector = load_text_model(folders["owl"], device="cpu")
    images = tmp_path / "images"
    images.mkdir()
    for index, size in enumerate([(120, 160), (150, 110), (90, 130)]):
        photo = disc_photo(size[1], size[0])
        photo[..., 2] = np.uint8(40 * index)
        Image.fromarray(photo).save(images / f"photo{index}.png")
    scores = [best_score(detector, np.asarray(Image.open(path)), "the dog") for path in sorted(images.iterdir())]
    command = ["predict", str(images), "--text", "the dog", "--text-model", str(folders["owl"]), "--sam-model",
               str(folders["sam"]), "--model", str(folders["mematte"]), "--output", str(tmp_path / "out"),
               "--device", "cpu", "--save", "alpha,rgba"]  # fmt: skip
    assert main([*command, "--text-threshold", str(min(scores) - 1e-3)]) == 0, capsys.readouterr().err
    said = capsys.readouterr().err
    assert all(f"photo{index}: --text chose" in said and "(score " in said for index in range(3))  # box and score
    outputs = sorted((tmp_path / "out").glob("*.png"))
    assert [path.name for path in outputs] == [f"photo{i}_{kind}.png" for i in range(3) for kind in ("alpha", "rgba")]
    for index, size in enumerate([(120, 160), (150, 110), (90, 130)]):
        assert Image.open(tmp_path / "out" / f"photo{index}_alpha.png").size == (size[1], size[0])

    (tmp_path / "out" / "photo1_alpha.png").unlink()  # only photo1 is redone (-n keeps the others' outputs)
    assert main([*command, "--text-threshold", "1.0", "-n"]) == 1  # and now nothing matches it
    captured = capsys.readouterr()
    assert "failed: photo1: nothing in photo1.png matches --text 'the dog'" in captured.err
    assert "0 done, 2 skipped (already done), 1 failed" in captured.out


def test_predict_with_a_text_model_that_cannot_be_loaded_prints_one_line(folders, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(disc_photo(64, 48)).save(image)
    code = main(["predict", str(image), "--text", "the dog", "--text-model", "mematte-tests/no-such-detector",
                 "--sam-model", str(folders["sam"]), "--output", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "mematte-tests/no-such-detector" in lines[0] and "Traceback" not in err
    assert main(["predict", str(image), "--text", "the dog", "--output", str(tmp_path / "out")]) == 1
    assert "--text needs --text-model" in capsys.readouterr().err


def test_phrases_keep_decimal_numbers_whole():
    assert split_phrases("a 3.5 inch floppy disk, the dog. 2.0 litre bottle") == [
        "a 3.5 inch floppy disk", "the dog", "2.0 litre bottle"]  # fmt: skip


def test_a_phrase_longer_than_the_detectors_text_positions_is_refused_by_name(detector):
    long_phrase = "the small brown dog sitting on the left"  # 39 characters: 41 tokens here, 24 positions
    with pytest.raises(InputError, match="reads at most 24"):
        detector.detect(disc_photo(WIDTH, HEIGHT), f"a ball, {long_phrase}")


def test_only_the_boxes_a_person_means_are_kept():
    from mematte_hf.text_prompts import _meant

    boxes = np.array([[10, 10, 50, 50], [12, 11, 52, 50], [100, 100, 140, 140], [200, 10, 240, 40],
                      [12, 11, 52, 50]], dtype=np.float32)  # fmt: skip
    scores = np.array([0.9, 0.8, 0.2, 0.6, 0.3])
    labels = ["dog", "dog", "dog", "dog", "ball"]
    # the repeat of the best box goes, the weak box goes (below half the best), the other good dog stays, and
    # the ball is judged against balls only
    assert _meant(boxes, scores, labels).tolist() == [True, False, False, True, True]


def save_tiny_owlvit(folder: Path, seed: int = 0) -> Path:
    """A tiny random OWL-ViT (v1), with the tokenizer of the tiny OWLv2 and a 64 px stretched input."""
    from transformers import (
        CLIPTokenizer,
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessor,
        OwlViTProcessor,
    )

    owlv2 = save_tiny_owlv2(folder / "v2", seed)
    tokenizer = CLIPTokenizer.from_pretrained(owlv2)
    text = tiny_owl_text_config(owlv2)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 64, "patch_size": 16}  # fmt: skip
    torch.manual_seed(seed)
    model = OwlViTForObjectDetection(OwlViTConfig(text_config=text, vision_config=vision, projection_dim=32))
    randomize_weights(model, seed).eval().save_pretrained(folder)
    image_processor = OwlViTImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64})
    OwlViTProcessor(image_processor, tokenizer).save_pretrained(folder)
    return folder


def tiny_owl_text_config(folder: Path) -> dict:
    """The text config the tiny OWLv2 was saved with (OWL-ViT v1 reads the same tokenizer)."""
    return json.loads((folder / "config.json").read_text())["text_config"]


def test_owl_vit_v1_boxes_are_scaled_for_its_stretched_input(tmp_path):
    """OWL-ViT v1 stretches a photo to its square input: a box is a fraction of the photo's width and height
    (OWLv2 pads instead). On a wide photo the best box must be the model's own best box times (w, h)."""
    detector = load_text_model(save_tiny_owlvit(tmp_path / "owlvit"), device="cpu")
    assert detector.model_type == "owlvit"
    image = disc_photo(WIDTH, HEIGHT)
    found = detector.detect(image, "the dog", threshold=0.0)
    inputs = detector.processor(images=image, text=[["the dog"]], return_tensors="pt")
    with torch.inference_mode():
        outputs = detector.model(**inputs)
    best = int(outputs.logits[0, :, 0].argmax())
    cx, cy, w, h = outputs.pred_boxes[0, best].tolist()
    expected = np.clip([(cx - w / 2) * WIDTH, (cy - h / 2) * HEIGHT, (cx + w / 2) * WIDTH, (cy + h / 2) * HEIGHT],
                       0, [WIDTH, HEIGHT, WIDTH, HEIGHT])  # fmt: skip
    assert np.allclose(found.boxes[0], expected, atol=1e-3), (found.boxes[0], expected)


def test_a_device_this_machine_cannot_use_is_refused_by_name(folders):
    with pytest.raises(InputError, match="'tpu'"):
        load_text_model(folders["owl"], device="tpu")
