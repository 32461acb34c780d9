"""`kaggle://` and `hf://` handles: fast, helpful failures offline; success via hub libraries."""

import os
import sys
import time

import pytest

from keras_gemma.formats import remote
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.testing.configs import tiny_config


def _network_is_down():
    return not remote._reachable(remote.HF_DEFAULT_HOST, timeout=2.0)[0]


class TestOffline:
    """Runs against the real environment (no network here, and HF_HUB_OFFLINE in CI)."""

    @pytest.mark.parametrize(
        "handle", ["hf://google/gemma-3-1b-it", "kaggle://keras/gemma3/keras/gemma3_1b/3"]
    )
    @pytest.mark.parametrize("hf_hub_offline", ["1", ""])
    def test_fails_fast_with_a_helpful_message(self, handle, hf_hub_offline, monkeypatch):
        if not _network_is_down():
            pytest.skip("network available")
        monkeypatch.setenv("HF_HUB_OFFLINE", hf_hub_offline)
        start = time.monotonic()
        with pytest.raises(ConnectionError) as info:
            GemmaCausalLM.from_preset(handle)
        assert time.monotonic() - start < 20
        message = str(info.value)
        assert handle in message
        assert "local directory" in message and "from_preset" in message

    def test_registered_preset_needing_download(self, monkeypatch):
        if not _network_is_down():
            pytest.skip("network available")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="gemma2_2b_en") as info:
            GemmaBackbone.from_preset("gemma2_2b_en")
        assert time.monotonic() - start < 20
        assert "kaggle://" in str(info.value) and "hf://" in str(info.value)
        assert "local directory" in str(info.value)


class TestHandles:
    @pytest.mark.parametrize(
        "handle",
        [
            "hf://google",
            "hf://a/b/c",
            "kaggle://keras/gemma3",
            "kaggle://a/b/c/d/e/f",
            "s3://bucket/x",
        ],
    )
    def test_invalid_handles(self, handle):
        with pytest.raises(ValueError, match="handle"):
            remote.download(handle)

    @pytest.mark.parametrize(
        "handle,module,extra",
        [
            ("hf://google/gemma-3-1b-it", "huggingface_hub", "hf"),
            ("kaggle://keras/gemma3/keras/gemma3_1b/3", "kagglehub", "kaggle"),
        ],
    )
    def test_missing_package_names_the_extra(self, handle, module, extra, monkeypatch):
        monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError.
        with pytest.raises(
            ImportError, match=rf"pip install {module}.*pip install '\.\[{extra}\]'"
        ):
            remote.download(handle)


@pytest.fixture
def backbone_only_preset(tmp_path):
    """`(backbone, directory)`: a Gemma 2 preset without a tokenizer, unlike `saved_preset`."""
    backbone = GemmaBackbone(**tiny_config("gemma2"))
    directory = str(tmp_path / "downloaded")
    GemmaCausalLM(backbone).save_to_preset(directory)
    return backbone, directory


class TestDownloadSuccess:
    def test_hf_snapshot(self, backbone_only_preset, monkeypatch):
        huggingface_hub = pytest.importorskip("huggingface_hub")
        backbone, directory = backbone_only_preset
        calls = []

        def snapshot_download(repo_id, **kwargs):
            calls.append((repo_id, kwargs))
            return directory

        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        monkeypatch.setattr(remote, "_reachable", lambda *args, **kwargs: (True, None))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        loaded = GemmaBackbone.from_preset("hf://org/repo")
        assert calls[0][0] == "org/repo" and not calls[0][1].get("local_files_only")
        assert loaded.get_config()["layer_types"] == backbone.get_config()["layer_types"]

    def test_hf_offline_uses_local_cache(self, backbone_only_preset, monkeypatch):
        huggingface_hub = pytest.importorskip("huggingface_hub")
        _, directory = backbone_only_preset
        calls = []

        def snapshot_download(repo_id, **kwargs):
            calls.append(kwargs)
            return directory

        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert remote.download("hf://org/repo") == directory
        assert calls == [dict(calls[0], local_files_only=True)]

    def test_kaggle_model_download(self, backbone_only_preset, monkeypatch):
        kagglehub = pytest.importorskip("kagglehub")
        _, directory = backbone_only_preset
        calls = []

        def model_download(handle, **kwargs):
            calls.append(handle)
            return directory

        monkeypatch.setattr(kagglehub, "model_download", model_download)
        handle = "kaggle://keras/gemma3/keras/gemma3_1b/3"
        lm = GemmaCausalLM.from_preset(handle)
        assert calls == ["keras/gemma3/keras/gemma3_1b/3"]
        assert lm.preprocessor is None
        with pytest.raises(FileNotFoundError):
            GemmaTokenizer.from_preset(handle)  # This preset has no vocabulary.
        assert os.path.isdir(directory)
