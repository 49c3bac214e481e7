"""LoRAs and textual-inversion embeddings from the A1111 ecosystem: find, check, hash and load them.

Files are checked from their safetensors header before anything is loaded (a corrupt file, one
that is no LoRA or one made for another architecture is refused with its name and the reason),
so the worker can tell the bot what it can use in its heartbeat. LoRAs load through diffusers'
own ``load_lora_weights`` (peft); embeddings become extra rows of the text encoder's token table.
Pickle formats (``.pt``, ``.bin``, ``.ckpt``) are never loaded: loading them can run code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ponybot.workers import NetworkInfo

log = logging.getLogger(__name__)

MAX_HEADER = 100 * 1024 * 1024
PICKLE_SUFFIXES = (".pt", ".bin", ".ckpt", ".pth")


@dataclass(frozen=True)
class Architecture:
    """What a LoRA or embedding must fit: the text encoder's width and the UNet's cross-attention width."""

    text_width: int
    cross_attention: int


class UnusableFile(Exception):
    """A LoRA or embedding file that cannot be used; the message says why."""


def read_header(path: Path) -> dict[str, Any]:
    """The tensors a .safetensors file describes (name -> dtype, shape, offsets), checked against its size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            length = int.from_bytes(file.read(8), "little")
            if not 2 <= length <= min(MAX_HEADER, size - 8):
                raise UnusableFile("not a readable .safetensors file (bad header length)")
            header = json.loads(file.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise UnusableFile(f"not a readable .safetensors file ({type(error).__name__})") from None
    if not isinstance(header, dict):
        raise UnusableFile("not a readable .safetensors file (header is not a table)")
    header.pop("__metadata__", None)
    end = 0
    for name, entry in header.items():
        if not isinstance(entry, dict) or "shape" not in entry or "data_offsets" not in entry:
            raise UnusableFile(f"not a readable .safetensors file (tensor {name} has no shape)")
        end = max(end, int(entry["data_offsets"][1]))
    if end != size - 8 - length:
        raise UnusableFile("corrupt or truncated .safetensors file (its size does not match its header)")
    return header


def _shape(entry: dict[str, Any]) -> list[int]:
    return [int(side) for side in entry["shape"]]


def check_lora(path: Path, archs: list[Architecture]) -> None:
    """UnusableFile unless ``path`` is a LoRA (kohya/A1111, diffusers or peft keys) that fits one of ``archs``."""
    header = read_header(path)
    names = list(header)
    if not any(marker in name for name in names for marker in ("lora_down", "lora_A", "lora.down")):
        raise UnusableFile("not a LoRA (no lora_down / lora_A weights)")
    if any(name.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for name in names):
        raise UnusableFile("made for SDXL (two text encoders); this model is SD 1.5")
    widths: set[tuple[str, int]] = set()
    for name, entry in header.items():
        down = any(marker in name for marker in ("lora_down.weight", "lora_A.weight", "lora.down.weight"))
        if down and any(part in name for part in ("attn2_to_k", "attn2.to_k", "attn2_to_v", "attn2.to_v")):
            widths.add(("cross-attention", _shape(entry)[1]))
        elif down and name.startswith(("lora_te_", "text_encoder.")) and "q_proj" in name:
            widths.add(("text encoder", _shape(entry)[1]))
    for arch in archs:
        wanted = {"cross-attention": arch.cross_attention, "text encoder": arch.text_width}
        if all(wanted[kind] == width for kind, width in widths):
            return
    kind, width = sorted(widths)[0]
    raise UnusableFile(f"made for another architecture ({kind} width {width}, this model's is "
                       f"{archs[0].cross_attention if kind == 'cross-attention' else archs[0].text_width})")


def embedding_key(header: dict[str, Any]) -> str:
    """The tensor holding an embedding's vectors: A1111's ``emb_params``, or a file's only tensor."""
    if "clip_g" in header or "clip_l" in header:
        raise UnusableFile("made for SDXL (clip_l / clip_g vectors); this model is SD 1.5")
    if "emb_params" in header:
        return "emb_params"
    if len(header) == 1:
        return next(iter(header))
    raise UnusableFile("not a textual-inversion embedding (expected one tensor or emb_params)")


def check_embedding(path: Path, archs: list[Architecture]) -> None:
    header = read_header(path)
    shape = _shape(header[embedding_key(header)])
    width = shape[-1]
    if len(shape) not in (1, 2) or not any(arch.text_width == width for arch in archs):
        raise UnusableFile(f"made for another architecture (vectors of width {width}, this model's text encoder "
                           f"has {archs[0].text_width})")


def model_hash(path: Path) -> str:
    """A1111's short model hash: the first 10 hex digits of the file's sha256."""
    return _sha256(path, skip=0)[:10]


def lora_hash(path: Path) -> str:
    """A1111's ``Lora hashes`` value: the first 12 hex digits of kohya's addnet hash (sha256 after the header)."""
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
    return _sha256(path, skip=8 + length)[:12]


def _sha256(path: Path, *, skip: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        file.seek(skip)
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Catalog:
    """The LoRA and embedding folders as last scanned; each file checked once per (size, mtime)."""

    lora_dir: Path
    embeddings_dir: Path
    archs: list[Architecture]
    _checked: dict[tuple[Path, int, int], str | None] = field(default_factory=dict)
    _hashes: dict[tuple[Path, int, int], str] = field(default_factory=dict)

    def scan(self, kind: str) -> list[NetworkInfo]:
        """``"loras"`` or ``"embeddings"``: every file in the folder, usable or with its problem."""
        folder = self.lora_dir if kind == "loras" else self.embeddings_dir
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in PICKLE_SUFFIXES:
                found.append(NetworkInfo(name=path.stem, problem="a pickle file (loading it can run code): "
                                         "only .safetensors files are used"))
            elif path.suffix.lower() == ".safetensors":
                found.append(NetworkInfo(name=path.stem, problem=self.problem(path, kind)))
        return found

    def problem(self, path: Path, kind: str) -> str | None:
        """Why the file cannot be used, or None (checked again only when the file changes)."""
        stamp = self._stamp(path)
        if stamp not in self._checked:
            try:
                (check_lora if kind == "loras" else check_embedding)(path, self.archs)
                self._checked[stamp] = None
            except UnusableFile as error:
                self._checked[stamp] = str(error)
        return self._checked[stamp]

    def lora_hash(self, path: Path) -> str:
        stamp = self._stamp(path)
        if stamp not in self._hashes:
            self._hashes[stamp] = lora_hash(path)
        return self._hashes[stamp]

    @staticmethod
    def _stamp(path: Path) -> tuple[Path, int, int]:
        stat = path.stat()
        return path, stat.st_size, stat.st_mtime_ns
