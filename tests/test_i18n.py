"""Languages: every shipped catalog complete, and a German-speaking member served in German end to end."""

from __future__ import annotations

import ast
import copy
import re
import string
from typing import Any

import pytest
import redis
from babel.messages.pofile import read_po

from bot.i18n import LANGUAGES, catalog_path, language_of, permission_name, t, translations
from bot.i18n_catalog import BOT_DIR, CONTRACT_DIR, collect
from ponybot.settings import Settings
from tests.bot_harness import drain, ephemeral_reply, running_bot
from tests.discord_fake.server import FakeDiscord

KEYS = collect()
#: Discord's rule for command and option names, in every language
NAME = re.compile(r"^[-_'\w]{1,32}$")


def fields(text: str) -> set[str]:
    return {name for _literal, name, _spec, _conversion in string.Formatter().parse(text) if name}


def test_the_keys_cover_code_and_commands() -> None:
    """The check below can fail: it sees messages in the code and every name of the command tree."""
    assert ("command", "generate") in KEYS and ("option", "strength") in KEYS and ("button", "Vary") in KEYS
    assert (None, "Sorry, this generation failed: {reason}") in KEYS
    assert len(KEYS) > 150


@pytest.mark.parametrize("language", LANGUAGES)
def test_shipped_catalog_translates_every_key(language: str) -> None:
    with catalog_path(language).open("rb") as source:
        catalog = read_po(source, locale=language)
    missing, broken = [], []
    for context, message in KEYS:
        entry = catalog.get(message, context=context)
        if entry is None or not entry.string or entry.fuzzy:
            missing.append(message)
            continue
        translated = str(entry.string)
        if fields(translated) != fields(message):
            broken.append(message)
        elif context in ("command", "option") and (not NAME.match(translated) or translated != translated.lower()):
            broken.append(message)
        elif (catalog_text := translations(language).pgettext(context, message) if context else
              translations(language).gettext(message)) != translated:
            broken.append(f"{message} (loaded as {catalog_text!r})")
    assert not missing, f"{language}: untranslated {missing}"
    assert not broken, f"{language}: placeholders or names differ in {broken}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_no_catalog_entry_is_left_untranslated(language: str) -> None:
    """Beyond the keys above: nothing in the file is empty or fuzzy (it would show in English)."""
    with catalog_path(language).open("rb") as source:
        catalog = read_po(source, locale=language)
    untranslated = [message.id for message in catalog if message.id and (not message.string or message.fuzzy)]
    assert not untranslated, f"{language}: {untranslated}"


#: Calls that take a catalog message, and where: a message must be a literal or a marked constant, never
#: text built in place (an f-string, ``str(error)``): that could not be in any catalog.
MESSAGE_ARGUMENT = {"t": 1, "tp": 2, "MemberError": 0, "InvalidRequestError": 1, "QueueFullError": 0, "reason": 0}


def built_messages(folder: Any) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        if "cli" in path.stem:  # the operator's commands speak English
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            position = MESSAGE_ARGUMENT.get(node.func.id)
            if position is None or len(node.args) <= position:
                continue
            argument = node.args[position]
            if not isinstance(argument, (ast.Constant, ast.Name, ast.Attribute, ast.Subscript, ast.Call)) or (
                    isinstance(argument, ast.Call) and not (isinstance(argument.func, ast.Name)
                                                           and argument.func.id in ("N_", "NP_"))):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(argument)[:60]}")
    return found


@pytest.mark.parametrize("folder", [BOT_DIR, CONTRACT_DIR], ids=["bot", "ponybot"])
def test_member_messages_are_catalog_messages(folder: Any) -> None:
    assert not built_messages(folder)


@pytest.mark.parametrize(("flag", "german", "french"), [
    ("manage_guild", "Server verwalten", "Gérer le serveur"),
    ("manage_channels", "Kanäle verwalten", "Gérer les salons"),
    ("manage_messages", "Nachrichten verwalten", "Gérer les messages"),
])
def test_permissions_have_discords_own_names(flag: str, german: str, french: str) -> None:
    assert permission_name("de", flag) == german and permission_name("fr", flag) == french
    assert permission_name("en-US", flag) == flag.replace("guild", "server").replace("_", " ").title()


def test_language_fallbacks() -> None:
    assert language_of("de") == "de" and language_of("fr") == "fr" and language_of("es-ES") == "en"
    assert t("es-ES", "Queued: next in line.") == "Queued: next in line."
    german = t("de", "Queued: position {position} in the queue.", position=3)
    assert german == "Eingereiht: Platz 3 in der Warteschlange."


async def test_member_gets_their_language_and_commands_are_localised(
        fake: FakeDiscord, discord_settings: Settings, redis_url: str, runtime: Any, conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        refused = await fake.slash("generate", {"prompt": "pony", "image": fake.upload("a.txt", b"hi", "text/plain")},
                                   locale="de")
        refused_reply = await fake.wait_for(lambda: ephemeral_reply(fake, refused))
        french = await fake.slash("generate", {"prompt": "pony", "steps": 99}, locale="fr")
        french_reply = await fake.wait_for(lambda: ephemeral_reply(fake, french))
        interaction = await fake.slash("generate", {"prompt": "pinkie pie", "seed": 4}, locale="de")
        queued = copy.deepcopy(await fake.wait_for(lambda: (fake.original(interaction) or {}).get(
            "content", "").startswith("Eingereiht") and fake.original(interaction)))
        await drain(runtime)
        done = await fake.wait_for(lambda: (fake.original(interaction) or {}).get("attachments") and
                                   fake.original(interaction))
        english = await fake.slash("queue", locale="en-GB")
        english_reply = await fake.wait_for(lambda: ephemeral_reply(fake, english))
    assert refused_reply.startswith("**image**: nur PNG-, JPEG- oder WebP-Bilder")
    assert queued["components"][0]["components"][0]["label"] == "Abbrechen"
    assert "Schritte" in done["content"]
    labels = [button["label"] for row in done["components"] for button in row["components"]]
    assert labels[:3] == ["Neu würfeln", "Details", "Löschen"] and "Variieren 1" in labels
    assert english_reply == "You have no jobs waiting."
    assert french_reply == "**steps**: au plus 50 sur ce bot, reçu 99"  # the bot's limits, in French too

    commands = {command["name"]: command for command in fake.synced[-1]}
    generate = commands["generate"]
    assert generate["name_localizations"] == {"de": "generieren", "fr": "générer"}
    assert generate["description_localizations"]["fr"] == "Dessine une image avec pony-diffusion"
    options = {option["name"]: option for option in generate["options"]}
    assert options["strength"]["name_localizations"] == {"de": "stärke", "fr": "force"}
    resize = {choice["value"]: choice for choice in options["resize_mode"]["choices"]}
    assert resize["crop"]["name_localizations"]["de"] == "Zuschneiden"
    settings_group = commands["settings"]
    assert settings_group["name_localizations"]["fr"] == "préférences"
    assert {o["name"] for o in settings_group["options"]} == {"show", "set", "reset"}


def test_loras_listing_follows_the_members_language() -> None:
    from bot.features.models import describe_networks
    from ponybot.policy import PolicyRules, resolve
    from ponybot.settings import load_settings
    from ponybot.workers import NetworkInfo, WorkerRecord

    settings = load_settings(None)
    policy = resolve(PolicyRules(), age_restricted=False, settings=settings.policy)
    assert describe_networks(settings, [], policy, "de").startswith("Für kein Modell")
    record = WorkerRecord(name="w", models=["pony-v4"], loras=[NetworkInfo(name="pinkie")])
    french = describe_networks(settings, [record], policy, "fr")
    assert "LoRA : `pinkie`" in french and "Embeddings : aucun" in french
    assert "un embedding par son nom" in french


def test_status_lines_follow_the_readers_language() -> None:
    """Every line of /status, worker and per-model lines included, in French; the CLI's English unchanged."""
    import functools

    from ponybot.status import ModelStatus, SafetyState, Status, WorkerState, describe_status

    status = Status(
        workers=[WorkerState(name="gpu-0", state="busy", job_id="abc",
                             safety=SafetyState(classifiers=["tagger"], missing={"open_nsfw": "not downloaded"}))],
        models=[ModelStatus(name="pony-v4", queue_depth=2, workers=1, done_last_10_min=5, wait_for_new_job_s=30),
                ModelStatus(name="pony-v3", queue_depth=0, workers=0, done_last_10_min=0, wait_for_new_job_s=None)],
        queue_depth=2, done_last_10_min=5, failed_last_10_min=1, images_per_minute=0.5, mean_generation_s=4.2,
        wait_for_new_job_s=30)
    french = describe_status(status, functools.partial(t, "fr"))
    assert french.splitlines() == [
        "Workers en ligne : 1",
        "  gpu-0: busy (tâche abc), CONTRÔLE D'IMAGE INCOMPLET (les salons SFW ne reçoivent aucune image) : "
        "open_nsfw: not downloaded",
        "File d'attente : 2 en attente",
        "  pony-v4 : 2 en attente, 1 worker(s), 5 terminées en 10 min, une nouvelle tâche attend environ 30 s",
        "  pony-v3 : 0 en attente, 0 worker(s), 0 terminées en 10 min",
        "10 dernières min : 5 terminées, 1 échouées, 0.5 images/min",
        "Temps moyen de génération : 4.2 s",
        "Une nouvelle tâche attendrait maintenant environ 30 s",
    ]
    english = describe_status(status)
    assert english.splitlines()[0] == "Workers online: 1"
    assert "pony-v4: 2 waiting, 1 worker(s), 5 done in 10 min, a new job waits about 30 s" in english
