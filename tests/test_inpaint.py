"""Inpainting and outpainting in the worker: the same pixels plain diffusers' StableDiffusionInpaintPipeline draws
(4-channel UNet blending latents, 9-channel inpainting UNet), through the worker's generate path, with A1111's
preparation around it (mask blur, "Only masked" with its padding, "fill", the paste back)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from PIL import Image

from ponybot import keys
from ponybot.parameters import parse_parameters
from ponybot.schemas import (
    GenerationRequest,
    InpaintArea,
    InpaintSpec,
    Job,
    JobKind,
    Margins,
    MaskedContent,
    SourceImage,
    UploadedImage,
)
from ponybot.settings import ModelSettings, Settings
from worker.inpaint import blur_mask, canvas, crop_region, expand_region, fill, prepare
from worker.png import encode_png, read_parameters
from worker.schedulers import CARD_DDIM
from worker.tiny import TINY_INPAINT_SOURCE, TINY_REVISION

PROMPT, SEED, STEPS = "pinkie pie", 21, 5


def gradient(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height) + 64], -1)
    return Image.fromarray(array.astype(np.uint8))


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(("box", "padding", "size", "region", "expanded"), [
    # a 40x20 box, 8 px padding -> 56x36, widened to square by growing the height evenly
    ((100, 100, 140, 120), 8, (256, 256), (92, 92, 148, 128), (92, 82, 148, 138)),
    # at the top-left corner: the padding stops at the edge, the widening slides back inside
    ((0, 0, 20, 60), 16, (256, 256), (0, 0, 36, 76), (0, 0, 76, 76)),
    # a wide job size (2:1): a square box grows sideways
    ((100, 100, 132, 132), 0, (256, 256), (100, 100, 132, 132), (84, 100, 148, 132)),
])
def test_only_masked_region_is_the_box_plus_padding_at_the_jobs_aspect(
        box: tuple[int, int, int, int], padding: int, size: tuple[int, int], region: tuple[int, int, int, int],
        expanded: tuple[int, int, int, int]) -> None:
    mask = box_mask(size, box)
    assert crop_region(mask, padding) == region
    width, height = (512, 256) if box == (100, 100, 132, 132) else (256, 256)
    assert expand_region(region, width, height, size) == expanded
    assert crop_region(Image.new("L", size, 0), padding) is None


def test_mask_blur_is_a_normalised_gaussian_that_keeps_far_pixels() -> None:
    mask = box_mask((64, 64), (16, 16, 48, 48))
    blurred = np.asarray(blur_mask(mask, 4), dtype=np.int32)
    assert blurred[32, 32] == 255 and blurred[0, 0] == 0  # deep inside and far outside: unchanged
    assert 100 < blurred[32, 16] < 160  # the edge: about half
    assert (blurred[32, :] == blurred[32, ::-1]).all()  # symmetric across the box
    assert np.asarray(blur_mask(mask, 0)).tolist() == np.asarray(mask).tolist()


def test_fill_paints_the_masked_area_with_the_kept_colours() -> None:
    picture, mask = canvas(Image.new("RGB", (64, 64), (200, 40, 10)), Margins(left=32, right=32))
    assert picture.size == (128, 64) and mask.getpixel((10, 10)) == 255 and mask.getpixel((64, 32)) == 0
    filled = np.asarray(fill(picture, mask), dtype=np.int32)
    assert picture.getpixel((5, 30)) == (0, 0, 0)  # the new area starts black
    assert abs(filled[30, 5] - np.array([200, 40, 10])).max() <= 4  # filled with the kept red (premultiplied)


def plain_pipeline(model_cache: Path, channels: int) -> Any:
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel

    plain = StableDiffusionInpaintPipeline.from_pretrained(model_cache / f"tiny-{TINY_REVISION}", safety_checker=None,
                                                           requires_safety_checker=False)
    if channels == 9:
        plain.unet = UNet2DConditionModel.from_pretrained(model_cache / f"{TINY_INPAINT_SOURCE}-{TINY_REVISION}",
                                                          subfolder="unet")
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config, **CARD_DDIM)
    plain.set_progress_bar_config(disable=True)
    return plain


@pytest.fixture(scope="module")
def inpaint_generators(model_cache: Path) -> dict[int, Any]:
    """The tiny model with its own UNet (4 channels) and with its inpainting twin's (9 channels)."""
    from worker.generate import Generator
    from worker.loading import load_inpaint_unet, load_model, resolve_device

    generators = {}
    for channels in (4, 9):
        model = load_model("tiny", ModelSettings(cache_dir=model_cache), resolve_device("cpu"))
        generators[channels] = Generator(model)
        if channels == 9:
            generators[channels].inpaint_unet = load_inpaint_unet(TINY_INPAINT_SOURCE, model_cache, model)
    return generators


CASES = [  # (job kind, inpaint area, padding, mask blur, strength)
    (JobKind.INPAINT, InpaintArea.WHOLE, 32, 4, 0.75),
    (JobKind.INPAINT, InpaintArea.ONLY_MASKED, 24, 6, 0.9),
    (JobKind.INPAINT, InpaintArea.ONLY_MASKED, 0, 0, 1.0),
    (JobKind.OUTPAINT, InpaintArea.WHOLE, 32, 4, 0.8),
]


@pytest.mark.parametrize("channels", [4, 9])
@pytest.mark.parametrize(("kind", "area", "padding", "blur", "strength"), CASES)
def test_worker_inpaints_as_plain_diffusers(
        channels: int, kind: JobKind, area: InpaintArea, padding: int, blur: int, strength: float,
        settings: Settings, conn: redis.Redis, inpaint_generators: dict[int, Any], classifier: Any,
        model_cache: Path) -> None:
    from worker.runtime import WorkerRuntime

    runtime = WorkerRuntime(settings, conn, inpaint_generators[channels], "inpaint-worker", classifier)
    request = GenerationRequest(prompt=PROMPT, steps=STEPS, width=256, height=256, clip_skip=1, seed=SEED)
    original = gradient(320, 256)
    mask = box_mask(original.size, (140, 90, 200, 150))
    if kind is JobKind.OUTPAINT:
        source = gradient(256, 256)
        conn.set("test:source", encode_png(source, "x"), ex=600)
        spec = InpaintSpec(mask_blur=blur, content=MaskedContent.FILL)
        job = Job.create(request, kind=kind, inpaint=spec, margins=Margins(left=64, right=64),
                         source=SourceImage(job_id="earlier", index=0, seed=1, key="test:source"))
        start, start_mask = canvas(source, Margins(left=64, right=64))
        width, height = 384, 256
    else:
        spec = InpaintSpec(mask_key="test:mask", area=area, padding=padding, mask_blur=blur)
        upload = UploadedImage(key="test:upload", filename="a.png", width=320, height=256, strength=strength)
        job = Job.create(request, kind=kind, inpaint=spec, upload=upload)
        conn.set("test:upload", png(original), ex=600)
        conn.set("test:mask", png(mask), ex=600)
        start, start_mask, width, height = original, mask, 256, 256
    assert job.strength == strength

    [event] = runtime.run_batch([job])
    assert event.kind == "done", event.error_message
    data = conn.get(keys.image(job.id, 0))
    assert isinstance(data, bytes)
    ours = Image.open(io.BytesIO(data)).convert("RGB")

    prepared = prepare(start, start_mask, width, height, spec)
    assert prepared is not None
    drawn = plain_pipeline(model_cache, channels)(
        PROMPT, image=prepared.image, mask_image=prepared.mask, strength=strength, width=width, height=height,
        num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    expected = prepared.finish(drawn)
    assert ours.size == expected.size == ((384, 256) if kind is JobKind.OUTPAINT else
                                          (320, 256) if area is InpaintArea.ONLY_MASKED else (256, 256))
    difference = np.abs(np.asarray(ours, dtype=np.int32) - np.asarray(expected, dtype=np.int32))
    assert difference.max() <= 1, f"max difference {difference.max()}/255"
    if area is InpaintArea.ONLY_MASKED:  # outside the blurred mask the original is kept exactly
        far = np.asarray(ours)[:, :100]
        assert (far == np.asarray(original)[:, :100]).all()
    assert not np.array_equal(np.asarray(ours)[120, 170], np.asarray(original)[120, 170] if kind is
                              JobKind.INPAINT else np.asarray(start)[120, 10])

    parameters = parse_parameters(read_parameters(data) or "")
    assert parameters["Denoising strength"] == str(strength)  # as A1111 writes a float
    assert parameters["Mask blur"] == str(blur)
    if area is InpaintArea.ONLY_MASKED:
        assert (parameters["Inpaint area"], parameters["Masked area padding"]) == ("Only masked", str(padding))
    else:
        assert "Inpaint area" not in parameters
    assert parameters["Size"] == "{}x{}".format(*ours.size)


def test_a_black_mask_fails_with_a_clear_reason(settings: Settings, conn: redis.Redis, runtime: Any) -> None:
    request = GenerationRequest(prompt=PROMPT, steps=2, width=256, height=256)
    job = Job.create(request, kind=JobKind.INPAINT, inpaint=InpaintSpec(mask_key="test:mask"),
                     upload=UploadedImage(key="test:upload", filename="a.png", width=64, height=64, strength=0.5))
    conn.set("test:upload", png(gradient(64, 64)), ex=600)
    conn.set("test:mask", png(Image.new("L", (64, 64), 0)), ex=600)
    [event] = runtime.run_batch([job])
    assert (event.kind, event.error_code) == ("failed", "empty_mask")


def test_an_inpaint_source_without_a_9_channel_unet_is_refused_by_name(model_cache: Path,
                                                                       inpaint_generators: dict[int, Any]) -> None:
    from ponybot.errors import ModelLoadError
    from worker.loading import load_inpaint_unet

    with pytest.raises(ModelLoadError, match="takes 4 channels, an inpainting UNet takes 9"):
        load_inpaint_unet(str(model_cache / f"tiny-{TINY_REVISION}"), model_cache, inpaint_generators[4].model)
    with pytest.raises(ModelLoadError, match="diffusers folder"):
        load_inpaint_unet("/nowhere/inpainting", model_cache, inpaint_generators[4].model)
