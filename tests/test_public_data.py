"""The data the bundled CIFAR-10 and Flickr8k recipes read, as a user gets it: torchvision's
CIFAR-10 (downloaded), and the Flickr8k archive that `python -m ssl_zoo.data.flickr8k` builds
from the public release's zips (here, zips laid out as the release's)."""

import hashlib
import io
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo.cli import main as cli_main
from ssl_zoo.data.flickr8k import PUBLISHED_MD5, build_flickr8k_archive, main
from ssl_zoo.data.decode import load_image_file
from ssl_zoo.data.sources import load_shared_flickr8k
from ssl_zoo.errors import DataFormatError
from ssl_zoo.recipe import available_recipes, parse_recipe

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CIFAR_RECIPES = sorted(name for name in available_recipes() if name.endswith("_cifar10"))
COUNTS = {"train": 3, "dev": 2, "test": 2}


def test_no_bundled_recipe_reads_the_repositorys_stand_ins():
    """shared_cifar10 and shared_flickr8k exist only beside this checkout: tests pass them."""
    recipes = {name: parse_recipe(["--recipe", name]).data.name for name in available_recipes()}
    assert not {name: data for name, data in recipes.items() if data.startswith("shared_")}
    assert recipes["clip_convnet4_flickr8k"] == recipes["clip_resnet18_flickr8k"] == "flickr8k"


# ----------------------------------------------------------------------------------------
# Flickr8k


def gradient(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth (height, width, 3) uint8 image, landscape or portrait as Flickr's are: red
    across, green down, blue by ``seed``. Smooth, so that JPEG keeps it within a grey level
    or two and a wrong crop or squash shows."""
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    return np.stack([x, y, np.full_like(x, 40 * seed % 256)], axis=-1).astype(np.uint8)


def write_flickr8k_zips(folder: Path, counts: dict[str, int] = COUNTS, missing: int = 0) -> tuple[Path, Path]:
    """Flickr8k_Dataset.zip and Flickr8k_text.zip as the release has them: images under
    Flicker8k_Dataset/ (sic), macOS resource forks beside every file, a caption line for an
    image outside the splits, captions numbered #0..#4 but written out of order; the last
    ``missing`` listed train images are absent from the image zip."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {split: [f"{split}{i}_0a.jpg" for i in range(count)] for split, count in counts.items()}
    images = folder / "Flickr8k_Dataset.zip"
    with zipfile.ZipFile(images, "w") as z:
        for split, files in names.items():
            for i, name in enumerate(files):
                if split == "train" and i >= len(files) - missing:
                    continue
                jpeg = io.BytesIO()
                Image.fromarray(gradient(80, 50 + 60 * (i % 2), i)).save(jpeg, "JPEG", quality=95)
                z.writestr(f"Flicker8k_Dataset/{name}", jpeg.getvalue())
                z.writestr(f"__MACOSX/Flicker8k_Dataset/._{name}", b"resource fork")
    lines = [f"{name}#{k}\ta caption {k} of {name} ." for files in names.values() for name in files for k in (3, 0, 1, 4, 2)]
    lines.append("2258277193_586949ec62.jpg.1#0\tan image in no split .")  # as the release's token file has
    text = folder / "Flickr8k_text.zip"
    with zipfile.ZipFile(text, "w") as z:
        z.writestr("Flickr8k.token.txt", "\n".join(lines) + "\n")
        z.writestr("__MACOSX/._Flickr8k.token.txt", b"resource fork")
        for split, files in names.items():
            z.writestr(f"Flickr_8k.{split}Images.txt", "\n".join(files) + "\n")
    return images, text


def md5_of(*paths: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in paths}


def test_builds_the_archive_the_loader_reads(tmp_path):
    images, text = write_flickr8k_zips(tmp_path / "download", missing=1)
    with pytest.warns(UserWarning, match=r"1 listed image\(s\) are not in .*train2_0a.jpg"):
        archive = build_flickr8k_archive(images, text, tmp_path / "data", md5=md5_of(images, text))
    assert archive == tmp_path / "data" / "flickr8k_64.npz"

    train = load_shared_flickr8k(archive.parent, "train")
    assert train.images.shape == (2, 3, 64, 64) and train.images.dtype == torch.uint8
    assert train.captions[1] == [f"a caption {k} of train1_0a.jpg ." for k in range(5)]  # by number, not file order
    with np.load(archive) as arrays:
        assert arrays["train_files"].tolist() == ["train0_0a.jpg", "train1_0a.jpg"]
        assert arrays["test_files"].tolist() == ["test0_0a.jpg", "test1_0a.jpg"]
    assert len(load_shared_flickr8k(archive.parent, "dev")) == 2

    # Pixels: the shorter side resized to 64 and centre-cropped (as pairs and folders load),
    # then one JPEG round trip at quality 90.
    with zipfile.ZipFile(images) as z:
        expected = load_image_file(io.BytesIO(z.read("Flicker8k_Dataset/test1_0a.jpg")), 64)  # (64, 64, 3)
    got = load_shared_flickr8k(archive.parent, "test").images[1].permute(1, 2, 0).numpy()
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 2
    # A portrait 80 x 110 image becomes 64 x 88 and keeps its middle 64 rows: green runs
    # from about 35 to 220, not 0 to 255 as a squash would give.
    assert 25 < got[0, :, 1].mean() < 45 and 210 < got[-1, :, 1].mean() < 230


def test_archive_shares_the_repository_copys_jpeg_header(tmp_path):
    """Same format as ../shared/data/flickr8k_64.npz, down to the shared JPEG header bytes."""
    if not (SHARED / "flickr8k_64.npz").is_file():
        pytest.skip("../shared/data/flickr8k_64.npz not found: nothing to compare the built header with")
    images, text = write_flickr8k_zips(tmp_path / "download")
    archive = build_flickr8k_archive(images, text, tmp_path / "data", md5=None)
    with np.load(archive) as built, np.load(SHARED / "flickr8k_64.npz") as shared:
        assert built["jpeg_header"].tobytes() == shared["jpeg_header"].tobytes()
        assert sorted(built.files) == sorted(shared.files)


def test_a_wrong_md5_names_the_file_both_sums_and_where_to_download(tmp_path):
    images, text = write_flickr8k_zips(tmp_path)
    with pytest.raises(DataFormatError) as err:
        build_flickr8k_archive(images, text, tmp_path / "data")  # the published sums: these zips are fakes
    message = str(err.value)
    assert str(images) in message and PUBLISHED_MD5["Flickr8k_Dataset.zip"] in message
    assert md5_of(images)["Flickr8k_Dataset.zip"] in message
    assert "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip" in message
    assert "--skip-md5" in message and not (tmp_path / "data").exists()


def test_command_exits_2_on_a_missing_zip_and_writes_with_skip_md5(tmp_path, capsys):
    assert main([str(tmp_path / "Flickr8k_Dataset.zip"), str(tmp_path / "Flickr8k_text.zip"), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "Flickr8k_Dataset.zip not found" in error and "Traceback" not in error

    images, text = write_flickr8k_zips(tmp_path / "download")
    assert main([str(images), str(text), "--out", str(tmp_path / "data"), "--skip-md5"]) == 0
    assert "3 train, 2 dev, 2 test images" in capsys.readouterr().out


def test_a_recipe_without_the_archive_says_how_to_build_it(tmp_path, capsys):
    code = cli_main(["fit", "--recipe", "clip_convnet4_flickr8k", "--data.root", str(tmp_path / "nowhere"),
                     "--trainer.output_dir", str(tmp_path / "runs")])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert str(tmp_path / "nowhere" / "flickr8k_64.npz") in error
    assert "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip" in error
    assert "python -m ssl_zoo.data.flickr8k Flickr8k_Dataset.zip Flickr8k_text.zip --out" in error


# ----------------------------------------------------------------------------------------
# CIFAR-10


def test_the_cifar10_recipes_download_torchvisions_cifar10():
    assert len(CIFAR_RECIPES) == 5  # SimCLR, BYOL (ConvNet and ResNet-18) and DINO
    for name in CIFAR_RECIPES:
        data = parse_recipe(["--recipe", name]).data
        assert (data.name, data.root, data.download, data.image_size) == ("cifar10", "data/cifar10", True, 32), name


def test_a_cifar10_recipe_offline_says_where_to_get_the_data(tmp_path, capsys, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    code = cli_main(["fit", "--recipe", "simclr_convnet4_cifar10", "--data.root", str(tmp_path / "empty"),
                     "--trainer.output_dir", str(tmp_path / "runs")])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert f"cifar10 not found under {tmp_path / 'empty'} and the download failed" in error
    assert "`download: true`" in error and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in error
    assert str(tmp_path / "empty" / "cifar-10-batches-py") in error
