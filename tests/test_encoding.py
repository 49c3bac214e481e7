from __future__ import annotations

from typing import Any

import pytest
import torch

from ponybot.prompt_syntax import BREAK, parse_emphasis, strip_emphasis


@pytest.fixture
def encoder(generator: Any) -> Any:
    return generator.encoder


def _reference(encoder: Any, text: str, layer: int) -> torch.Tensor:
    """transformers' own hidden states, as A1111 reads them, through diffusers-style tokenization."""
    tokens = encoder.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = encoder.text_encoder(tokens.input_ids, output_hidden_states=True)
        if layer == 1:
            return out.last_hidden_state
        return encoder.final_layer_norm(out.hidden_states[-layer])


def test_clip_skip_2_is_penultimate_plus_final_norm_for_both_prompts(encoder: Any) -> None:
    positive, negative = encoder.encode_pair("pinkie pie", "blurry, ugly", 2)
    assert torch.allclose(positive, _reference(encoder, "pinkie pie", 2), atol=1e-6)
    assert torch.allclose(negative, _reference(encoder, "blurry, ugly", 2), atol=1e-6)
    assert not torch.allclose(positive, _reference(encoder, "pinkie pie", 1), atol=1e-3)


def test_clip_skip_1_is_last_hidden_state(encoder: Any) -> None:
    positive, negative = encoder.encode_pair("pinkie pie", "blurry", 1)
    assert torch.allclose(positive, _reference(encoder, "pinkie pie", 1), atol=1e-6)
    assert torch.allclose(negative, _reference(encoder, "blurry", 1), atol=1e-6)


def test_long_prompt_fully_encoded(encoder: Any) -> None:
    words = " ".join(["abc"] * 50)  # about 150+ tokens before the tail
    base = f"{words} pinkie pie with a hat"
    changed = f"{words} pinkie pie with a cat"
    assert len(encoder.chunks(base)) >= 3
    first, second = encoder.encode(base, 2), encoder.encode(changed, 2)
    assert first.shape == (1, 77 * len(encoder.chunks(base)), 32)
    assert not torch.allclose(first, second)  # the last words count
    assert torch.allclose(first[:, :77], second[:, :77])  # the first chunk is untouched


def test_negative_padded_to_prompt_length(encoder: Any) -> None:
    positive, negative = encoder.encode_pair(" ".join(["abc"] * 40), "blurry", 2)
    assert positive.shape == negative.shape
    assert positive.shape[1] == 77 * 2


def test_chunks_break_at_a_comma(encoder: Any) -> None:
    prompt = "a" * 70 + ", bbbbbbbbbb"
    chunks = encoder.chunks(prompt)
    assert len(chunks) == 2
    assert chunks[0].ids[-1] == encoder.comma
    assert len(chunks[0].ids) == 71


def test_emphasis_parse() -> None:
    assert parse_emphasis("a (b) [c] (d:1.5) \\(e\\)") == [
        ("a ", 1.0), ("b", 1.1), (" ", 1.0), ("c", 1 / 1.1), (" ", 1.0), ("d", 1.5), (" (e)", 1.0)
    ]
    assert parse_emphasis("(cat:1.0)") == parse_emphasis("cat")


def test_emphasis_changes_embedding(encoder: Any) -> None:
    plain = encoder.encode("a cat sitting", 2)
    assert torch.equal(encoder.encode("a (cat:1.0) sitting", 2), plain)
    assert not torch.allclose(encoder.encode("a (cat:1.5) sitting", 2), plain)


def test_break_starts_a_new_chunk(encoder: Any) -> None:
    assert parse_emphasis("cat BREAK dog") == [("cat", 1.0), BREAK, ("dog", 1.0)]
    assert parse_emphasis("(a BREAK b:1.2)") == [("a", 1.2), BREAK, ("b", 1.2)]  # brackets don't weigh BREAK
    assert parse_emphasis("BREAKFAST, Break") == [("BREAKFAST, Break", 1.0)]  # the word, in capitals, only
    assert strip_emphasis("pinkie BREAK pie") == "pinkie pie"  # the policy reads the words apart

    chunks = encoder.chunks("pinkie pie BREAK (rainbow dash:1.2) BREAK BREAK")
    assert len(chunks) == 2
    assert chunks[0].ids == encoder.chunks("pinkie pie")[0].ids
    assert chunks[1].ids == encoder.chunks("rainbow dash")[0].ids and set(chunks[1].weights) == {1.2}
    together, apart = encoder.encode("pinkie pie rainbow dash", 2), encoder.encode("pinkie pie BREAK rainbow dash", 2)
    assert together.shape[1] == 77 and apart.shape[1] == 2 * 77
    assert torch.equal(apart[:, :77], encoder.encode("pinkie pie", 2))


def test_restore_mean_is_bounded() -> None:
    from worker.encoding import MAX_MEAN_RATIO, restore_mean

    row = torch.tensor([[1.0, -1.0], [2.0, -2.0]])  # mean exactly 0
    assert torch.equal(restore_mean(row, torch.tensor(0.5)), row)  # no division by zero: left as it is
    near = torch.tensor([[1.0, -1.0 + 1e-6]])
    assert torch.allclose(restore_mean(near, torch.tensor(0.5)), near * MAX_MEAN_RATIO)  # clamped, not x1e6
    assert torch.equal(restore_mean(row + 1, torch.tensor(-3.0)), row + 1)  # never flips the sign
    assert torch.allclose(restore_mean(row + 1, torch.tensor(1.2)).mean(), torch.tensor(1.2))  # A1111's rule


def test_weights_with_a_zero_mean_never_blow_up_the_embedding(encoder: Any) -> None:
    """A1111 divides by the weighted mean; a weight that makes it ~0 must not explode the embedding."""
    import copy

    from worker.encoding import MAX_MEAN_RATIO, PromptEncoder

    # the tiny model's final layer norm has no bias, so its rows have mean ~0 already; a real CLIP's has one
    text_encoder = copy.deepcopy(encoder.text_encoder)
    with torch.no_grad():
        getattr(text_encoder, "text_model", text_encoder).final_layer_norm.bias.fill_(0.5)
    biased = PromptEncoder(encoder.tokenizer, text_encoder)
    plain = biased.encode_chunks(biased.chunks("a cat sitting"), 2)[0]
    chunk = biased.chunks("a (cat:2) sitting")[0]
    rows = [1 + i for i, weight in enumerate(chunk.weights) if weight == 2.0]  # +1: the start token
    weight = 1 - float(plain.sum() / plain[rows].sum())  # the weight that makes the row's sum (and mean) zero
    prompt = f"a (cat:{weight:.6f}) sitting"
    [parsed] = [w for text, w in parse_emphasis(prompt) if "cat" in text]
    scale = torch.ones(plain.shape[0])
    scale[rows] = parsed
    assert abs(float(plain.mean() / (plain * scale[:, None]).mean())) > 1000  # what A1111 would multiply by

    encoded = biased.encode(prompt, 2)
    assert torch.isfinite(encoded).all()
    assert float(encoded.abs().max()) <= MAX_MEAN_RATIO * abs(parsed) * float(plain.abs().max()) + 1e-4
    # ordinary emphasis keeps A1111's mean restoration exactly
    emphasised = biased.encode("a (cat:1.3) sitting", 2)[0]
    assert torch.allclose(emphasised.mean(), plain.mean(), atol=1e-5)
