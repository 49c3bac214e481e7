"""Settings of what may be generated and shown: the channel policy's defaults (``[policy]``), the image
check (``[safety]``) and the community gallery (``[gallery]``)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from ponybot.errors import ConfigError
from ponybot.settings.base import Section
from ponybot.term_lists import NSFW_LISTS, SFW_LISTS

#: Refused in SFW channels (whole words; ``*`` matches every word it begins).
SFW_FORBIDDEN_TERMS = (
    "nsfw", "nude", "nudity", "naked", "explicit", "questionable", "sex", "sexy", "porn*", "hentai", "penis",
    "vagina", "pussy", "genitals", "nipple", "breasts", "boobs", "anus", "anal", "cum", "orgasm", "erection",
    "masturbation", "lewd", "fetish", "bdsm", "bondage", "rule34", "r34", "upskirt", "topless", "bottomless",
    "grimdark", "grotesque", "gore",
)
#: Refused in NSFW channels: young characters never appear in NSFW images.
NSFW_FORBIDDEN_TERMS = (
    "foal", "filly", "fillies", "colt", "child*", "kid", "baby", "babies", "toddler*", "cub", "minor", "young*",
    "underage",
)
#: Refused everywhere.
ALWAYS_FORBIDDEN_TERMS = ("loli*", "shota*", "underage", "child porn", "cp", "foalcon")
#: Added to the negative prompt in SFW channels (the model card's advice: suppress what SFW excludes).
SFW_NEGATIVE = "nsfw, explicit, questionable, suggestive, nudity, nude, nipples, genitals, sex"


class PolicySettings(Section):
    sfw_forbidden_terms: list[str] = Field(default_factory=lambda: list(SFW_FORBIDDEN_TERMS))
    nsfw_forbidden_terms: list[str] = Field(default_factory=lambda: list(NSFW_FORBIDDEN_TERMS))
    always_forbidden_terms: list[str] = Field(default_factory=lambda: list(ALWAYS_FORBIDDEN_TERMS))
    #: The built-in term lists (``ponybot/terms``) SFW channels apply, every one of them in every channel.
    term_lists: list[str] = Field(default_factory=lambda: list(SFW_LISTS))
    #: The built-in term lists NSFW channels apply (young characters in every language).
    nsfw_term_lists: list[str] = Field(default_factory=lambda: list(NSFW_LISTS))
    sfw_negative: str = SFW_NEGATIVE
    safe_tag: str = "safe"

    @field_validator("term_lists", "nsfw_term_lists")
    @classmethod
    def _known_lists(cls, value: list[str], info: ValidationInfo) -> list[str]:
        known = SFW_LISTS if info.field_name == "term_lists" else NSFW_LISTS
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"no built-in term list named {', '.join(unknown)} (known: {', '.join(known)})")
        return value


#: A WD v3 tagger's general tags that mean an image is explicit, each with the score at or above which it
#: flags the image. Genitals and sex acts at 0.3: on drawn art the tagger rarely gives them even 0.3
#: without cause, and a miss is what an SFW channel cannot afford. Plain nudity at 0.4 and the
#: partial kinds at 0.5: they also appear, weakly, on swimsuits and on ponies (who wear nothing).
#: 0.35 is the threshold the WD tagger's own demo uses for general tags.
DEFAULT_EXPLICIT_TAGS: dict[str, float] = {
    "penis": 0.3, "pussy": 0.3, "testicles": 0.3, "anus": 0.3, "clitoris": 0.3, "erection": 0.3,
    "sex": 0.3, "vaginal": 0.3, "anal": 0.3, "oral": 0.3, "fellatio": 0.3, "cunnilingus": 0.3,
    "masturbation": 0.3, "handjob": 0.3, "paizuri": 0.3, "cum": 0.3, "ejaculation": 0.3, "after_sex": 0.3,
    "sex_toy": 0.3, "dildo": 0.3, "nipples": 0.4, "nude": 0.4, "completely_nude": 0.4, "pubic_hair": 0.4,
    "areolae": 0.4, "topless": 0.5, "bottomless": 0.5, "censored": 0.5, "mosaic_censoring": 0.4,
}
DEFAULT_TAGGER = "SmilingWolf/wd-vit-tagger-v3"
#: nsfwjs's five classes, in its output order.
NSFWJS_CLASSES = ("Drawing", "Hentai", "Neutral", "Porn", "Sexy")
#: The nsfwjs classes that flag an image in an SFW channel, each at the probability at or above which it does.
DEFAULT_NSFWJS_THRESHOLDS: dict[str, float] = {"Hentai": 0.5, "Porn": 0.5}
#: The image checks by name, as ``safety.required`` lists them.
IMAGE_CHECKS = ("tagger", "nsfwjs", "opennsfw")


class SafetySettings(Section):
    opennsfw: bool = True
    opennsfw_threshold: float = Field(0.5, gt=0, lt=1)
    tagger: str = DEFAULT_TAGGER
    tagger_threshold: float = Field(0.35, gt=0, lt=2)
    explicit_tags: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EXPLICIT_TAGS))
    strict_factor: float = Field(0.6, gt=0, le=1)
    tags_kept: int = Field(20, ge=0, le=200)
    tag_min_score: float = Field(0.35, ge=0, lt=1)
    nsfwjs: bool = True
    nsfwjs_thresholds: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_NSFWJS_THRESHOLDS))
    #: the checks without which SFW channels get no images; None: nsfwjs when on, else every configured check
    required: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        """The settings before the tagger became the default: ``classifiers``, ``wd14_model``, ``wd14_threshold``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        old = data.pop("classifiers", None)
        model, threshold = data.pop("wd14_model", None), data.pop("wd14_threshold", None)
        if old is not None:
            unknown = set(old) - {"opennsfw", "wd14"}
            if unknown:
                raise ValueError(f"classifiers: unknown {sorted(unknown)} (now: safety.opennsfw and safety.tagger)")
            data.setdefault("opennsfw", "opennsfw" in old)
        if model and (old is None or "wd14" in old):
            data.setdefault("tagger", model)
        if threshold is not None:
            data.setdefault("tagger_threshold", threshold)
        return data

    @field_validator("explicit_tags")
    @classmethod
    def _tag_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [f"{tag} = {score}" for tag, score in value.items() if not 0 < score < 1]
        if bad:
            raise ValueError(f"each threshold must be between 0 and 1, not {', '.join(bad)}")
        return value

    @field_validator("nsfwjs_thresholds")
    @classmethod
    def _class_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(NSFWJS_CLASSES))
        if unknown:
            raise ValueError(f"unknown nsfwjs classes {unknown} (the classes: {', '.join(NSFWJS_CLASSES)})")
        bad = [f"{name} = {score}" for name, score in value.items() if not 0 <= score <= 1]
        if bad:
            raise ValueError(f"each threshold must be between 0 and 1, not {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _required_checks(self) -> SafetySettings:
        if self.required is None:
            return self
        unknown = sorted(set(self.required) - set(IMAGE_CHECKS))
        if unknown:
            raise ValueError(f"required: unknown checks {unknown} (the checks: {', '.join(IMAGE_CHECKS)})")
        off = [name for name in self.required if name not in self.enabled_checks]
        if off:
            raise ValueError(f"required: {', '.join(off)} is turned off in [safety]; turn it on or leave it out")
        return self

    @property
    def tagger_enabled(self) -> bool:
        return self.tagger.strip().lower() not in ("", "none")

    @property
    def enabled_checks(self) -> list[str]:
        """The checks configured to run, in the order they run."""
        on = {"tagger": self.tagger_enabled, "nsfwjs": self.nsfwjs, "opennsfw": self.opennsfw}
        return [name for name in IMAGE_CHECKS if on[name]]

    @property
    def required_checks(self) -> list[str]:
        """The checks whose absence withholds every image in SFW channels (fail closed)."""
        if self.required is not None:
            return list(self.required)
        return ["nsfwjs"] if self.nsfwjs else self.enabled_checks


#: The shortest ``gallery.session_secret`` accepted: anything shorter can be guessed offline from one cookie.
MIN_SESSION_SECRET_BYTES = 32


class GallerySettings(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    database_url: str = "sqlite:///data/gallery/gallery.db"
    store: Literal["folder", "s3"] = "folder"
    store_dir: Path = Path("data/gallery/images")
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_prefix: str = ""
    handoff_ttl_s: int = Field(7 * 24 * 3600, ge=3600)
    client_id: int | None = None
    client_secret: SecretStr | None = None
    session_secret: SecretStr | None = None
    authorize_url: str = "https://discord.com/oauth2/authorize"
    session_max_age_s: int = Field(14 * 24 * 3600, ge=60)
    page_size: int = Field(24, ge=1, le=100)
    public_cache_s: float = Field(2.0, ge=0, le=300)
    max_search_chars: int = Field(200, ge=10, le=2000)
    likes_per_minute: int = Field(30, ge=1)
    reports_per_hour: int = Field(10, ge=1)
    logins_per_minute: int = Field(10, ge=1)
    #: sign-in attempts per minute from every address together: far above one client's, so one cannot spend it
    logins_per_minute_all: int = Field(600, ge=1)
    #: proxies whose X-Forwarded-For is believed (IPs or CIDRs); none: the connecting address is the client's
    trusted_proxies: list[str] = Field(default_factory=list)
    #: seconds one list query with a search may take before the visitor is asked for a narrower one
    search_timeout_s: float = Field(2.0, gt=0, le=60)
    #: the largest form body accepted (a report's 500 characters, url-encoded, fit); every other request takes none
    max_form_bytes: int = Field(16384, ge=1024, le=1048576)
    #: the oldest a member's roles, moderator rights and channel access may be before Discord is asked again
    #: (with discord.token); older and not confirmed: public images only, no moderator action
    permissions_max_age_s: int = Field(300, ge=1, le=86400)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8)") from None
        return [entry.strip() for entry in value]

    def public_url_warning(self) -> str | None:
        """Why members' Gallery links would not open for them (a loopback address), or None."""
        host = (urlsplit(self.public_url).hostname or "").lower()
        if not self.enabled or not (host == "localhost" or host.startswith("127.") or host == "::1"):
            return None
        return (f"gallery.public_url is {self.public_url}, a loopback address: the bot's Gallery links open only on "
                "this machine; set gallery.public_url (PONYBOT_GALLERY__PUBLIC_URL) to the address members use")

    @property
    def sign_in(self) -> bool:
        """Discord sign-in is offered when an OAuth client is configured; else the site is public-only."""
        return self.client_id is not None

    def require_secrets(self) -> tuple[str, str]:
        """The OAuth client secret and the cookie signing secret, or a ConfigError naming what is missing."""
        missing = [name for name, value in (("client_secret", self.client_secret),
                                            ("session_secret", self.session_secret))
                   if value is None or not value.get_secret_value()]
        if missing:
            names = " and ".join(f"gallery.{name}" for name in missing)
            raise ConfigError(f"gallery.client_id is set, so {names} must be set too (config.toml [gallery] or "
                              "PONYBOT_GALLERY__CLIENT_SECRET / PONYBOT_GALLERY__SESSION_SECRET); "
                              "remove client_id to run the gallery public-only")
        assert self.client_secret is not None and self.session_secret is not None
        session_secret = self.session_secret.get_secret_value()
        if len(session_secret.encode()) < MIN_SESSION_SECRET_BYTES:
            raise ConfigError(f"gallery.session_secret is {len(session_secret.encode())} bytes: it signs every "
                              f"sign-in cookie, so it needs at least {MIN_SESSION_SECRET_BYTES} random bytes, e.g. "
                              "the output of: python -c \"import secrets; print(secrets.token_urlsafe(48))\"")
        return self.client_secret.get_secret_value(), session_secret
