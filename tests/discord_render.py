"""A Discord message as a member sees it, drawn from the message JSON the bot sent to the Discord fake.

``render(message, images)`` turns the fake's stored message (content, embeds, attachments, components) into one
small HTML page styled like Discord's dark theme: the docs' pictures of a result are screenshots of this page,
never drawn by hand. Only what the bot sends is drawn: Discord's markdown subset it uses (bold, italics, code,
``-#`` subtext, mentions), embeds with fields, image attachments, and rows of buttons.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any

#: Discord's button styles (component type 2): primary, secondary, success, danger, link.
BUTTON_STYLES = {1: "primary", 2: "secondary", 3: "success", 4: "danger", 5: "link"}

CSS = """
body { margin: 0; background: #313338; font: 16px/1.375 "gg sans", "Noto Sans", "Helvetica Neue", Arial, sans-serif;
       color: #dbdee1; }
.message { display: flex; gap: 16px; padding: 16px 48px 16px 16px; width: 720px; }
.avatar { width: 40px; height: 40px; border-radius: 50%; background: #5865f2; color: #fff; display: flex;
          align-items: center; justify-content: center; font-weight: 600; flex: none; }
.name { color: #f2f3f5; font-weight: 500; }
.tag { background: #5865f2; color: #fff; font-size: 10px; font-weight: 600; border-radius: 3px; padding: 1px 4px;
       margin-left: 4px; vertical-align: 2px; }
.time { color: #949ba4; font-size: 12px; margin-left: 6px; }
.content p { margin: 2px 0; white-space: pre-wrap; }
.subtext { color: #949ba4; font-size: 13px; }
.mention { background: rgba(88, 101, 242, .3); color: #c9cdfb; border-radius: 3px; padding: 0 2px; }
code { background: #2b2d31; border-radius: 4px; padding: 1px 3px; font-size: 85%; }
.attachments { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 6px; }
.attachments img { width: 256px; height: 256px; object-fit: cover; border-radius: 8px; }
.embed { background: #2b2d31; border-left: 4px solid #1e1f22; border-radius: 4px; padding: 8px 16px 16px 12px;
         margin-top: 6px; max-width: 520px; }
.embed .title { color: #f2f3f5; font-weight: 600; margin-top: 8px; }
.field { margin-top: 8px; }
.field .fname { color: #f2f3f5; font-weight: 600; font-size: 14px; }
.row { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 8px; }
.button { border-radius: 3px; padding: 2px 16px; height: 32px; display: inline-flex; align-items: center; gap: 4px;
          font-size: 14px; font-weight: 500; color: #fff; }
.primary { background: #5865f2; } .secondary { background: #4e5058; } .success { background: #248046; }
.danger { background: #da373c; } .link { background: #4e5058; }
.link::after { content: " \\2197"; }
"""


def markdown(text: str) -> str:
    """The markdown subset the bot writes, as HTML; everything else stays literal text."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<![*\w])\*([^*\n]+)\*(?!\*)", r"<em>\1</em>", out)
    return re.sub(r"&lt;@!?(\d+)&gt;", r'<span class="mention">@member</span>', out)


def paragraphs(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith("-# "):
            lines.append(f'<p class="subtext">{markdown(line[3:])}</p>')
        else:
            lines.append(f"<p>{markdown(line)}</p>")
    return "".join(lines)


def embed(data: dict[str, Any]) -> str:
    colour = f' style="border-left-color: #{data["color"]:06x}"' if isinstance(data.get("color"), int) else ""
    parts = [f'<div class="title">{markdown(data["title"])}</div>'] if data.get("title") else []
    if data.get("description"):
        parts.append(paragraphs(data["description"]))
    for field in data.get("fields") or []:
        parts.append(f'<div class="field"><div class="fname">{markdown(field["name"])}</div>'
                     f"{paragraphs(field['value'])}</div>")
    if (data.get("footer") or {}).get("text"):
        parts.append(f'<p class="subtext">{markdown(data["footer"]["text"])}</p>')
    return f'<div class="embed"{colour}>{"".join(parts)}</div>'


def button(data: dict[str, Any]) -> str:
    style = BUTTON_STYLES.get(data.get("style", 2), "secondary")
    emoji = (data.get("emoji") or {}).get("name") or ""
    label = " ".join(part for part in (emoji, data.get("label") or "") if part)
    disabled = ' style="opacity: .5"' if data.get("disabled") else ""
    return f'<span class="button {style}"{disabled}>{html.escape(label)}</span>'


def render(message: dict[str, Any], images: list[bytes], *, author: str = "ponybot",
           time: str = "Today at 12:00") -> str:
    """One message as an HTML page; ``images`` are the attachments' bytes, in the message's order."""
    shown = "".join(f'<img alt="{html.escape(attachment["filename"])}" '
                    f'src="data:image/png;base64,{base64.b64encode(data).decode()}">'
                    for attachment, data in zip(message["attachments"], images, strict=True))
    rows = "".join('<div class="row">' + "".join(button(item) for item in row.get("components", [])
                                                 if item.get("type") == 2) + "</div>"
                   for row in message.get("components") or [] if row.get("type") == 1)
    embeds = "".join(embed(item) for item in message.get("embeds") or [])
    return (f'<!doctype html><html><head><meta charset="utf-8"><style>{CSS}</style></head><body>'
            f'<div class="message" id="message"><div class="avatar">{html.escape(author[:1].upper())}</div><div>'
            f'<div><span class="name">{html.escape(author)}</span><span class="tag">APP</span>'
            f'<span class="time">{html.escape(time)}</span></div>'
            f'<div class="content">{paragraphs(message.get("content") or "")}</div>{embeds}'
            f'<div class="attachments">{shown}</div>{rows}</div></div></body></html>')
