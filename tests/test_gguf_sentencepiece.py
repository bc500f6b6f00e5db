"""A SentencePiece GGUF (Gemma, Llama 2, Mistral) loads with the tokenizer it was trained with (issue 33).

The reference is no code of ours: the ``sentencepiece`` package trains a small BPE model on text made here,
the ``gguf`` package writes its pieces, scores and token types into a tiny Llama, and the project's
conversion must then give ``sentencepiece``'s own ids, string for string, on a few thousand varied strings.
Two files, as the families ship them: a Gemma 3 (no space prefix, chat markers as user-defined pieces) and a
Llama 2 (a space prefix before the text, no user-defined pieces).
"""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path

import gguf
import pytest
import sentencepiece as spm  # the reference: a test dependency (requirements/dev.txt)

from gguf_model import finish, open_writer
from thinkless_lite.config import ModelConfig

MARKERS = ["<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>"]  # user-defined pieces (Gemma's)
WORDS = ("the quick brown fox jumps over lazy dog what is answer to this question think about it step carry "
         "digit tens ones hundreds reasoning short direct model user assistant hello there sum plus equals "
         "café naïve straße über garçon résumé déjà vu").split()
UNSEEN = ["日本語", "中文", "😀", "Ω", "ß", "ü", "ñ", "€", "→", "…", "\u00a0", "\u200b", "ﬁ", "Ａ"]  # most never trained
SYLLABLES = "ka ri to mu sen da lo qui ver ta ne shi ion ment ing er st th ch".split()
PUNCT = list(".,;:!?()[]{}\"'-_/\\*+=%$#@&|^~`<>")
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                  "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def pseudo_word(rng: random.Random) -> str:
    """Words made of shared syllables: their segmentation depends on which merges win."""
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))


def corpus(rng: random.Random) -> list[str]:
    lines = [" ".join(pseudo_word(rng) for _ in range(rng.randint(3, 12))) for _ in range(3000)]
    for _ in range(3000):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.4:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 100000)))
        lines.append(" ".join(words) + rng.choice([".", "?", "!", ",", ""]))
    lines += [f"{m}user {rng.choice(WORDS)}{e}" for m, e in [(MARKERS[0], MARKERS[1]), (MARKERS[2], MARKERS[3])]
              for _ in range(50)]
    return lines


def varied_strings(rng: random.Random, n: int, markers: list[str]) -> list[str]:
    """Words, numbers, punctuation, unicode (mostly unseen: byte fallback), runs of spaces, leading spaces,
    newlines and tabs, and chat markers where the file has them."""
    fixed = ["", " ", "  ", "a", " a", "  leading", "trailing ", "\n", "\t", "x\ny", "1234567890", "3.14159",
             "-42", "don't", "e-mail", "日本語のテキスト", "😀😀", "The quick brown fox jumps over the lazy dog."]
    if markers:
        start, end, im_start, im_end = MARKERS
        fixed += [f"{start}user\nWhat is 2 + 2?{end}\n{start}model\n",
                  f"{im_start}system\nYou are helpful.{im_end}\n{im_start}user\n hi{im_end}"]
    fixed += ["[INST] What is 2 + 2? [/INST] 4", "<<SYS>>\nBe brief.\n<</SYS>>"]
    kinds = [WORDS, [pseudo_word(rng) for _ in range(300)], [str(i) for i in (0, 7, 42, 1999, 31337, 2024)], PUNCT,
             UNSEEN] + [markers] * bool(markers)
    out = list(fixed)
    while len(out) < n:
        parts = []
        for _ in range(rng.randint(1, 10)):
            choice = rng.choice(rng.choice(kinds))
            if rng.random() < 0.2:
                choice = choice.upper() if rng.random() < 0.5 else choice.capitalize()
            parts.append(choice + rng.choice(["", " ", " ", " ", "  ", "\n", "\t"]))
        text = "".join(parts)
        out.append(rng.choice(["", "", " ", "  ", "\n"]) + text)
    return out


def train_sentencepiece(prefix: bool, markers: list[str]):
    """A SentencePiece BPE trained as Gemma's and Llama's are (identity normalisation, spaces kept, byte
    fallback, digits split), ids 0-3 = <pad> <eos> <bos> <unk> (Gemma's order)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(random.Random(0))), model_writer=model, model_type="bpe", vocab_size=1500,
        hard_vocab_limit=False, byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=prefix, split_digits=True, allow_whitespace_only_pieces=True, character_coverage=1.0,
        user_defined_symbols=markers, pad_id=0, eos_id=1, bos_id=2, unk_id=3, num_threads=1, minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def token_type(sp, i: int, markers: list[str]) -> int:
    """What llama.cpp's converter writes for a piece (gguf.TokenType)."""
    if sp.is_unknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.is_control(i):
        return gguf.TokenType.CONTROL
    if sp.is_byte(i):
        return gguf.TokenType.BYTE
    if sp.is_unused(i):
        return gguf.TokenType.UNUSED
    return gguf.TokenType.USER_DEFINED if sp.id_to_piece(i) in markers else gguf.TokenType.NORMAL


def write_sentencepiece_gguf(path: Path, sp, *, arch: str, prefix: bool, markers: list[str]) -> Path:
    """A tiny ``arch`` model (llama or gemma3) whose tokenizer is ``sp``: tokenizer.ggml.model = llama (what
    llama.cpp's converter writes for SentencePiece), tokens, scores, token types, no merges."""
    n = sp.get_piece_size()
    writer = open_writer(path, arch, n)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i) for i in range(n)])
    writer.add_token_scores([sp.get_score(i) for i in range(n)])
    writer.add_token_types([token_type(sp, i, markers) for i in range(n)])
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_pad_token_id(sp.pad_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(prefix)
    if markers:
        writer.add_chat_template(GEMMA_TEMPLATE)
    return finish(writer, path, arch, n)


# Gemma 3's file (the one the issue met: transformers builds it a Unigram model) and Llama 2's.
FAMILIES = {"gemma": dict(arch="gemma3", prefix=False, markers=MARKERS),
            "llama2": dict(arch="llama", prefix=True, markers=[])}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory) -> dict:
    """A trained SentencePiece, its GGUF, and the GGUF converted the project's way (in a private cache)."""
    import os

    from transformers import AutoTokenizer

    from thinkless_lite.gguf import gguf_to_hf

    spec = FAMILIES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    sp = train_sentencepiece(spec["prefix"], spec["markers"])
    path = write_sentencepiece_gguf(folder / f"{request.param}.gguf", sp, **spec)
    old = os.environ.get("THINKLESS_LITE_CACHE")
    os.environ["THINKLESS_LITE_CACHE"] = str(folder / "cache")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = gguf_to_hf(path)
            tokenizer = AutoTokenizer.from_pretrained(converted)
        yield {"sp": sp, "gguf": path, "tokenizer": tokenizer, "name": request.param, **spec}
    finally:
        if old is None:
            os.environ.pop("THINKLESS_LITE_CACHE", None)
        else:
            os.environ["THINKLESS_LITE_CACHE"] = old


def test_the_reference_covers_what_it_should(family):
    sp = family["sp"]
    strings = varied_strings(random.Random(1), 3000, family["markers"])
    ids = [i for s in strings for i in sp.encode(s)]
    assert any(sp.is_byte(i) for i in ids)  # byte fallback is exercised
    words = " ".join(WORDS)
    assert len(sp.encode(words)) < 0.4 * len(words)  # merges, not characters
    for marker in family["markers"]:
        assert len(sp.encode(marker)) == 1 + family["prefix"]


def test_ids_equal_sentencepiece_and_decode_round_trips(family):
    sp, tokenizer = family["sp"], family["tokenizer"]
    strings = varied_strings(random.Random(1), 3000, family["markers"])
    wrong = [(s, sp.encode(s, out_type=str), tokenizer.convert_ids_to_tokens(got))
             for s in strings if (got := tokenizer(s, add_special_tokens=False)["input_ids"]) != sp.encode(s)]
    assert not wrong, f"{len(wrong)} of {len(strings)} strings differ from sentencepiece, e.g. {wrong[:3]}"
    for s in strings:
        ids = sp.encode(s)
        assert tokenizer.decode(ids) == sp.decode(ids) == s, s
    # the file's BOS policy: BOS first, once, no EOS
    assert tokenizer("hello there")["input_ids"] == [sp.bos_id(), *sp.encode("hello there")]


def test_the_special_tokens_are_the_files(family):
    sp, tokenizer = family["sp"], family["tokenizer"]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (sp.bos_id(), sp.eos_id(),
                                                                                        sp.unk_id())
    for marker in family["markers"]:  # user-defined pieces stay single tokens, wherever they sit
        assert tokenizer(f"a{marker}b", add_special_tokens=False)["input_ids"] == sp.encode(f"a{marker}b")
    assert tokenizer.decode([sp.bos_id(), *sp.encode("hi")], skip_special_tokens=True) == "hi"
    assert tokenizer.chat_template == (GEMMA_TEMPLATE if family["markers"] else None)  # the file's own


def test_the_project_loads_it_without_model_tokenizer(family):
    """What a user with only the GGUF runs: the load-time check accepts the rebuilt tokenizer."""
    from thinkless_lite.vocabulary import load_tokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer, _ = load_tokenizer(ModelConfig(name_or_path=str(family["gguf"])))
    sp = family["sp"]
    text = "The quick brown fox jumps over the lazy dog."
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text)


def test_a_conversion_another_process_finished_first_is_kept(family, tmp_path, monkeypatch):
    """Two processes converting one file at once (two accelerate ranks, two test workers): each writes a folder of
    its own, and the one that finds the other's finished conversion in place keeps it and drops its own."""
    import thinkless_lite.gguf as gguf_module

    monkeypatch.setenv("THINKLESS_LITE_CACHE", str(tmp_path / "cache"))
    target = gguf_module.converted_folder(family["gguf"])
    really_unmark = gguf_module.unmark_dequantised

    def other_process_finishes_first(model):
        monkeypatch.setattr(gguf_module, "unmark_dequantised", really_unmark)
        monkeypatch.setattr(gguf_module.os, "getpid", lambda: -1)  # the other process's partial folder
        gguf_module.gguf_to_hf(family["gguf"])
        monkeypatch.undo()  # our own pid (and the cache setting) again
        monkeypatch.setenv("THINKLESS_LITE_CACHE", str(tmp_path / "cache"))
        (target / "written-by-the-other").write_text("")
        really_unmark(model)

    monkeypatch.setattr(gguf_module, "unmark_dequantised", other_process_finishes_first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert gguf_module.gguf_to_hf(family["gguf"]) == target
    assert (target / "written-by-the-other").exists()  # the finished folder was not replaced under its reader
    assert (target / gguf_module.COMPLETE_MARKER).exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no partial folder left
