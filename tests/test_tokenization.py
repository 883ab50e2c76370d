"""Queries are tokenized once (prompt + target) and split at the character boundary; long
queries keep their end; chunks of a long document start with BOS. Three real tokenizers built
locally with `tokenizers`: byte-level BPE (GPT-2), a SentencePiece-style one whose normalizer
adds a dummy prefix (Llama-2's tokenizer.json layout), and one that adds BOS and EOS; plus a
Python tokenizer without offsets support."""
import re

import pytest

from tda.engine.batching import query_sequence
from tda.errors import QueryError
from tda.indexer.documents import chunk_document
from tda.schemas.corpus import Document

QUERIES = [("Allan Peiper was born in", " Alexandra"), ("Paris is the capital of ", "France"),
           ("The official language of Brazil is", " Portuguese.")]


@pytest.fixture(scope="module")
def texts():
    from tda.tests import helpers
    return helpers.sentences(300)


def _fast(tok, special):
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


@pytest.fixture(scope="module")
def bpe(texts):
    from tda.evaluation.tokenizer import train_bpe_tokenizer
    return train_bpe_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="module")
def sentencepiece(texts):
    """Dummy prefix by normalizer (Prepend + Replace), like Llama-2/Mistral tokenizer.json:
    a target encoded alone starts with a lone '▁' token that never occurs in context."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("▁"), behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=["▁"], show_progress=False))
    return _fast(tok, dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                           pad_token="<pad>"))


@pytest.fixture(scope="module")
def bos_eos(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False))
    return _fast(tok, dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                           pad_token="<pad>"))


def _covering(tok, prompt, target):
    """The joint encoding's tokens whose character span overlaps the target, and the rest."""
    enc = tok(prompt + target, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    cover = [i for i, (s, e) in zip(ids, offs) if e > len(prompt) and e > s]
    before = [i for i, (s, e) in zip(ids, offs) if not (e > len(prompt) and e > s)]
    return cover, before


@pytest.mark.parametrize("name", ["bpe", "sentencepiece", "bos_eos"])
def test_target_tokens_are_those_covering_it_jointly(name, request):
    tok = request.getfixturevalue(name)
    for prompt, target in QUERIES:
        seq, cut = query_sequence(tok, prompt, target, 256)
        ids = list(seq.ids)
        cover, _ = _covering(tok, prompt, target)
        assert not cut and ids[seq.n_context:] == cover, (name, prompt)
        assert tok.decode(ids[seq.n_context:]).strip() == target.strip()
        assert ids[:seq.n_context] == tok(prompt + target)["input_ids"][:seq.n_context]
        if tok.eos_token_id is not None:
            assert tok.eos_token_id not in ids            # never between or after
        if name != "bpe":
            assert ids[0] == tok.bos_token_id              # BOS stays context


def test_dummy_prefix_no_longer_adds_a_token(sentencepiece):
    prompt, target = QUERIES[0]
    alone = sentencepiece(target, add_special_tokens=False)["input_ids"]
    seq, _ = query_sequence(sentencepiece, prompt, target, 256)
    assert sentencepiece.convert_ids_to_tokens(alone)[0] == "▁"        # the old bug
    assert "▁" not in sentencepiece.convert_ids_to_tokens(list(seq.ids[seq.n_context:]))
    assert len(seq.ids) - seq.n_context == len(alone) - 1


def test_long_query_keeps_its_end(bos_eos):
    prompt, target = " ".join(["the city"] * 40) + " is in", " Portugal"
    full, _ = query_sequence(bos_eos, prompt, target, 1000)
    seq, cut = query_sequence(bos_eos, prompt, target, 16)
    assert cut and len(seq.ids) == 16 and seq.ids[0] == bos_eos.bos_token_id
    n_target = len(full.ids) - full.n_context
    assert seq.ids[-n_target:] == full.ids[-n_target:]            # the target, whole
    assert seq.ids[1:seq.n_context] == full.ids[full.n_context - (seq.n_context - 1):
                                                full.n_context]  # the prompt's end
    with pytest.raises(QueryError, match="target is .* no prompt token is left"):
        query_sequence(bos_eos, "in", " Portugal" * 20, 16)


def test_long_query_warns_in_the_featurizer(bpe, tmp_path):
    from tda.tests import helpers
    from tda.engine import Featurizer, TrackStarConfig
    from tda.evaluation.architectures import tiny_model
    model = tiny_model("llama", bpe, helpers.sentences(16), steps=1, batch_size=8).model
    f = Featurizer(model, bpe, TrackStarConfig(correction="none", projection_dim=2, max_len=12))
    with pytest.warns(UserWarning, match="1 of 2 queries were longer than max_len=12"):
        seqs = f.query_sequences([("word " * 30, " France"), ("Paris is in", " France")])
    assert len(seqs[0].ids) == 12


def _word_tokenizer(words):
    from transformers import PythonBackend

    class WordTokenizer(PythonBackend):
        def __init__(self, words, **kw):
            vocab = ["<pad>", "<s>", "</s>", "<unk>"] + sorted(set(words))
            self.vocab = {w: i for i, w in enumerate(vocab)}
            self.inv = dict(enumerate(vocab))
            super().__init__(bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                             unk_token="<unk>", **kw)

        @property
        def vocab_size(self):
            return len(self.vocab)

        def get_vocab(self):
            return dict(self.vocab)

        def _tokenize(self, text):
            return re.findall(r" ?\w+|[^\w\s]", text)

        def _convert_token_to_id(self, t):
            return self.vocab.get(t, 3)

        def _convert_id_to_token(self, i):
            return self.inv.get(i, "<unk>")

        def convert_tokens_to_string(self, toks):
            return "".join(toks)

        def build_inputs_with_special_tokens(self, a, b=None):
            return [1] + a

    return WordTokenizer(words)


def test_tokenizer_without_offsets_falls_back_by_name(texts):
    tok = _word_tokenizer(re.findall(r" ?\w+|[^\w\s]", " ".join(texts[:50] + [q for p in QUERIES
                                                                        for q in p])))
    with pytest.warns(UserWarning, match="WordTokenizer has no offsets support"):
        seq, _ = query_sequence(tok, *QUERIES[0], 256)
    assert tok.decode(list(seq.ids[seq.n_context:])) == QUERIES[0][1]
    assert seq.ids[0] == 1
    doc = Document("d", " ".join(texts[:3]), "mem", 1)
    chunks = chunk_document(doc, tok, 20)
    assert len(chunks) > 1 and all(c.sequence.ids[0] == 1 for c in chunks)


def test_every_chunk_starts_with_bos(bos_eos, bpe, texts):
    doc = Document("d", " ".join(texts[:6]), "mem", 1)
    ids = bos_eos(doc.text)["input_ids"]
    chunks = chunk_document(doc, bos_eos, 24)
    assert len(chunks) > 2
    assert all(c.sequence.ids[0] == bos_eos.bos_token_id and len(c.sequence.ids) <= 24
               for c in chunks)
    assert [t for c in chunks for t in c.sequence.ids[1:]] == ids[1:]   # nothing lost
    assert chunks[-1].sequence.ids[-1] == bos_eos.eos_token_id
    plain = chunk_document(doc, bpe, 24)                  # no BOS: chunks are plain spans
    assert [t for c in plain for t in c.sequence.ids] == bpe(doc.text)["input_ids"]
