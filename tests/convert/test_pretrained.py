"""``--pretrained imagenet``: the torch hub cache, the hash check and the offline message (no network used)."""

import keras_glacier  # noqa: F401  (selects the Keras backend first)

# isort: split

import hashlib

import pytest
import torch

from convert.export import ConversionInputError
from convert.pretrained import IMAGENET_WEIGHTS, hub_checkpoint_path, resolve_pretrained


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    folder = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(folder))
    return folder


@pytest.fixture
def served(tmp_path):
    """A small state dict file behind a file:// URL named like torchvision's, and its sha256 prefix."""
    source = tmp_path / "served" / "resnet34-fake.pth"
    source.parent.mkdir()
    torch.save({"conv1.weight": torch.arange(6.0).reshape(1, 2, 3, 1)}, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    return source, source.as_uri(), digest[:8]


def test_defaults_are_torchvisions_published_weights():
    assert IMAGENET_WEIGHTS == {
        "resnet18": ("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd"),
        "resnet34": ("https://download.pytorch.org/models/resnet34-b627a593.pth", "b627a593"),
    }


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34"])
def test_imagenet_means_the_encoders_own_file_in_the_hub_cache(hub_dir, encoder):
    """A cached file is found by the published file name of the model's encoder (nothing is downloaded)."""
    for name in ("resnet18-f37072fd.pth", "resnet34-b627a593.pth"):
        (hub_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.save({"name": torch.tensor([ord(c) for c in name])}, hub_dir / "checkpoints" / name)
    path = resolve_pretrained("imagenet", encoder)
    assert path == hub_dir / "checkpoints" / IMAGENET_WEIGHTS[encoder][0].rsplit("/", 1)[1]
    assert path.name.startswith(f"{encoder}-")


def test_imagenet_is_downloaded_into_the_hub_cache_once_and_checked(hub_dir, served):
    source, url, prefix = served
    path = resolve_pretrained("imagenet", url=url, hash_prefix=prefix)
    assert path == hub_dir / "checkpoints" / "resnet34-fake.pth" == hub_checkpoint_path(url)
    assert path.read_bytes() == source.read_bytes()
    assert torch.load(path, weights_only=True)["conv1.weight"].shape == (1, 2, 3, 1)
    source.unlink()  # the second call must use the cache, not the (now gone) URL
    assert resolve_pretrained("ImageNet", url=url, hash_prefix=prefix) == path


def test_a_file_with_the_wrong_hash_is_refused_and_not_cached(hub_dir, served):
    _, url, prefix = served
    wrong = "0" * 8 if prefix != "0" * 8 else "1" * 8
    with pytest.raises(ConversionInputError, match=f"does not match the published hash {wrong}") as info:
        resolve_pretrained("imagenet", url=url, hash_prefix=wrong)
    assert "\n" not in str(info.value)
    assert not (hub_dir / "checkpoints" / "resnet34-fake.pth").exists()


def test_no_cache_and_no_network_says_what_to_download_and_how_to_pass_it(hub_dir):
    url = "http://127.0.0.1:9/models/resnet34-b627a593.pth"  # nothing listens on the discard port
    with pytest.raises(ConversionInputError) as info:
        resolve_pretrained("imagenet", url=url)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{hub_dir / 'checkpoints' / 'resnet34-b627a593.pth'}: ImageNet weights not cached")
    assert message.endswith(f"download {url} elsewhere and pass its path with --pretrained FILE")


def test_a_file_spec_is_returned_or_named_when_missing(tmp_path, served):
    source, _, _ = served
    assert resolve_pretrained(str(source)) == source
    with pytest.raises(ConversionInputError, match="missing.pth: pretrained weights file not found"):
        resolve_pretrained(tmp_path / "missing.pth")
