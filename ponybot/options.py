"""From the options someone gave to a request, the same on every surface (``/generate``, ``ponybot generate``,
what comes next): each option as given, else the member's default, else the model's, else the operator's;
then the server's style."""

from __future__ import annotations

from typing import Any

from ponybot.errors import N_, InvalidRequestError, Reason
from ponybot.member_defaults import MemberDefaults
from ponybot.networks import check_lora_count, parse_loras
from ponybot.schemas import (
    MAX_INPAINT_PADDING,
    MAX_MASK_BLUR,
    MAX_PROMPT_CHARS,
    GenerationRequest,
    InpaintArea,
    InpaintSpec,
    ResizeMode,
    Sampler,
    build_request,
    parse_size,
    read_size,
    shorten,
)
from ponybot.settings import Settings
from ponybot.styles import Style, apply_style


def size_option(text: str) -> tuple[int, int]:
    """A size someone typed (``"512x768"``); InvalidRequestError naming ``size``, in catalog words, if it is not one."""
    size = read_size(text)
    if isinstance(size, Reason):
        raise InvalidRequestError("size", size.message, **size.params)
    return size


def make_request(settings: Settings, options: dict[str, Any], personal: MemberDefaults | None = None,
                 style: Style | None = None) -> GenerationRequest:
    """The request, its model checked against ``[models]``; InvalidRequestError naming the option at fault.

    ``options``: the request's fields, None where not given; ``size`` as ``(width, height)`` or ``"WxH"``,
    ``sampler`` as :class:`Sampler` or its value, ``model`` a name from ``[models]`` (None: the default model).
    """
    defaults = settings.defaults
    given = {key: value for key, value in options.items() if value is not None}
    model = given.pop("model", None) or settings.default_model
    entry = settings.models.get(model)
    if entry is None:
        raise InvalidRequestError("model", N_("there is no model {model} here (models: {models})"),
                                  model=repr(model), models=", ".join(settings.models))
    if isinstance(given.get("size"), str):
        given["size"] = size_option(given["size"])
    if isinstance(given.get("sampler"), str) and given["sampler"] not in {s.value for s in Sampler}:
        names = ", ".join(s.value for s in Sampler)  # a command line's text (a slash command offers choices)
        raise InvalidRequestError("sampler", N_("must be one of {names}, got {value}"), names=names,
                                  value=shorten(given["sampler"]))
    operator: dict[str, Any] = {
        "negative_prompt": defaults.negative_prompt if entry.negative_prompt is None else entry.negative_prompt,
        "steps": defaults.steps, "cfg": defaults.cfg, "count": defaults.count, "sampler": defaults.sampler,
        "clip_skip": entry.clip_skip or defaults.clip_skip, "size": parse_size(defaults.size), "model": model,
    }
    values = {**operator, **(personal.generation_options() if personal else {}), **given}
    width, height = values.pop("size")
    if style is not None:
        prompt, negative = apply_style(style, values.get("prompt", ""), values["negative_prompt"])
        if len(prompt) > MAX_PROMPT_CHARS or len(negative) > MAX_PROMPT_CHARS:
            raise InvalidRequestError("style", N_("with style {style} the prompt is over {limit} characters"),
                                      style=style.name, limit=MAX_PROMPT_CHARS)
        values["prompt"], values["negative_prompt"] = prompt, negative
    try:
        request = build_request(settings.limits, width=width, height=height, **values)
    except InvalidRequestError as error:
        if personal is not None and error.field in options and options[error.field] is None:
            raise InvalidRequestError(
                error.field, N_("your default is not allowed on this bot ({reason}): change it with /settings"),
                reason=error.reason) from None
        raise
    check_lora_count(parse_loras(request.prompt), settings.model.max_loras)
    return request


#: The options that only mean something with a mask.
MASK_OPTIONS = ("inpaint_area", "mask_blur", "inpaint_padding")


def make_edit(settings: Settings, *, image: bool, mask: bool, options: dict[str, Any]
              ) -> tuple[float, ResizeMode, InpaintSpec | None]:
    """How a picture given with a request is used, the same on every surface (``/generate image: mask:``,
    ``ponybot generate --image --mask``): its strength and resize mode, and the inpaint settings when a mask
    comes with it (its key is filled in once it is stored). InvalidRequestError naming the option at fault.

    ``options``: ``strength``, ``resize_mode`` and :data:`MASK_OPTIONS`, None where not given.
    """
    given = {key: value for key, value in options.items() if value is not None}
    if not image and ({"strength", "resize_mode"} & given.keys()):
        raise InvalidRequestError("image", N_("strength and resize_mode only apply with an image"))
    if mask and not image:
        raise InvalidRequestError("mask", N_("a mask paints over a picture: give the picture as image too"))
    if not mask and (named := [name for name in MASK_OPTIONS if name in given]):
        raise InvalidRequestError("mask", N_("{options} only apply with a mask (white where the picture is "
                                             "redrawn)"), options=", ".join(named))
    strength = float(given.get("strength", settings.defaults.strength))
    resize_mode = ResizeMode(given.get("resize_mode", ResizeMode.JUST_RESIZE))
    if not mask:
        return strength, resize_mode, None
    area = given.get("inpaint_area", InpaintArea.WHOLE)
    if area not in {a.value for a in InpaintArea}:  # a command line's text (a slash command offers choices)
        raise InvalidRequestError("inpaint_area", N_("must be one of {names}, got {value}"),
                                  names=", ".join(a.value for a in InpaintArea), value=shorten(area))
    for name, high in (("mask_blur", MAX_MASK_BLUR), ("inpaint_padding", MAX_INPAINT_PADDING)):
        if not 0 <= given.get(name, 0) <= high:
            raise InvalidRequestError(name, N_("must be from {low} to {high}, got {value}"), low=0, high=high,
                                      value=given[name])
    return strength, resize_mode, InpaintSpec(area=InpaintArea(area), mask_blur=given.get("mask_blur", 4),
                                              padding=given.get("inpaint_padding", 32))
