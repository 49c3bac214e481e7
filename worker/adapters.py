"""What is loaded into one resident pipeline beside its weights: LoRA adapters and embeddings.

LoRAs stay loaded (an LRU of ``model.lora_cache`` adapters per model); a job activates its own
set with its weights (``set_adapters``) and a job without LoRAs runs with them disabled.
Embeddings are added to the text encoder's token table the first time a prompt names them.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any

import torch
from safetensors.torch import load_file

from ponybot.errors import GenerationError
from ponybot.networks import LoraRef, find_embeddings
from worker.networks import Catalog, UnusableFile, check_embedding, check_lora, embedding_key, read_header

log = logging.getLogger(__name__)


def adapter_name(lora: str) -> str:
    """peft adapter names are module attribute keys: a safe one per LoRA name."""
    return "lora_" + hashlib.sha1(lora.encode()).hexdigest()[:16]


class Adapters:
    def __init__(self, pipeline: Any, catalog: Catalog, cache_size: int) -> None:
        self.pipeline = pipeline
        self.catalog = catalog
        self.cache_size = cache_size
        self.loaded: OrderedDict[str, str] = OrderedDict()  #: LoRA name -> adapter name, oldest first
        self.hashes: dict[str, str] = {}  #: LoRA name -> A1111's short hash of the loaded file
        self.embeddings: dict[str, list[int]] = {}  #: embedding name -> its token ids in the text encoder

    def use_loras(self, loras: list[LoraRef]) -> None:
        """Make exactly ``loras`` active with their weights; GenerationError naming a LoRA that cannot load."""
        active = [lora for lora in loras if lora.weight != 0]
        if not active:
            if self.loaded:
                self.pipeline.disable_lora()
            return
        for lora in active:
            self._load(lora.name, keep={item.name for item in active})
        self.pipeline.enable_lora()
        self.pipeline.set_adapters([self.loaded[lora.name] for lora in active],
                                   adapter_weights=[lora.weight for lora in active])

    def _load(self, name: str, keep: set[str]) -> None:
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return
        path = self.catalog.lora_dir / f"{name}.safetensors"
        if not path.is_file():
            raise GenerationError("lora", f"LoRA {name}: there is no {name}.safetensors in this worker's LoRA folder")
        try:
            check_lora(path, self.catalog.archs)
        except UnusableFile as error:
            raise GenerationError("lora", f"LoRA {name}: {error}") from None
        adapter = adapter_name(name)
        try:
            self.pipeline.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter,
                                            local_files_only=True)
        except Exception as error:  # diffusers and peft raise many types; the member needs the LoRA's name
            self._forget(adapter)
            message = f"LoRA {name} could not be loaded: {type(error).__name__}: {error}"
            raise GenerationError("lora", message) from error
        self.loaded[name] = adapter
        self.hashes[name] = self.catalog.lora_hash(path)
        log.info("loaded LoRA %s (%d cached)", name, len(self.loaded))
        for old in [old for old in self.loaded if old not in keep][: max(0, len(self.loaded) - self.cache_size)]:
            self._forget(self.loaded.pop(old))
            self.hashes.pop(old, None)
            log.info("unloaded LoRA %s (least recently used)", old)

    def _forget(self, adapter: str) -> None:
        try:
            self.pipeline.delete_adapters(adapter)
        except (ValueError, KeyError, AttributeError):  # never loaded far enough to be listed
            pass

    def use_embeddings(self, texts: list[str]) -> list[str]:
        """Load the usable embeddings named in ``texts`` (once); returns the names used."""
        usable = [info.name for info in self.catalog.scan("embeddings") if info.problem is None]
        used = find_embeddings(texts, usable)
        for name in used:
            if name not in self.embeddings:
                self.embeddings[name] = self._add_embedding(name)
        return used

    def _add_embedding(self, name: str) -> list[int]:
        path = self.catalog.embeddings_dir / f"{name}.safetensors"
        try:
            check_embedding(path, self.catalog.archs)
            vectors = load_file(str(path))[embedding_key(read_header(path))]
        except (UnusableFile, OSError, ValueError) as error:
            raise GenerationError("embedding", f"embedding {name}: {error}") from None
        vectors = vectors.reshape(-1, vectors.shape[-1])
        text_encoder = self.pipeline.text_encoder
        table = text_encoder.get_input_embeddings()
        first = table.weight.shape[0]
        text_encoder.resize_token_embeddings(first + vectors.shape[0])
        with torch.no_grad():
            text_encoder.get_input_embeddings().weight[first:] = vectors.to(table.weight)
        log.info("loaded embedding %s (%d vectors)", name, vectors.shape[0])
        return list(range(first, first + vectors.shape[0]))
