"""The image check: a WD-layout tagger's rating head and explicit tags, strictness, open_nsfw beside it,
the hub cache, failing closed when the tagger cannot be had, the status and metric that say so,
the tags kept with each image, and images coming in checked before they are used."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from ponybot import keys
from ponybot.errors import ConfigError
from ponybot.policy import Mode, PolicyRules, Strictness, resolve
from ponybot.policy_store import PolicyStore
from ponybot.queue import enqueue
from ponybot.schemas import Job, JobEvent, JobKind, Origin, SourceImage, build_request
from ponybot.settings import PolicySettings, SafetySettings, Settings
from ponybot.status import collect_status, describe_status
from tests.tagger import make_tagger, solid
from tests.test_policy import FlagAll
from worker.runner import GenerationWorker
from worker.runtime import WorkerRuntime
from worker.safety import SafetyCheck, load_safety

TAGGER_ONLY = {"opennsfw": False, "nsfwjs": False}


def check_for(folder: Path, **settings: Any) -> SafetyCheck:
    return load_safety(SafetySettings(tagger=str(folder), **{**TAGGER_ONLY, **settings}), folder, fail_fast=True)


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tagger(tmp_path_factory.mktemp("tagger") / "wd")


def test_rating_threshold(tagger_dir: Path) -> None:
    check = check_for(tagger_dir)
    over, under, black = check.classify([solid(102, 0, 0), solid(77, 0, 0), solid(0, 0, 0)])
    reading = over.readings[0]
    assert over.flagged is True and reading.rating == "explicit"
    assert reading.score == pytest.approx(102 / 255) and reading.threshold == pytest.approx(0.35)
    assert reading.explicit == {}
    assert under.flagged is False and under.readings[0].score == pytest.approx(77 / 255)
    assert black.flagged is False and black.readings[0].rating == "general"
    moved = check_for(tagger_dir, tagger_threshold=0.3)
    assert [v.flagged for v in moved.classify([solid(77, 0, 0)])] == [True]


def test_explicit_tags_flag_without_the_rating(tagger_dir: Path) -> None:
    check = check_for(tagger_dir)
    nude, faint = check.classify([solid(0, 0, 115), solid(0, 0, 77)])
    assert nude.flagged is True
    assert nude.readings[0].score == 0 and nude.readings[0].rating == "general"
    assert nude.readings[0].explicit == {"nude": pytest.approx(115 / 255)}
    assert faint.flagged is False and faint.readings[0].explicit == {}
    untouched = check_for(tagger_dir, explicit_tags={"penis": 0.3})  # nude is no longer watched
    assert [v.flagged for v in untouched.classify([solid(0, 0, 115)])] == [False]


def test_strictness_lowers_thresholds_and_counts_sensitive(tagger_dir: Path) -> None:
    check = check_for(tagger_dir)
    images = [solid(0, 128, 0), solid(77, 0, 0), solid(0, 0, 77), solid(0, 40, 0)]
    standard = check.classify(images, Strictness.STANDARD)
    strict = check.classify(images, Strictness.STRICT)
    assert [v.flagged for v in standard] == [False, False, False, False]
    assert [v.flagged for v in strict] == [True, True, True, False]  # 40/255 = 0.157 < 0.35 x 0.6
    assert strict[0].readings[0].threshold == pytest.approx(0.21)
    assert strict[2].readings[0].explicit == {"nude": pytest.approx(77 / 255)}


def test_combined_with_open_nsfw(tagger_dir: Path) -> None:
    """Flagged when either flags; each one's reading is kept."""
    eager = check_for(tagger_dir, opennsfw=True, opennsfw_threshold=1e-6)
    (calm_tagger,) = eager.classify([solid(0, 0, 0)])
    assert calm_tagger.flagged is True
    assert {r.classifier: r.flagged for r in calm_tagger.readings} == {"tagger": False, "opennsfw": True}
    lenient = check_for(tagger_dir, opennsfw=True, opennsfw_threshold=0.999999)
    red, black = lenient.classify([solid(102, 0, 0), solid(0, 0, 0)])
    assert {r.classifier: r.flagged for r in red.readings} == {"tagger": True, "opennsfw": False}
    assert red.flagged is True and black.flagged is False
    assert lenient.state.classifiers == ["tagger", "opennsfw"] and lenient.state.missing == {}


def hub_cache(cache: Path, repo: str, tagger_dir: Path) -> None:
    """The layout huggingface_hub's snapshot_download leaves in ``cache_dir``."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    for name in ("model.onnx", "selected_tags.csv"):
        shutil.copy(tagger_dir / name, snapshot / name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(snapshot.name)


def test_hub_id_resolves_from_the_model_cache_offline(tmp_path: Path, tagger_dir: Path) -> None:
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: the network is off for the hub
    hub_cache(tmp_path, "SmilingWolf/wd-tiny-tagger", tagger_dir)
    check = load_safety(SafetySettings(tagger="SmilingWolf/wd-tiny-tagger", **TAGGER_ONLY), tmp_path)
    assert check.missing == {} and check.state.classifiers == ["tagger"]
    assert [v.flagged for v in check.classify([solid(102, 0, 0)])] == [True]


@pytest.mark.parametrize(("settings", "verdict"), [
    ({}, False),  # nsfwjs (required by default) and open_nsfw are here: they decide
    ({"required": ["tagger"]}, None),  # the tagger is required: the check cannot tell
    ({"required": ["nsfwjs", "tagger"]}, None),
    ({"nsfwjs": False}, None),  # no nsfwjs: every configured check is required, as before it shipped
    ({"nsfwjs_thresholds": {"Drawing": 0.0}}, True),  # a flag from a present check still flags
])
def test_missing_tagger_is_reported_not_fatal(tmp_path: Path, settings: dict[str, Any], verdict: bool | None
                                              ) -> None:
    check = load_safety(SafetySettings(tagger="SmilingWolf/not-downloaded", **settings), tmp_path)
    assert "tagger" not in check.state.classifiers and "opennsfw" in check.state.classifiers
    assert "not in the cache" in check.missing["tagger"]
    (result,) = check.classify([solid(0, 0, 0)])
    assert result.flagged is verdict
    state = check.state  # what `ponybot status` and /status say about this worker
    assert state.withholding is (verdict is None)
    told = state.describe()
    assert told.startswith("IMAGE CHECK INCOMPLETE") and "SmilingWolf/not-downloaded" in told
    assert ("SFW channels get no images" in told) is state.withholding
    assert (f"SFW channels get the images {'+'.join(state.classifiers)} pass" in told) is not state.withholding
    with pytest.raises(ConfigError, match="SmilingWolf/not-downloaded is not in the cache"):
        load_safety(SafetySettings(tagger="SmilingWolf/not-downloaded", **settings), tmp_path, fail_fast=True)


def channel_job(conn: redis.Redis, settings: Settings, *, nsfw: bool, count: int = 2, **fields: Any) -> Job:
    origin = Origin(guild_id=1, channel_id=2, channel_nsfw=nsfw, user_id=3)
    request = build_request(settings.limits, prompt="pony", steps=3, width=256, height=256, count=count)
    job = Job.create(request, origin=origin, **fields)
    enqueue(conn, job, max_queue=10, result_ttl_s=60)
    return job


def run_all(conn: redis.Redis, runtime: WorkerRuntime) -> JobEvent:
    GenerationWorker(runtime).work(burst=True)
    return JobEvent.model_validate_json(conn.xrange(keys.EVENTS_STREAM)[-1][1][b"data"])


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_missing_tagger_fails_closed_in_sfw_posts_in_nsfw_and_shows(
        tmp_path: Path, conn: redis.Redis, settings: Settings, generator: Any) -> None:
    check = load_safety(SafetySettings(tagger="SmilingWolf/not-downloaded", opennsfw=False, required=["tagger"]),
                        tmp_path)
    registry = CollectorRegistry()
    runtime = WorkerRuntime(settings, conn, generator, "no-tagger", check, registry)
    assert metric(registry, "ponybot_safety_classifier_missing", classifier="tagger") == 1
    channel_job(conn, settings, nsfw=False)
    sfw = run_all(conn, runtime)
    assert sfw.kind == "done" and sfw.withheld == 2 and all(image.key is None for image in sfw.images)
    PolicyStore(conn).set_channel(1, 2, PolicyRules(mode=Mode.NSFW), by=9)
    channel_job(conn, settings, nsfw=True)
    nsfw = run_all(conn, runtime)
    assert nsfw.withheld == 0 and all(image.key and conn.exists(image.key) for image in nsfw.images)
    assert metric(registry, "ponybot_images_unchecked_total") == 4

    worker = GenerationWorker(runtime)
    worker.register_birth()
    try:
        status = collect_status(conn)
    finally:
        worker.register_death()
    (state,) = status.workers
    assert state.safety is not None and "tagger" in state.safety.missing
    assert "IMAGE CHECK INCOMPLETE" in describe_status(status)
    assert "SmilingWolf/not-downloaded" in describe_status(status)


def test_complete_check_shows_in_status_and_keeps_tags(
        tagger_dir: Path, conn: redis.Redis, settings: Settings, generator: Any) -> None:
    check = check_for(tagger_dir, tag_min_score=0.0, tags_kept=2)
    runtime = WorkerRuntime(settings, conn, generator, "tagged", check)
    PolicyStore(conn).set_channel(1, 2, PolicyRules(mode=Mode.NSFW), by=9)
    channel_job(conn, settings, nsfw=True)
    event = run_all(conn, runtime)
    for image in event.images:
        assert list(image.tags) and set(image.tags) <= {"pony", "nude", "twilight_sparkle"} and len(image.tags) == 2
        assert list(image.tags.values()) == sorted(image.tags.values(), reverse=True)
        assert image.tags["pony"] >= 0  # the harmless tag follows every colour
    worker = GenerationWorker(runtime)
    worker.register_birth()
    try:
        text = describe_status(collect_status(conn))
    finally:
        worker.register_death()
    assert "image check tagger" in text and "INCOMPLETE" not in text


def test_worker_uses_the_channels_strictness(tagger_dir: Path, conn: redis.Redis, settings: Settings,
                                             generator: Any) -> None:
    runtime = WorkerRuntime(settings, conn, generator, "strict", check_for(tagger_dir))
    job = channel_job(conn, settings, nsfw=False)
    assert runtime.policy_for(job).strictness is Strictness.STANDARD  # type: ignore[union-attr]
    assert [v.flagged for v in runtime.screen(job, runtime.policy_for(job), [solid(0, 128, 0)])] == [False]
    PolicyStore(conn).set_channel(1, 2, PolicyRules(strictness=Strictness.STRICT), by=9)
    policy = runtime.policy_for(job)
    assert policy is not None and policy.strictness is Strictness.STRICT
    assert [v.flagged for v in runtime.screen(job, policy, [solid(0, 128, 0)])] == [True]


@pytest.mark.parametrize("nsfw", [False, True])
def test_source_image_checked_before_a_follow_up_in_sfw(conn: redis.Redis, settings: Settings,
                                                        runtime: WorkerRuntime, nsfw: bool) -> None:
    if nsfw:
        PolicyStore(conn).set_channel(1, 2, PolicyRules(mode=Mode.NSFW), by=9)
    runtime.classifier = FlagAll()
    data = io.BytesIO()
    solid(200, 50, 50, side=256).save(data, format="PNG")
    conn.set("ponybot:image:earlier:0", data.getvalue())
    source = SourceImage(job_id="earlier", index=0, seed=1, key="ponybot:image:earlier:0")
    channel_job(conn, settings, nsfw=nsfw, count=1, kind=JobKind.VARY, source=source)
    event = run_all(conn, runtime)
    if nsfw:
        assert event.kind == "done"
    else:
        assert event.kind == "failed" and event.error_code == "unsafe_source"
        assert "did not pass this channel's image check" in (event.error_message or "")


def test_old_safety_settings_still_read() -> None:
    both = SafetySettings(classifiers=["opennsfw", "wd14"], wd14_model="models/wd", wd14_threshold=0.2)
    assert (both.opennsfw, both.tagger, both.tagger_threshold) == (True, "models/wd", 0.2)
    only = SafetySettings(classifiers=["wd14"], wd14_model="models/wd")
    assert (only.opennsfw, only.tagger) == (False, "models/wd")
    upgraded = SafetySettings(classifiers=["opennsfw"])  # the old default gains the tagger
    assert upgraded.opennsfw and upgraded.tagger == "SmilingWolf/wd-vit-tagger-v3"
    with pytest.raises(ValueError, match="unknown"):
        SafetySettings(classifiers=["nudenet"])


@pytest.mark.parametrize(("damage", "message"), [
    ("no_model", "is not a WD tagger"),
    ("no_ratings", "has no rating rows for general, sensitive, questionable, explicit"),
    ("corrupt", "could not be loaded"),
])
def test_bad_tagger_folders(tmp_path: Path, tagger_dir: Path, damage: str, message: str) -> None:
    folder = tmp_path / damage
    shutil.copytree(tagger_dir, folder)
    if damage == "no_model":
        (folder / "model.onnx").unlink()
    elif damage == "no_ratings":
        (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n0,pony,0,0\n1,nude,0,0\n")
    else:
        (folder / "model.onnx").write_bytes(b"\x08\x01garbage" * 20)
    with pytest.raises(ConfigError, match=message):
        check_for(folder)
    quiet = load_safety(SafetySettings(tagger=str(folder), **TAGGER_ONLY), folder)
    assert message in quiet.missing["tagger"]  # the worker starts, failing closed, and says why


def test_policy_strictness_resolves() -> None:
    policy = resolve(PolicyRules(strictness=Strictness.STRICT), age_restricted=False, settings=PolicySettings())
    assert policy.strictness is Strictness.STRICT
    assert resolve(PolicyRules(), age_restricted=False, settings=PolicySettings()).strictness is Strictness.STANDARD
