"""LoRAs and embeddings: A1111's prompt syntax, diffusers' own LoRA loading, hashes, bad files, batching."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from safetensors.torch import save_file

from ponybot import keys
from ponybot.errors import GenerationError, InvalidRequestError
from ponybot.networks import LoraRef, check_lora_count, parse_loras, strip_loras
from ponybot.parameters import format_parameters, parse_parameters
from ponybot.policy import PolicyRules
from ponybot.policy_store import PolicyStore
from ponybot.schemas import GenerationRequest, Job, JobEvent, Sampler, build_request
from ponybot.settings import ModelSettings, Settings
from ponybot.workers import NetworkInfo, WorkerRecord, check_networks
from tests.conftest import make_settings
from worker.generate import BatchItem, Generator
from worker.networks import Catalog, model_hash
from worker.png import read_parameters
from worker.runner import GenerationWorker
from worker.runtime import Batch, WorkerRuntime
from worker.schedulers import CARD_DDIM
from worker.tiny import TINY_REVISION

SEED = 1234


def kohya_lora(pipeline: Any, path: Path, seed: int, scale: float = 0.5, width: int | None = None) -> None:
    """A LoRA in kohya's key layout (``lora_unet_*`` / ``lora_te_*``, ``lora_down``/``lora_up``/``alpha``)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    targets = [("lora_unet_", pipeline.unet, ("attn1.to_q", "attn2.to_k", "attn2.to_v", "attn1.to_out.0",
                                               "attn2.to_out.0")),
               ("lora_te_text_model_", pipeline.text_encoder, ("q_proj", "k_proj", "v_proj", "out_proj"))]
    for prefix, module, suffixes in targets:
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear) and name.endswith(suffixes):
                key = prefix + name.replace(".", "_")
                inputs = width if width and "attn2_to_" in key and "out" not in key else layer.in_features
                tensors[key + ".lora_down.weight"] = torch.randn(4, inputs, generator=generator) * scale
                tensors[key + ".lora_up.weight"] = torch.randn(layer.out_features, 4, generator=generator) * scale
                tensors[key + ".alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> tuple[Path, Path]:
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("networks")
    loras, embeddings = root / "lora", root / "embeddings"
    loras.mkdir()
    embeddings.mkdir()
    plain = StableDiffusionPipeline.from_pretrained(model_cache / f"tiny-{TINY_REVISION}", safety_checker=None,
                                                    requires_safety_checker=False)
    kohya_lora(plain, loras / "shiny.safetensors", seed=1)
    kohya_lora(plain, loras / "glow.safetensors", seed=2)
    kohya_lora(plain, loras / "sd15-wide.safetensors", seed=3, width=768)  # made for a 768-wide text encoder
    data = (loras / "shiny.safetensors").read_bytes()
    (loras / "broken.safetensors").write_bytes(data[: len(data) // 2])  # a download cut short
    save_file({"weight": torch.zeros(3, 3)}, str(loras / "not-lora.safetensors"))
    (loras / "pickled.pt").write_bytes(b"\x80\x04not really")
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(4)) * 3
    save_file({"emb_params": vectors}, str(embeddings / "sparkle.safetensors"))
    save_file({"emb_params": torch.randn(1, 768)}, str(embeddings / "wide-emb.safetensors"))
    save_file({"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}, str(embeddings / "xl-emb.safetensors"))
    return loras, embeddings


@pytest.fixture(scope="module")
def networked(model_cache: Path, folders: tuple[Path, Path]) -> Generator:
    """The tiny model with its own LoRA cache and embeddings (not the session's shared generator)."""
    from worker.loading import load_model, resolve_device

    model = load_model("tiny", ModelSettings(cache_dir=model_cache), resolve_device("cpu"))
    return Generator(model, Catalog(*folders, [model.architecture]), lora_cache=2)


def request(prompt: str = "pinkie pie", negative: str = "blurry", clip_skip: int = 2) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, negative_prompt=negative, steps=4, width=256, height=256,
                             clip_skip=clip_skip, sampler=Sampler.DDIM, seed=SEED)  # type: ignore[arg-type]


def draw(generator: Generator, prompt: str, negative: str = "blurry", loras: list[LoraRef] | None = None,
         clip_skip: int = 2) -> np.ndarray:
    out = generator.generate_batch(request(prompt, negative, clip_skip), [BatchItem(prompt, negative, SEED, 1)],
                                   loras=loras or parse_loras(prompt))
    return np.asarray(out[0].images[0], dtype=np.float32) / 255


def test_prompt_syntax() -> None:
    assert parse_loras("a <lora:shiny:0.8>, b <lora:glow>, <LORA:shiny:0.1>") == [
        LoraRef(name="shiny", weight=0.8), LoraRef(name="glow", weight=1.0)]
    assert strip_loras("pinkie pie, <lora:shiny:0.8>, balloons") == "pinkie pie, balloons"
    for prompt, named in (("<lora:shiny:2.5>", "shiny weight must be from -2 to 2"),
                          ("<lora:shiny:lots>", "weight must be a number"),
                          ("<lora:../etc/passwd:1>", "without folders")):
        with pytest.raises(InvalidRequestError, match=named):
            parse_loras(prompt)
    with pytest.raises(InvalidRequestError, match=r"at most 1 LoRAs .*got 2 \(shiny, glow\)"):
        check_lora_count(parse_loras("<lora:shiny> <lora:glow>"), 1)


def test_lora_matches_plain_diffusers(networked: Generator, model_cache: Path, folders: tuple[Path, Path]) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(model_cache / f"tiny-{TINY_REVISION}", safety_checker=None,
                                                    requires_safety_checker=False)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config, **CARD_DDIM)
    plain.set_progress_bar_config(disable=True)
    plain.load_lora_weights(str(folders[0]), weight_name="shiny.safetensors", adapter_name="shiny")
    plain.set_adapters(["shiny"], adapter_weights=[0.8])
    expected = plain("pinkie pie", negative_prompt="blurry", num_inference_steps=4, guidance_scale=7.5, width=256,
                     height=256, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images[0]

    # diffusers' encoder is A1111's CLIP skip 1 (the last layer)
    ours = draw(networked, "pinkie pie <lora:shiny:0.8>", clip_skip=1)
    without = draw(networked, "pinkie pie", clip_skip=1)
    assert np.abs(ours - expected).max() <= 1 / 255 + 1e-6
    assert np.abs(ours - without).max() > 10 / 255  # the LoRA changes the picture
    assert np.array_equal(draw(networked, "pinkie pie <lora:shiny:0>", clip_skip=1), without)
    assert np.array_equal(draw(networked, "pinkie pie", clip_skip=1), without)  # adapters off again
    two = draw(networked, "pinkie pie <lora:shiny:0.8> <lora:glow:-0.5>", clip_skip=1)
    assert np.abs(two - ours).max() > 1 / 255  # several at once, each with its weight


def test_embedding_in_prompt_and_negative(networked: Generator, generator: Generator) -> None:
    base = draw(networked, "pinkie pie")
    assert np.array_equal(base, draw(generator, "pinkie pie"))  # the extra token rows change nothing else
    assert np.abs(draw(networked, "pinkie pie, sparkle") - base).max() > 1 / 255
    assert np.abs(draw(networked, "pinkie pie", negative="blurry, sparkle") - base).max() > 1 / 255
    # unknown names and names inside other words are plain text, as in A1111
    assert np.array_equal(draw(networked, "pinkie pie, glitter"), draw(generator, "pinkie pie, glitter"))
    assert np.array_equal(draw(networked, "pinkie pie, sparkles"), draw(generator, "pinkie pie, sparkles"))
    ids = networked.adapters.embeddings["sparkle"]
    assert len(ids) == 2 and networked.encoder.chunks("a (sparkle:1.2)")[0].ids[-2:] == ids


def test_catalog_names_each_problem(folders: tuple[Path, Path], networked: Generator) -> None:
    catalog = networked.adapters.catalog
    loras = {info.name: info.problem for info in catalog.scan("loras")}
    assert loras["shiny"] is None and loras["glow"] is None
    assert "another architecture" in (loras["sd15-wide"] or "")
    assert "corrupt or truncated" in (loras["broken"] or "")
    assert "not a LoRA" in (loras["not-lora"] or "")
    assert "pickle" in (loras["pickled"] or "")
    embeddings = {info.name: info.problem for info in catalog.scan("embeddings")}
    assert embeddings["sparkle"] is None
    assert "another architecture" in (embeddings["wide-emb"] or "") and "SDXL" in (embeddings["xl-emb"] or "")


@pytest.mark.parametrize(("name", "problem"), [("ghost", "no ghost.safetensors"),
                                               ("sd15-wide", "another architecture"),
                                               ("broken", "corrupt or truncated"), ("pickled", "no pickled")])
def test_bad_loras_refused_by_name(networked: Generator, name: str, problem: str) -> None:
    record = WorkerRecord(name="w", models=["pony-v4"], loras=networked.adapters.catalog.scan("loras"))
    asked = build_request(Settings().limits, prompt=f"pony <lora:{name}:0.5>", model="pony-v4")
    with pytest.raises(InvalidRequestError, match=name):  # the bot, before the job is queued
        check_networks([record], asked, max_loras=4)
    with pytest.raises(GenerationError, match=f"LoRA {name}.*{problem}"):  # the worker, should one reach it
        networked.adapters.use_loras([LoraRef(name=name, weight=0.5)])
    assert name not in networked.adapters.loaded


def test_bot_knows_embeddings_and_lora_limit() -> None:
    record = WorkerRecord(name="w", models=["pony-v4"], loras=[NetworkInfo(name="shiny")],
                          embeddings=[NetworkInfo(name="sparkle"), NetworkInfo(name="bad", problem="corrupt")])
    asked = build_request(Settings().limits, prompt="pony <lora:shiny:0.5>", negative_prompt="sparkle, bad",
                          model="pony-v4")
    loras, embeddings = check_networks([record], asked, max_loras=4)
    assert loras == [LoraRef(name="shiny", weight=0.5)] and embeddings == ["sparkle"]
    with pytest.raises(InvalidRequestError, match="at most 0 LoRAs"):
        check_networks([record], asked, max_loras=0)


def test_png_hash_fields_are_a1111s(conn: redis.Redis, networked: Generator, folders: tuple[Path, Path],
                                    redis_url: str, model_cache: Path, tmp_path: Path) -> None:
    settings = make_settings(redis_url, model_cache)
    runtime = WorkerRuntime(settings, conn, networked, "hashing")
    job = Job.create(build_request(settings.limits, prompt="pinkie pie <lora:shiny:0.8>", steps=2, width=256,
                                   height=256))
    event = runtime.run_batch([job])[0]
    assert event.kind == "done", event.error_message
    parameters = parse_parameters(read_parameters(conn.get(event.images[0].key) or b"") or "")
    data = (folders[0] / "shiny.safetensors").read_bytes()
    header = int.from_bytes(data[:8], "little")  # kohya's addnet hash: sha256 of what follows the header
    assert parameters["Lora hashes"] == f"shiny: {hashlib.sha256(data[8 + header:]).hexdigest()[:12]}"
    assert parameters["prompt"].endswith("<lora:shiny:0.8>")  # kept in the text, as A1111 writes it
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)) * 64)
    short = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]
    assert model_hash(checkpoint) == short
    text = format_parameters(job, 0, "p", "n", "pony", extra={"Model hash": short, "Lora hashes": "a: 1, b: 2"})
    assert f"Model hash: {short}, Model: pony" in text and 'Lora hashes: "a: 1, b: 2"' in text


def test_batches_never_mix_models_or_lora_sets(conn: redis.Redis, networked: Generator, redis_url: str,
                                               model_cache: Path) -> None:
    settings = make_settings(redis_url, model_cache, worker={"max_batch": 4, "batch_window_ms": 200})
    runtime = WorkerRuntime(settings, conn, networked, "batching")
    batches: list[list[Job]] = []
    start_batch = runtime.start_batch

    def recorded(jobs: list[Job]) -> Batch:
        batches.append(jobs)
        return start_batch(jobs)

    runtime.start_batch = recorded  # type: ignore[method-assign]
    from ponybot.queue import enqueue

    prompts = ["plain", "a <lora:shiny:0.8>", "b <lora:shiny:0.8>", "c <lora:shiny:0.5>", "d <lora:glow:0.8>",
               "e <lora:glow:0.8> <lora:shiny:0.8>", "f <lora:shiny:0.8> <lora:glow:0.8>", "g"]
    for prompt in prompts:
        job = Job.create(build_request(settings.limits, prompt=prompt, steps=2, width=256, height=256,
                                       model="pony-v4"))
        enqueue(conn, job, max_queue=20, result_ttl_s=120)
    GenerationWorker(runtime).work(burst=True)

    assert sorted(job.request.prompt for batch in batches for job in batch) == sorted(prompts)
    for batch in batches:
        assert len({job.request.model for job in batch}) == 1
        assert len({job.lora_set for job in batch}) == 1, [job.request.prompt for job in batch]
    together = [{job.request.prompt[0] for job in batch} for batch in batches]
    assert any({"a", "b"} <= group for group in together)  # the same set does batch
    assert any({"e", "f"} <= group for group in together)  # whatever order the tags are written in
    events = [JobEvent.model_validate_json(fields[b"data"]) for _id, fields in conn.xrange(keys.EVENTS_STREAM)]
    assert all(event.kind == "done" for event in events) and len(events) == len(prompts)


def test_header_is_read_not_trusted(tmp_path: Path) -> None:
    from worker.networks import UnusableFile, read_header

    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(UnusableFile, match="bad header length"):
        read_header(bogus)
    bogus.write_bytes(len(b"[1]").to_bytes(8, "little") + b"[1]")
    with pytest.raises(UnusableFile, match="not a table"):
        read_header(bogus)
    fine = tmp_path / "y.safetensors"
    save_file({"a": torch.zeros(2)}, str(fine))
    assert list(read_header(fine)) == ["a"]
    assert json.loads(fine.read_bytes()[8 : 8 + int.from_bytes(fine.read_bytes()[:8], "little")])["a"]["shape"] == [2]


def test_worker_checks_again_at_run_time(conn: redis.Redis, networked: Generator, redis_url: str,
                                         model_cache: Path) -> None:
    """A job that reached the queue without the bot's checks (or before a moderator's change) is refused."""
    from ponybot.policy import Mode
    from ponybot.schemas import Origin

    settings = make_settings(redis_url, model_cache, model={"max_loras": 1})
    runtime = WorkerRuntime(settings, conn, networked, "checking")
    PolicyStore(conn).set_channel(1, 2, PolicyRules(mode=Mode.SFW, loras=["shiny"]), by=3)
    origin = Origin(guild_id=1, channel_id=2, channel_nsfw=False, user_id=3)
    jobs = [Job.create(build_request(settings.limits, prompt=prompt, steps=2, width=256, height=256), origin=origin)
            for prompt in ("pony <lora:shiny> <lora:glow>", "pony <lora:glow:0.5>", "pony <lora:n.u.d.e:0.5>")]
    events = runtime.run_batch(jobs)
    assert [event.kind for event in events] == ["failed"] * 3
    assert "at most 1 LoRAs" in (events[0].error_message or "")
    assert "does not allow the LoRA glow" in (events[1].error_message or "")
    assert "nude" in (events[2].error_message or "")
