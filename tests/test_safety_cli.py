"""``ponybot safety check`` and ``ponybot safety eval`` on images the test makes, and their bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ponybot.commands.cli import main
from tests.tagger import make_tagger, save_solid

SAFE = {"black": (0, 0, 0), "green128": (0, 128, 0), "blue77": (0, 0, 77), "red64": (64, 0, 0)}
NSFW = {"red102": (102, 0, 0), "red153": (153, 0, 0), "blue128": (0, 0, 128), "red80": (80, 0, 0)}


@pytest.fixture
def labelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four safe and four nsfw images; settings: the tiny tagger only."""
    make_tagger(tmp_path / "wd")
    for folder, colours in (("safe", SAFE), ("nsfw", NSFW)):
        for name, colour in colours.items():
            save_solid(tmp_path / "set" / folder / f"{name}.png", *colour)
    monkeypatch.chdir(tmp_path)
    for key in ("PONYBOT_CONFIG", "PONYBOT_SAFETY__OPENNSFW_THRESHOLD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PONYBOT_SAFETY__TAGGER", str(tmp_path / "wd"))
    monkeypatch.setenv("PONYBOT_SAFETY__OPENNSFW", "false")
    monkeypatch.setenv("PONYBOT_SAFETY__NSFWJS", "false")
    monkeypatch.setenv("PONYBOT_LOG__LEVEL", "WARNING")
    return tmp_path


def rows(text: str) -> dict[tuple[str, str], list[str]]:
    """The table lines as (check, threshold) -> [precision, recall, false_withhold]."""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] != "check":
            found[(parts[0], parts[1])] = parts[2:]
    return found


def test_check_reports_each_image_and_exits_1_when_one_is_withheld(labelled: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["safety", "check", "set/safe/black.png", "set/nsfw/red102.png", "set/nsfw/blue128.png"])
    black, red, blue = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (black["sfw_decision"], black["rating"], black["flagged"]) == ("post", "general", False)
    assert (red["sfw_decision"], red["rating"]) == ("withhold", "explicit")
    assert red["classifiers"]["tagger"]["score"] == pytest.approx(0.4, abs=1e-4)
    assert red["classifiers"]["tagger"]["ratings"]["explicit"] == pytest.approx(0.4, abs=1e-4)
    assert blue["explicit_tags"] == {"nude": pytest.approx(0.502, abs=1e-3)} and blue["sfw_decision"] == "withhold"
    assert main(["safety", "check", "set/safe/black.png", "set/safe/green128.png"]) == 0
    capsys.readouterr()
    assert main(["safety", "check", "--strictness", "strict", "set/safe/green128.png"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["classifiers"]["tagger"]["threshold"] == pytest.approx(0.21)


def test_check_with_open_nsfw_beside_the_tagger(labelled: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONYBOT_SAFETY__OPENNSFW", "true")
    monkeypatch.setenv("PONYBOT_SAFETY__OPENNSFW_THRESHOLD", "0.000001")
    assert main(["safety", "check", "set/safe/black.png"]) == 1
    (black,) = json.loads(capsys.readouterr().out)
    assert black["classifiers"]["tagger"]["flagged"] is False and black["classifiers"]["opennsfw"]["flagged"] is True


def test_eval_exact_numbers_and_suggestion(labelled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["safety", "eval", "set", "--suggest"]) == 0
    out = capsys.readouterr().out
    assert "8 images: 4 safe, 4 nsfw" in out
    configured, sweep = out.split("Sweep")
    at = rows(configured)
    assert at[("tagger:rating", "0.35")] == ["1.000", "0.500", "0.000"]
    assert at[("tagger:explicit_tags", "x1.00")] == ["1.000", "0.250", "0.000"]
    assert at[("tagger", "x1.00")] == ["1.000", "0.750", "0.000"]
    assert at[("combined", "x1.00")] == ["1.000", "0.750", "0.000"]
    swept = rows(sweep.split("Suggested")[0])
    assert swept[("tagger:rating", "0.25")] == ["0.750", "0.750", "0.250"]  # red64 (0.251) withheld
    assert swept[("tagger:rating", "0.30")] == ["1.000", "0.750", "0.000"]
    assert swept[("tagger:rating", "0.35*")] == ["1.000", "0.500", "0.000"]
    assert swept[("tagger:rating", "0.65")] == ["-", "0.000", "0.000"]
    assert swept[("combined", "x0.60")] == ["0.667", "1.000", "0.500"]  # blue77 and red64 withheld too
    assert swept[("combined", "x0.80")] == ["1.000", "1.000", "0.000"]
    suggested = out.split("Suggested for recall >= 0.99 on nsfw:")[1]
    assert "tagger:rating: no threshold above 0 reaches it" in suggested  # blue128 has no rating at all
    # red80's rating is 80/255 = 0.3137, 0.896 of 0.35: the highest scale that still withholds it
    assert "combined: every threshold x0.896: tagger_threshold = 0.313 (recall 1.000, false withhold 0.000)" \
        in suggested


def test_eval_from_a_csv_of_labels(labelled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["path,label"] + [f"set/safe/{n}.png,safe" for n in SAFE] + [f"set/nsfw/{n}.png,nsfw" for n in NSFW]
    (labelled / "labels.csv").write_text("\n".join(lines) + "\n")
    assert main(["safety", "eval", "labels.csv"]) == 0
    at = rows(capsys.readouterr().out.split("Sweep")[0])
    assert at[("tagger", "x1.00")] == ["1.000", "0.750", "0.000"]


def damage_tagger(labelled: Path, damage: str) -> None:
    folder = labelled / "wd"
    if damage == "not a tagger":
        shutil.rmtree(folder)
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
    elif damage == "no rating rows":
        (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n0,pony,0,0\n1,nude,0,0\n")
    else:
        (folder / "model.onnx").write_bytes(b"not an onnx file at all" * 10)


@pytest.mark.parametrize(("damage", "message"), [
    ("not a tagger", "is not a WD tagger (it needs model.onnx and selected_tags.csv)"),
    ("no rating rows", "has no rating rows for general, sensitive, questionable, explicit"),
    ("corrupt onnx", "model.onnx could not be loaded"),
])
@pytest.mark.parametrize("command", ["check", "eval"])
def test_bad_tagger_is_a_clear_message(labelled: Path, capsys: pytest.CaptureFixture[str], damage: str,
                                       message: str, command: str) -> None:
    damage_tagger(labelled, damage)
    args = ["check", "set/safe/black.png"] if command == "check" else ["eval", "set"]
    assert main(["safety", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(("setup", "args", "message"), [
    ("text", ["check", "notes.png"], "notes.png: this file is not a PNG, JPEG or WebP picture"),
    ("none", ["check", "missing.png"], "missing.png: no such file"),
    ("none", ["eval", "nowhere"], "nowhere: no such folder or CSV file"),
    ("columns", ["eval", "bad.csv"], "needs the columns path and label"),
    ("labels", ["eval", "bad.csv"], "labels must be safe or nsfw (line 2: 'maybe')"),
    ("half", ["eval", "half"], "needs safe/ and nsfw/ subfolders"),
])
def test_bad_input_is_a_clear_message(labelled: Path, capsys: pytest.CaptureFixture[str], setup: str,
                                      args: list[str], message: str) -> None:
    if setup == "text":
        (labelled / "notes.png").write_text("not a picture")
    elif setup == "columns":
        (labelled / "bad.csv").write_text("file,rating\nset/safe/black.png,safe\n")
    elif setup == "labels":
        (labelled / "bad.csv").write_text("path,label\nset/safe/black.png,maybe\n")
    elif setup == "half":
        (labelled / "half" / "safe").mkdir(parents=True)
    assert main(["safety", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_fetch_reads_a_local_tagger_and_reports_an_unreachable_one(labelled: Path, capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["safety", "fetch"]) == 0
    out = capsys.readouterr().out
    assert "tagger ready" in out and "(7 tags)" in out
    monkeypatch.setenv("PONYBOT_SAFETY__TAGGER", "SmilingWolf/not-downloaded")
    assert main(["safety", "fetch"]) == 2  # the hub is off in tests: not in the cache, and not fetched
    err = capsys.readouterr().err
    assert "SmilingWolf/not-downloaded is not in the cache" in err and "could not be fetched" in err
    assert "Traceback" not in err


def test_up_fetches_the_tagger_before_the_workers(labelled: Path, caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ponybot.commands.up import Child, Supervisor
    from ponybot.settings import load_settings

    monkeypatch.setenv("PONYBOT_SAFETY__TAGGER", "SmilingWolf/not-downloaded")
    supervisor = Supervisor(load_settings(None), config=None, workers=1)
    supervisor.children = [Child("worker 0 on cpu", ["true"], {})]
    supervisor.fetch_tagger()
    assert "could not be fetched: the workers start without it" in caplog.text
    assert "SFW channels get no images until it is there" in caplog.text  # nsfwjs off: the tagger is required
    caplog.clear()
    monkeypatch.setenv("PONYBOT_SAFETY__NSFWJS", "true")  # nsfwjs on: it alone is required by default
    supervisor = Supervisor(load_settings(None), config=None, workers=1)
    supervisor.children = [Child("worker 0 on cpu", ["true"], {})]
    supervisor.fetch_tagger()
    assert "SFW channels get the images the other checks pass" in caplog.text
    caplog.clear()
    monkeypatch.setenv("PONYBOT_SAFETY__TAGGER", str(labelled / "wd"))
    Supervisor(load_settings(None), config=None, workers=1).fetch_tagger()  # no workers planned: nothing run
    supervisor = Supervisor(load_settings(None), config=None, workers=1)
    supervisor.children = [Child("worker 0 on cpu", ["true"], {})]
    supervisor.fetch_tagger()
    assert "could not be fetched" not in caplog.text


@pytest.mark.parametrize(("thresholds", "decision", "code"), [
    (None, "post", 0),  # the defaults (Hentai, Porn at 0.5): flat colours are no porn
    ('{"Drawing": 0}', "withhold", 1),  # a threshold of 0 forbids the class outright
])
def test_check_a_folder_with_nsfwjs_alone(labelled: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch, thresholds: str | None, decision: str,
                                          code: int) -> None:
    """No tagger, no open_nsfw: nsfwjs (shipped in the package) decides, and each image's five classes show."""
    monkeypatch.setenv("PONYBOT_SAFETY__TAGGER", "none")
    monkeypatch.setenv("PONYBOT_SAFETY__NSFWJS", "true")
    if thresholds:
        monkeypatch.setenv("PONYBOT_SAFETY__NSFWJS_THRESHOLDS", thresholds)
    assert main(["safety", "check", "set/safe"]) == code
    results = json.loads(capsys.readouterr().out)
    assert [Path(r["image"]).stem for r in results] == sorted(SAFE)
    for result in results:
        reading = result["classifiers"]["nsfwjs"]
        assert set(result["classifiers"]) == {"nsfwjs"} and result["sfw_decision"] == decision
        assert set(reading["classes"]) == {"Drawing", "Hentai", "Neutral", "Porn", "Sexy"}
        assert sum(reading["classes"].values()) == pytest.approx(1, abs=1e-3)
        assert reading["flagged"] is (decision == "withhold")
        assert reading["watched_class"] == ("Drawing" if thresholds else max(
            ("Hentai", "Porn"), key=lambda name: reading["classes"][name] - 0.5))


def test_eval_covers_nsfwjs_beside_the_tagger(labelled: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONYBOT_SAFETY__NSFWJS", "true")
    monkeypatch.setenv("PONYBOT_SAFETY__NSFWJS_THRESHOLDS", '{"Porn": 0.5, "Neutral": 0}')
    assert main(["safety", "eval", "set", "--suggest"]) == 0
    out = capsys.readouterr().out
    at = rows(out.split("Sweep")[0])
    assert at[("nsfwjs:Neutral", "0.00")] == ["0.500", "1.000", "1.000"]  # a threshold of 0 withholds all
    assert at[("nsfwjs", "x1.00")] == ["0.500", "1.000", "1.000"]
    assert at[("combined", "x1.00")] == ["0.500", "1.000", "1.000"]
    assert at[("tagger", "x1.00")] == ["1.000", "0.750", "0.000"]  # the tagger's own numbers as before
    assert ("nsfwjs:Porn", "0.50") in at
    suggested = out.split("Suggested for recall >= 0.99 on nsfw:")[1]
    assert "nsfwjs:Porn: nsfwjs_thresholds.Porn = " in suggested or "nsfwjs:Porn: no threshold" in suggested
    assert "nsfwjs: any scale (a threshold of 0 in safety.nsfwjs_thresholds withholds every image)" in suggested
    monkeypatch.setenv("PONYBOT_SAFETY__NSFWJS_THRESHOLDS", '{"Porn": 0.5, "Neutral": 0.02}')
    assert main(["safety", "eval", "set", "--suggest"]) == 0
    suggested = capsys.readouterr().out.split("Suggested for recall >= 0.99 on nsfw:")[1]
    assert "nsfwjs: every threshold x" in suggested and "nsfwjs_thresholds = { Porn = " in suggested
