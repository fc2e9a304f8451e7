"""Every row of docs/bad_input.md: bad input gets a clear error and loses nothing.

Each case runs the command line as a user would (``ssl_zoo.cli.main``) or, for data
that loads with a warning, the loader. An error case must exit with status 2, print one
``ssl_zoo: error:`` paragraph with no traceback, say what to do, and leave files as
they were.
"""

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ssl_zoo.cli import main
from ssl_zoo.data.sources import load_image_folder
from ssl_zoo.recipe import recipe_to_dict
from ssl_zoo.training.train import fit

DOC = Path(__file__).parent.parent / "docs" / "bad_input.md"
CASES: dict[str, Callable] = {}


def case(name: str):
    def register(function):
        CASES[name] = function
        return function

    return register


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_clear_error(code: int, output: str, *fragments: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output
    message = output[output.index("ssl_zoo: error:"):]
    for fragment in fragments:
        assert re.search(fragment, message), f"{fragment!r} not in: {message}"


def save_image(path: Path, array: np.ndarray) -> None:
    """(H, W) uint8 -> L, (H, W) uint16 -> I;16, (H, W, 3) -> RGB, (H, W, 4) -> RGBA."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def colour_image(size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture
def tiny_recipe_file(make_recipe, tmp_path) -> Callable[..., Path]:
    def write(method: str = "simclr", **keys) -> Path:
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump(recipe_to_dict(make_recipe(method, **keys))))
        return path

    return write


@case("unknown-recipe")
def _(capsys, tmp_path, **_):
    assert_clear_error(*run(capsys, "fit", "--recipe", "simclr_imagenet"), "Unknown recipe 'simclr_imagenet'", "Valid recipes: .*quickstart")


@case("unknown-key")
def _(capsys, tmp_path, **_):
    assert_clear_error(*run(capsys, "fit", "--recipe", "quickstart", "--data.batchsize", "64"), "batchsize", "Did you mean 'batch_size'")


@case("wrong-type")
def _(capsys, tmp_path, **_):
    assert_clear_error(*run(capsys, "fit", "--recipe", "quickstart", "--data.batch_size", "many"), "data.batch_size", "many")


@case("missing-dataset")
def _(capsys, tmp_path, **_):
    root = tmp_path / "nowhere"
    code, output = run(capsys, "fit", "--recipe", "quickstart", "--data.name", "cifar10", "--data.root", root)
    assert_clear_error(code, output, "cifar10 not found under", re.escape(str(root)), "--data.download true")


@case("empty-folder")
def _(capsys, tmp_path, **_):
    (tmp_path / "data" / "train").mkdir(parents=True)
    code, output = run(capsys, "fit", "--recipe", "quickstart", "--data.name", "folder", "--data.root", tmp_path / "data",
                       "--trainer.output_dir", tmp_path / "runs")
    assert_clear_error(code, output, "no class sub-folders", "cats")
    assert not (tmp_path / "runs").exists()  # nothing written for a run that never started


@case("no-readable-image")
def _(capsys, tmp_path, **_):
    broken = tmp_path / "data" / "train" / "cats" / "a.jpg"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a jpeg")
    code, output = run(capsys, "fit", "--recipe", "quickstart", "--data.name", "folder", "--data.root", tmp_path / "data")
    assert_clear_error(code, output, "1 image files, none readable", "add readable images")


def label_shards(folder: Path, count: int = 40) -> Path:
    """Indexed shards of small labelled JPEGs, 20 samples a shard."""
    import io

    from ssl_zoo.data.shards.convert import Sample, write_shards

    buffer = io.BytesIO()
    Image.fromarray(colour_image(16)).save(buffer, "JPEG")
    write_shards([Sample(buffer.getvalue(), "jpg", label=i % 2) for i in range(count)], folder, 20)
    return folder


def shard_fit(capsys, tmp_path, root, *extra) -> tuple[int, str]:
    return run(capsys, "fit", "--recipe", "quickstart", "--data.name", "shards", "--data.root", root,
               "--trainer.output_dir", tmp_path / "runs", *extra)


@case("no-shards")
def _(capsys, tmp_path, **_):
    code, output = shard_fit(capsys, tmp_path, tmp_path / "nowhere")
    assert_clear_error(code, output, "Shards not found", re.escape(str(tmp_path / "nowhere")), "ssl_zoo shards --from folder")
    assert not (tmp_path / "runs").exists()


@case("shard-without-index")
def _(capsys, tmp_path, **_):
    shards = label_shards(tmp_path / "shards")
    (shards / "shard-000001.tar.idx.npy").unlink()
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    code, output = shard_fit(capsys, tmp_path, shards)
    assert_clear_error(code, output, "shard-000001.tar has no index", "ssl_zoo shards --index")
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == before and not (tmp_path / "runs").exists()


@case("shard-without-image")
def _(capsys, tmp_path, **_):
    import io
    import tarfile

    shard = tmp_path / "shards" / "a.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("000.cls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"1"))
    code, output = run(capsys, "shards", "--index", shard.parent)
    assert_clear_error(code, output, "a.tar holds no image member", "one image per sample key")
    assert sorted(p.name for p in shard.parent.iterdir()) == ["a.tar"]  # no index written


@case("bad-command-option")
def _(capsys, tmp_path, simclr_run, **_):
    # Every command parses in ssl_zoo.cli and answers bad options the same way, before any work.
    images = tmp_path / "images"
    save_image(images / "a.png", colour_image())
    out = tmp_path / "out"
    for command, fragments in [
        (["shards", "--from", "folder", images, "--out", out, "--size", "16", "--bogus", "1"],
         ["ssl_zoo shards: unknown option --bogus", "python -m ssl_zoo shards --help"]),
        (["shards", "--from", "folder", images, "--out", out], ["--from needs --out and --size"]),
        (["shards", "--from", "folder", images, "--out", out, "--size", "big"], ["argument --size: invalid int value: 'big'"]),
        (["shards", "--out", out], ["one of the arguments --from --index is required"]),
        (["export", simclr_run], ["ssl_zoo export: the following arguments are required: --out", "export --help"]),
        (["export", simclr_run, "--out", out, "--bogus"], ["ssl_zoo export: unknown option --bogus"]),
        (["export", simclr_run, simclr_run, "--out", out], ["unexpected argument"]),
    ]:
        code, output = run(capsys, *command)
        assert_clear_error(code, output, *fragments)
        assert "usage:" not in output and len(output.strip().splitlines()) == 1  # one paragraph, no usage dump
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # nothing written


@case("clip-on-captionless-shards")
def _(capsys, tmp_path, **_):
    shards = label_shards(tmp_path / "shards")
    code, output = run(capsys, "fit", "--recipe", "clip_shapes", "--data.name", "shards", "--data.root", shards,
                       "--trainer.output_dir", tmp_path / "runs")
    assert_clear_error(code, output, "needs captions", re.escape(str(shards)), "--from pairs")
    assert not (tmp_path / "runs").exists()


@case("corrupt-image")
def _(capsys, tmp_path, **_):
    folder = tmp_path / "train"
    for i in range(2):
        save_image(folder / "cats" / f"{i}.png", colour_image(seed=i))
    truncated = folder / "cats" / "truncated.png"
    truncated.write_bytes((folder / "cats" / "0.png").read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable image file.*truncated.png"):
        images = load_image_folder(folder, 32)
    assert len(images) == 2 and truncated.exists()  # skipped and counted, never deleted


@case("grayscale-rgba-16bit")
def _(capsys, tmp_path, **_):
    folder = tmp_path / "train" / "things"
    save_image(folder / "gray.png", np.full((32, 32), 100, dtype=np.uint8))
    save_image(folder / "rgba.png", np.dstack([colour_image(), np.full((32, 32), 128, np.uint8)]))
    save_image(folder / "deep.png", np.full((32, 32), 50_000, dtype=np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all three load, without a warning
        images = load_image_folder(tmp_path / "train", 32)
    assert images.images.shape == (3, 3, 32, 32) and images.images.dtype == torch.uint8
    deep = images.images[0]  # files sorted: deep, gray, rgba
    assert int(deep[0, 0, 0]) == round(50_000 / 257)  # 16 bits scaled to 8, not clipped to white
    assert int(images.images[1][:, 0, 0].unique()) == 100  # gray copied to three channels


@case("images-smaller-than-crop")
def _(capsys, tmp_path, **_):
    save_image(tmp_path / "train" / "tiny" / "a.png", colour_image(size=8))
    images = load_image_folder(tmp_path / "train", 32)
    assert images.images.shape == (1, 3, 32, 32)  # resized up to data.image_size


def pairs_file(tmp_path: Path, text: str | bytes) -> Path:
    save_image(tmp_path / "a.png", colour_image())
    path = tmp_path / "pairs.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def fit_pairs(capsys, tiny_recipe_file, path: Path) -> tuple[int, str]:
    return run(capsys, "fit", "--recipe", tiny_recipe_file("clip"), "--data.name", "pairs", "--data.root", path)


@case("csv-missing-column")
def _(capsys, tmp_path, tiny_recipe_file, **_):
    path = pairs_file(tmp_path, "path,text\na.png,a red square\n")
    assert_clear_error(*fit_pairs(capsys, tiny_recipe_file, path), r"missing column\(s\) \['caption'\]", "path,caption")


@case("csv-missing-image")
def _(capsys, tmp_path, tiny_recipe_file, **_):
    path = pairs_file(tmp_path, "path,caption\na.png,a red square\nb.png,a blue circle\n")
    assert_clear_error(*fit_pairs(capsys, tiny_recipe_file, path), "row 2", "image file not found", "b.png")


@case("empty-caption")
def _(capsys, tmp_path, tiny_recipe_file, **_):
    path = pairs_file(tmp_path, "path,caption\na.png,\n")
    assert_clear_error(*fit_pairs(capsys, tiny_recipe_file, path), "row 1", "empty caption")


@case("non-utf8-caption")
def _(capsys, tmp_path, tiny_recipe_file, **_):
    path = pairs_file(tmp_path, "path,caption\na.png,un carr\xe9 rouge\n".encode("latin-1"))
    assert_clear_error(*fit_pairs(capsys, tiny_recipe_file, path), "not valid UTF-8", "save it as UTF-8")


@case("out-of-range-value")
def _(capsys, tmp_path, **_):
    for key, value, shown in (("data.batch_size", "-4", r"data\.batch_size = -4 \(valid: >= 1\)"),
                              ("data.image_size", "0", r"data\.image_size = 0 \(valid: >= 8\)"),
                              ("optim.lr", "-1", r"optim\.lr = -1\.0 \(valid: >= 0\)")):
        code, output = run(capsys, "fit", "--recipe", "quickstart", f"--{key}", value, "--trainer.output_dir", tmp_path / "runs")
        assert_clear_error(code, output, "out of range", shown, "Set it within its range")


@case("bad-view-group")
def _(capsys, tmp_path, **_):
    code, output = run(capsys, "fit", "--recipe", "quickstart", "--augment.views", "[{count: 0, size: 4}]", "--trainer.output_dir", tmp_path / "runs")
    assert_clear_error(code, output, r"augment\.views\[0\]\.count = 0 \(valid: >= 1\)", r"augment\.views\[0\]\.size = 4 \(valid: >= 8\)")


@case("view-groups-and-pairs")
def _(capsys, tmp_path, **_):
    code, output = run(capsys, "fit", "--recipe", "quickstart", "--augment.views", "[{count: 2}]", "--trainer.output_dir", tmp_path / "runs")
    assert_clear_error(code, output, r"augment sets both views \(view groups\) and augment\.crop_scale, augment\.blur_p", "set them in each group")


@case("multi-size-views-on-fixed-size-transformer")
def _(capsys, tmp_path, **_):
    local_crops = "[{count: 2, crop_scale: [0.6, 1.0]}, {count: 4, size: 16, crop_scale: [0.1, 0.4]}]"
    code, output = run(capsys, "fit", "--recipe", "dino_shapes", "--backbone", "vit_tiny_p4", "--augment.views", local_crops,
                       "--trainer.output_dir", tmp_path / "runs")
    assert_clear_error(code, output, "takes images of one size only", "timm ViT")
    assert not (tmp_path / "runs").exists()


@case("dataset-section-mismatch")
def _(capsys, tmp_path, **_):
    code, output = run(capsys, "fit", "--recipe", "quickstart", "--shards.decode", "worker", "--trainer.output_dir", tmp_path / "runs")
    assert_clear_error(code, output, r"trains on dataset 'shapes' but sets the 'shards:' section", "set data.name: shards")
    assert not (tmp_path / "runs").exists()


@case("view-groups-wrong-count")
def _(capsys, tmp_path, **_):
    two_view_keys_at_defaults = ["--augment.crop_scale", "[0.08, 1.0]", "--augment.blur_p", "[0.5, 0.5]"]
    code, output = run(capsys, "fit", "--recipe", "quickstart", "--augment.views", "[{count: 2}, {count: 4, size: 16}]",
                       *two_view_keys_at_defaults, "--data.num_images", "64", "--data.batch_size", "16",
                       "--trainer.output_dir", tmp_path / "runs")
    assert_clear_error(code, output, "augment.views makes 6 views of every image, but the method trains on 2")


@case("batch-larger-than-dataset")
def _(capsys, tmp_path, **_):
    code, output = run(capsys, "fit", "--recipe", "quickstart", "--data.num_images", "100", "--data.batch_size", "256")
    assert_clear_error(code, output, "batch_size 256 is larger than", "100 images", "Lower --data.batch_size")


@case("resume-another-model")
def _(capsys, tmp_path, simclr_run, tiny_recipe_file, **_):
    before = simclr_run.read_bytes()
    code, output = run(capsys, "fit", "--recipe", tiny_recipe_file("byol"), "--resume", simclr_run)
    assert_clear_error(code, output, "different model", "method: checkpoint 'simclr', recipe 'byol'", "its own recipe")
    assert simclr_run.read_bytes() == before


@case("resume-another-global-batch")
def _(capsys, tmp_path, simclr_run, tiny_recipe_file, **_):
    before = simclr_run.read_bytes()  # trained on 1 process, data.batch_size 32
    code, output = run(capsys, "fit", "--recipe", tiny_recipe_file("simclr", **{"data.batch_size": 16}), "--resume", simclr_run)
    assert_clear_error(code, output, "global batch of 16 images", "it trained with 32", "trainer.devices x trainer.num_nodes x data.batch_size", "--init_weights")
    assert simclr_run.read_bytes() == before


@case("eval-another-backbone")
def _(capsys, tmp_path, simclr_run, **_):
    # A checkpoint whose weights are not those of the backbone its recipe names.
    state = torch.load(simclr_run, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["recipe"]["backbone"] = "resnet50"
    edited = tmp_path / "edited.ckpt"
    torch.save(state, edited)
    assert_clear_error(*run(capsys, "eval", "--ckpt", edited, "--no-cache"), "does not match its own recipe", "backbone resnet50", r"\d+ missing, e\.g\. ", "as `fit` wrote it")


@case("imagenet100-wrong-classes")
def _(capsys, tmp_path, tiny_recipe_file, **_):
    from test_imagenet100 import write_imagenet100_shards

    roots = write_imagenet100_shards(tmp_path / "shards", classes=["cat", "dog", "fish", "owl"])
    recipe = tiny_recipe_file(**{"data.name": "imagenet100", **roots})
    assert_clear_error(*run(capsys, "fit", "--recipe", recipe), "not ImageNet-100", "--classes imagenet100")


@case("imagenet100-missing")
def _(capsys, tmp_path, tiny_recipe_file, **_):
    recipe = tiny_recipe_file(**{"data.name": "imagenet100", "data.root": tmp_path / "nowhere", "data.val_root": tmp_path / "nowhere"})
    assert_clear_error(*run(capsys, "fit", "--recipe", recipe), "ImageNet-100 shards not found", "--classes imagenet100")


@case("reference-without-protocol")
def _(capsys, tmp_path, **_):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("method: simclr\nreference: {metric: linear_top1, value: 70.0, epochs: 100, source: a paper}\n")
    assert_clear_error(*run(capsys, "fit", "--recipe", recipe), "reference.protocol", "probe", "features")


@case("missing-flickr8k")
def _(capsys, tmp_path, **_):
    root = tmp_path / "nowhere"
    assert_clear_error(*run(capsys, "fit", "--recipe", "clip_convnet4_flickr8k", "--data.root", root),
                       "Flickr8k archive not found", "Flickr8k_Dataset.zip", "python -m ssl_zoo.data.flickr8k")
    assert not root.exists()


@case("eval-unknown-protocol")
def _(capsys, tmp_path, simclr_run, **_):
    assert_clear_error(*run(capsys, "eval", "--ckpt", simclr_run, "--protocol", "linear", "--no-cache"),
                       "argument --protocol: invalid choice: 'linear'", "features", "probe", "eval --help")
    assert not (simclr_run.parent / "eval").exists()


@case("eval-few-shot-k")
def _(capsys, tmp_path, simclr_run, **_):
    assert_clear_error(*run(capsys, "eval", "--ckpt", simclr_run, "--few-shot", "0,4", "--no-cache"),
                       "argument --few-shot: '0' is not a whole number of 1 or more", "1,2,4,8,16", "eval --help")
    assert_clear_error(*run(capsys, "bench", "--few-shot", "4,4", "--out", tmp_path / "bench"), "names a k twice")
    assert not (simclr_run.parent / "eval").exists() and not (tmp_path / "bench").exists()


@case("classnames-count")
def _(capsys, tmp_path, simclr_run, **_):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    assert_clear_error(*run(capsys, "eval", "--ckpt", simclr_run, "--classnames", names, "--no-cache"),
                       "names.txt has 2 names, the dataset has \\d+ classes", "one name a line")
    assert names.read_text() == "cat\ndog\n" and not (simclr_run.parent / "eval").exists()


@case("corrupt-feature-cache")
def _(capsys, tmp_path, simclr_run, **_):
    cache = tmp_path / "cache"
    out = tmp_path / "result.json"
    code, output = run(capsys, "eval", "--ckpt", simclr_run, "--cache-dir", cache, "--out", out)
    assert code == 0, output
    first = json.loads(out.read_text())["metrics"]
    for entry in cache.iterdir():  # every entry cut short, as by a full disk
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    code, output = run(capsys, "eval", "--ckpt", simclr_run, "--cache-dir", cache, "--out", out)
    assert code == 0 and "feature cache: 0 hits" in output, output
    assert json.loads(out.read_text())["metrics"] == first  # computed again, not read
    code, output = run(capsys, "eval", "--ckpt", simclr_run, "--cache-dir", cache, "--out", out)
    assert "feature cache: 2 hits" in output  # and written whole again


@case("not-a-checkpoint")
def _(capsys, tmp_path, **_):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    for command in (["eval", "--ckpt", notes], ["fit", "--recipe", "quickstart", "--resume", notes]):
        assert_clear_error(*run(capsys, *command), "not a checkpoint ssl_zoo can read", "the .ckpt file that `fit` wrote")
    assert notes.read_text() == "my notes"


@case("unsafe-checkpoint")
def _(capsys, tmp_path, **_):
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "payload": Path("/etc/passwd")}, pickled)  # an arbitrary object
    assert_clear_error(*run(capsys, "eval", "--ckpt", pickled, "--no-cache"), "holds Python objects besides tensors", "weights_only=True")


@case("unsafe-recipe")
def _(capsys, tmp_path, **_):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"method: simclr\nname: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_clear_error(*run(capsys, "fit", "--recipe", evil), "Invalid recipe", "evil.yaml")
    assert not marker.exists()  # no object was built, no command ran


@case("nothing-to-resume")
def _(capsys, tmp_path, tiny_recipe_file, **_):
    code, output = run(capsys, "fit", "--recipe", tiny_recipe_file(), "--resume")
    assert_clear_error(code, output, "Nothing to resume", "tiny_simclr", "Start it without --resume")


@case("nan-loss")
def _(capsys, tmp_path, tiny_recipe_file, **_):
    code, output = run(capsys, "fit", "--recipe", tiny_recipe_file(**{"optim.lr": 1e30, "trainer.checkpoint_every_n_steps": 1}))
    assert_clear_error(code, output, r"loss became NaN or infinite at step \d+", "No checkpoint of that state was saved", "Lower optim.lr")


@case("bench-several-devices")
def _(capsys, tmp_path, tiny_recipe_file, **_):
    out = tmp_path / "bench"
    for asked in (["--trainer.devices", "2"], ["--trainer.devices", "0,1"], ["--trainer.num_nodes", "2"]):
        code, output = run(capsys, "bench", "--recipes", "quickstart", *asked, "--out", out)
        assert_clear_error(code, output, f"recipe 'quickstart' asks for trainer.{asked[0].split('.')[1]} {asked[1]}",
                           "times every run on one device", "python -m ssl_zoo fit --recipe quickstart")
    # A recipe file asking for them is refused the same way.
    code, output = run(capsys, "bench", "--recipes", tiny_recipe_file(**{"trainer.devices": 2}), "--out", out)
    assert_clear_error(code, output, "recipe 'tiny_simclr' asks for trainer.devices 2")
    assert not out.exists()  # refused before anything is written


@case("eval-dense-without-text")
def _(capsys, tmp_path, simclr_run, **_):
    assert_clear_error(*run(capsys, "eval", "--ckpt", simclr_run, "--dense", "--no-cache"),
                       "eval --dense needs a model with a text tower", "a simclr model has no text encoder",
                       "Evaluate a CLIP checkpoint, or drop --dense")
    assert not (simclr_run.parent / "eval").exists()


@pytest.fixture(scope="module")
def trained_simclr(tmp_path_factory) -> Path:
    from conftest import tiny_recipe

    recipe = tiny_recipe("simclr", tmp_path_factory.mktemp("simclr"), **{"data.num_images": 64, "trainer.max_steps": 2})
    return fit(recipe, enable_progress_bar=False).checkpoint


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, capsys, tmp_path, tiny_recipe_file, trained_simclr, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run that wrongly started would write ./runs here
    CASES[name](capsys=capsys, tmp_path=tmp_path, tiny_recipe_file=tiny_recipe_file, simclr_run=trained_simclr)
    assert not (tmp_path / "runs").exists() or name == "nan-loss"


def test_every_case_is_in_the_docs_table_and_every_row_has_a_case():
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), flags=re.MULTILINE)
    assert sorted(rows) == sorted(CASES) and len(CASES) >= 12
