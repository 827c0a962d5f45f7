"""The official Flickr8k split over every local image folder: the token-file reader, split files, image
folders searched in order, and the guarantee that no dev/test image or evaluation caption is trained on."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from mmembed.data.evalsets.caption_splits import normalise_caption, read_token_file
from mmembed.data.evalsets.captions import read_caption_config, read_flickr8k_token
from mmembed.data.evalsets.layout import BenchmarkLayoutError
from mmembed.data.heldout import drop_heldout_rows, heldout_sentences, image_identity
from mmembed.data.image_text import read_image_text_source, read_image_text_sources
from mmembed.errors import DataConfigError
from mmembed.evaluation.benchmarks.retrieval import CaptionImages, CaptionRetrievalBenchmark
from mmembed.evaluation.benchmarks.sts import STSBenchmark
from mmembed.run.evaluation import benchmark_list
from tests.conftest import REPO
from tests.data.leakage import describe, dropped_when_built, holding, text_cells

TOKEN_LINES = [
    "a.jpg#0\tA dog runs .",
    "a.jpg#1\tA brown dog running ",
    "b.jpg#0\tTwo kids play .",
    "b.jpg.1#0\tTwo kids play .",  # the official file's bogus-name kind of line
    "c.jpg#0\tA man surfs .",
    "c.jpg#1\ta  dog runs .",  # the same sentence as a.jpg#0 up to case and spacing
    "",
    "a line with no tab at all",
    "d.jpg#0\tA cat sleeps .",  # d.jpg is in no split
    "e.jpg#0\tA bird flies .",
]
SPLITS = {"train": ["a.jpg", "e.jpg"], "dev": ["b.jpg"], "test": ["c.jpg"]}


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (len(path.name) * 20, 0, 0)).save(path)


def _user_copy(root: Path, image_folders: dict[str, list[str]]) -> dict:
    """A Flickr8k copy in its release layout (Flickr8k_text/ + images), as settings for a train source."""
    text = root / "Flickr8k_text"
    text.mkdir(parents=True)
    (text / "Flickr8k.token.txt").write_text("\n".join(TOKEN_LINES) + "\n", encoding="utf-8")
    kaggle = ["image,caption"] + [f"{line.split('#')[0]},\"{line.split(chr(9))[1]}\"" for line in TOKEN_LINES
                                  if "\t" in line and ".jpg.1" not in line]
    (text / "captions.txt").write_text("\n".join(kaggle) + "\n", encoding="utf-8")
    split_files = {}
    for split, names in SPLITS.items():
        split_files[split] = str(text / f"Flickr_8k.{split}Images.txt")
        Path(split_files[split]).write_text("\n".join(names) + "\n")
    for folder, names in image_folders.items():
        for name in names:
            _image(root / folder / name)
    return {"name": "f8k", "format": "flickr8k_token", "captions": str(text / "Flickr8k.token.txt"),
            "images": [str(root / folder) for folder in image_folders], "split": "train", "split_files": split_files}


# ---- the readers, on hand-written files ----
def test_token_reader_skips_malformed_lines_and_keeps_file_order(tmp_path):
    source = _user_copy(tmp_path, {"Flicker8k_Dataset": ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]})
    ordered, _, skipped = read_token_file(Path(source["captions"]))
    assert skipped == ["b.jpg.1#0\tTwo kids play .", "a line with no tab at all"]
    assert ordered == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    bench = read_flickr8k_token(source["captions"], source["images"][0])
    assert bench.captions == ["A dog runs .", "A brown dog running", "Two kids play .", "A man surfs .",
                              "a  dog runs .", "A cat sleeps .", "A bird flies ."]
    assert bench.caption_image == [0, 0, 1, 2, 2, 3, 4]
    assert bench.meta["malformed_lines_skipped"] == 2 and bench.meta["format"] == "flickr8k_token"


def test_a_users_full_copy_reads_the_same_split_in_both_formats(tmp_path):
    source = _user_copy(tmp_path, {"Flicker8k_Dataset": ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]})
    for fmt, file in [("flickr8k_token", "Flickr8k.token.txt"), ("caption_csv", "captions.txt")]:
        user = {**source, "format": fmt, "captions": str(tmp_path / "Flickr8k_text" / file),
                "images": source["images"][0]}  # one folder, as released
        train = read_image_text_source(user)
        assert [(Path(p.image).name, p.text) for p in train] == [
            ("a.jpg", "A dog runs ."), ("a.jpg", "A brown dog running"), ("e.jpg", "A bird flies .")], fmt
        # heldout_splits drops the train caption that is also a test caption (case and spacing folded)
        train = read_image_text_source({**user, "heldout_splits": ["dev", "test"]})
        assert [(Path(p.image).name, p.text) for p in train] == [("a.jpg", "A brown dog running"),
                                                                 ("e.jpg", "A bird flies .")], fmt
        test = read_caption_config({**user, "split": "test"})
        assert test.image_ids == ["c.jpg"] and test.captions == ["A man surfs .", "a  dog runs ."], fmt
        assert test.meta["split"] == "test" and test.meta["caption_lines_in_no_split"] == 1, fmt  # d.jpg
        dev = read_caption_config({**user, "split": "dev"})
        assert dev.image_ids == ["b.jpg"] and dev.captions == ["Two kids play ."], fmt


def test_image_folders_are_searched_in_order_and_absent_split_images_are_dropped(tmp_path):
    source = _user_copy(tmp_path, {"small": ["b.jpg", "c.jpg"], "orig": ["a.jpg", "c.jpg"]})
    train = read_caption_config(source, check_images=False)  # e.jpg is in no folder: dropped, counted
    assert train.images == [tmp_path / "orig" / "a.jpg"] and train.meta["images_not_found"] == 1
    assert train.meta["images_per_folder"] == {str(tmp_path / "small"): 0, str(tmp_path / "orig"): 1}
    test = read_caption_config({**source, "split": "test"})
    assert test.images == [tmp_path / "small" / "c.jpg"]  # in both: the first folder's copy
    reversed_folders = read_caption_config({**source, "split": "test", "images": source["images"][::-1]})
    assert reversed_folders.images == [tmp_path / "orig" / "c.jpg"]
    with pytest.raises(BenchmarkLayoutError, match=r"1 of 2 images, e\.g\. .*e\.jpg"):
        read_caption_config(source)  # evaluation (check_images) refuses an incomplete split


def test_split_setting_mistakes_say_what_to_fix(tmp_path):
    source = _user_copy(tmp_path, {"imgs": ["a.jpg"]})
    with pytest.raises(DataConfigError, match="needs its list of images: set `split_files"):
        read_caption_config({**source, "split_files": None})
    with pytest.raises(DataConfigError, match=r"split='val' is not one of split_files \['dev', 'test', 'train'\]"):
        read_caption_config({**source, "split": "val"})
    with pytest.raises(DataConfigError, match=r"heldout_splits \['train'\] must name other splits"):
        read_caption_config({**source, "heldout_splits": ["train"]})
    with pytest.raises(DataConfigError, match="split file .*nowhere.txt not found"):
        read_caption_config({**source, "split_files": {"train": str(tmp_path / "nowhere.txt")}})
    with pytest.raises(DataConfigError, match="carries its own split"):
        read_caption_config({**source, "format": "karpathy"})
    (tmp_path / "other.txt").write_text("zzz.jpg\n")
    with pytest.raises(DataConfigError, match="no caption of .* describes an image of split 'selected'"):
        read_caption_config({**source, "split": None, "split_files": None, "split_file": str(tmp_path / "other.txt")})
    with pytest.raises(DataConfigError, match="no image of the split is in"):
        read_caption_config({**source, "split": "test"}, check_images=False)  # c.jpg is in no folder


# ---- the shared data and the project's configs ----
def _split_names(data_root: Path, split: str) -> set[str]:
    return set((data_root / f"flickr8k_224/text/Flickr_8k.{split}Images.txt").read_text().split())


def _training_sources(data_root: Path) -> dict[str, list[dict]]:
    """Every image-text training source of conf/data/*.yaml, `${paths...}` resolved (conf/paths/default.yaml)."""
    found = {}
    paths = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "paths" / "default.yaml"), {"data_root": str(data_root)})
    for path in sorted((REPO / "conf" / "data").glob("*.yaml")):
        cfg = OmegaConf.create({"paths": paths, "data": OmegaConf.load(path)})
        if "sources" in cfg.data:
            found[path.stem] = OmegaConf.to_container(cfg.data.sources, resolve=True)
    assert "image_text" in found
    return found


@pytest.fixture(scope="module")
def training_pairs(data_root):
    return {stem: read_image_text_sources(sources) for stem, sources in _training_sources(data_root).items()}


def test_configured_training_is_the_official_train_split_plus_coco80(data_root, training_pairs):
    pairs = training_pairs["image_text"]
    flickr = {p.image for p in pairs if p.source == "flickr8k_train"}
    coco = {p.image for p in pairs if p.source == "coco80_train"}
    local = {f.name: f.parent.parent.name for d in ("flickr8k", "flickr8k_224") for f in (data_root / d / "images").iterdir()}
    expected = {name for name in _split_names(data_root, "train") if name in local}
    assert {Path(p).name for p in flickr} == expected and len(flickr) == 3513
    by_folder = {d: sum(Path(p).parent == data_root / d / "images" for p in flickr) for d in ("flickr8k", "flickr8k_224")}
    assert by_folder == {"flickr8k": 753, "flickr8k_224": 2760}
    assert len(coco) == 80 and all(Path(p).parent == data_root / "coco/train2017" for p in coco)


def test_token_file_and_kaggle_csv_give_the_same_training_pairs(data_root):
    source = next(s for s in _training_sources(data_root)["image_text"] if s["name"] == "flickr8k_train")
    kaggle = {**source, "format": "caption_csv", "captions": str(data_root / "flickr8k/captions_flickr8k_all.txt")}
    token_pairs = read_image_text_source(source)
    assert read_image_text_source(kaggle) == token_pairs and len(token_pairs) == 17482  # 17,565 minus 83 heldout


def _compose_eval(suite: str, data_root: Path):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("eval", [f"eval={suite}", f"paths.data_root={data_root}"], return_hydra_config=False)


def test_flickr8k_1k_test_is_the_official_test_split_from_the_224px_copies(data_root):
    cfg = _compose_eval("flickr8k_1k", data_root)
    benchmarks = OmegaConf.to_container(cfg.eval.benchmarks, resolve=True)
    assert list(benchmarks) == ["flickr8k_1k_test"]
    bench = read_caption_config(benchmarks["flickr8k_1k_test"])
    assert len(bench.images) == 1000 and len(bench.captions) == 5000
    assert set(bench.image_ids) == _split_names(data_root, "test")
    assert all(bench.caption_image.count(i) == 5 for i in range(1000))
    assert bench.meta["images_per_folder"] == {str(data_root / "flickr8k_224/images"): 1000,
                                               str(data_root / "flickr8k_224/images_dev"): 0,
                                               str(data_root / "flickr8k/images"): 0}
    # In no split file: 91 Flickr8k images (5 lines each) and 2258277193_586949ec62.jpg, a name with no image
    # (4 lines; its fifth is the bogus `.jpg.1#0` line, skipped as malformed): 455 + 4 lines.
    assert bench.meta["caption_lines_in_no_split"] == 459 and bench.meta["malformed_lines_skipped"] == 1
    gap = read_caption_config(OmegaConf.to_container(_compose_eval("local_heldout", data_root).eval.modality_gap,
                                                     resolve=True))
    assert gap.images == bench.images and gap.captions == bench.captions


def test_no_dev_or_test_image_reaches_a_training_source(data_root, training_pairs):
    held_out = _split_names(data_root, "dev") | _split_names(data_root, "test")
    assert len(held_out) == 2000
    for stem, pairs in training_pairs.items():
        assert not {Path(p.image).name for p in pairs} & held_out, stem


NOT_LOCAL = {"e5v_paper"}  # Flickr30K / COCO Karpathy test: not in the shared data


@pytest.mark.parametrize("suite", sorted(p.stem for p in (REPO / "conf" / "eval").glob("*.yaml") if p.stem not in NOT_LOCAL))
def test_no_eval_image_or_caption_is_a_training_one(suite, data_root, training_pairs):
    cfg = _compose_eval(suite, data_root)
    # every benchmark over a caption file's images: retrieval, captioning, regions (the test images' boxes)
    caption_sets = [b.caption_settings() for b in benchmark_list(cfg.eval) if isinstance(b, CaptionImages)]
    if cfg.eval.get("modality_gap"):
        caption_sets.append(OmegaConf.to_container(cfg.eval.modality_gap, resolve=True))
    eval_images, eval_captions = set(), set()
    for settings in caption_sets:
        bench = read_caption_config(settings)
        eval_images |= {p.name for p in bench.images}
        eval_captions |= {normalise_caption(c) for c in bench.captions}
    for stem, pairs in training_pairs.items():
        assert not eval_images & {Path(p.image).name for p in pairs}, (suite, stem)
        assert not eval_captions & {normalise_caption(p.text) for p in pairs}, (suite, stem)


@pytest.fixture(scope="module")
def eval_sentences(data_root) -> dict[str, frozenset[str]]:
    """Every STS sentence and caption of every local evaluation suite (conf/eval/*), folded, by benchmark name."""
    by_benchmark: dict[str, frozenset[str]] = {}
    for path in sorted((REPO / "conf" / "eval").glob("*.yaml")):
        if path.stem in NOT_LOCAL:
            continue
        for b in benchmark_list(_compose_eval(path.stem, data_root).eval):
            if isinstance(b, (STSBenchmark, CaptionRetrievalBenchmark)):
                by_benchmark[b.name] = by_benchmark.get(b.name, frozenset()) | heldout_sentences({b.name: b})
    return by_benchmark


def _training_cells(data: str, data_root: Path, *overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", [f"data={data}", f"paths.data_root={data_root}", *overrides])
    datamodule = instantiate(cfg.data)
    return datamodule, text_cells(datamodule.read_train_set())


DATA_CONFIGS = sorted(p.stem for p in (REPO / "conf" / "data").glob("*.yaml"))
# conf/data configs whose training files the shared data does not hold: not read by the leakage tests, and why.
# mini_mmeb_train is read (its files are built from the shared data into paths.cache_dir; missing, the test fails
# naming the build command).
NOT_LOCAL_DATA = {"simcse_nli": "SimCSE's nli_for_simcse.csv (275k rows) is a download, not in the shared data"}

# Read from the shared data, then pinned: SNLI's premises are Flickr30k captions (Flickr8k test / dev captions
# among them) and STS reuses caption and news sentences; Flickr8k training captions include STS-B sentences.
# nli: 420 since paths.flickr8k.images lists images_dev (887 dev images): all 1,000 dev images' captions are
# held out (280 when the held-out reader found only the 113 dev images of flickr8k/images). mini_mmeb_train: rows
# dropped when training reads the files plus those the builder already left out: today's builder leaves out 597
# (33 Flickr30k-Entities, 282 + 282 Flickr8k retrieval) and training then finds none; built without its filter
# (heldout=frozenset()), training drops the same 597. A cache built by the builder before it filtered (counts.json
# drops nothing) is an older build that wrote 28 more such rows: training drops 625 from it.
HELD_OUT_ROWS = {"flickr30k_caption_pairs": 561, "image_text": 282, "image_text_regions": 282,
                 "mini_mmeb_train": 597, "nli": 468}
PRE_FILTER_MINI_MMEB_ROWS = 625


def test_every_data_config_is_checked_for_leakage_or_listed_with_why_not(data_root):
    assert sorted([*HELD_OUT_ROWS, *NOT_LOCAL_DATA]) == DATA_CONFIGS
    for data in NOT_LOCAL_DATA:  # still not local: else it belongs in HELD_OUT_ROWS
        datamodule, _ = _validation(data, data_root, "none")
        with pytest.raises(DataConfigError, match="not found"):
            datamodule.source.check_paths()


@pytest.mark.parametrize("data", sorted(HELD_OUT_ROWS))
@pytest.mark.slow  # reads every training file of the data set twice (3-13 s per config measured here)
def test_no_evaluation_sentence_reaches_a_training_set(data, data_root, eval_sentences):
    """No cell of any training row is, or ends with after an instruction (`holds`), a sentence of any evaluation
    suite: MMEB text->image queries put the caption after "...matches the given caption: "."""
    assert len(frozenset().union(*eval_sentences.values())) > 15_000  # STS12 + STS-B + SICK-R + Flickr8k test
    datamodule, cells = _training_cells(data, data_root)
    built = dropped_when_built(datamodule)
    expected = PRE_FILTER_MINI_MMEB_ROWS if data == "mini_mmeb_train" and built == 0 else HELD_OUT_ROWS[data]
    assert datamodule.heldout_dropped + built == expected
    leaks = holding(cells, eval_sentences)
    # ... and it is the filter that keeps them out: without it the same files hold more evaluation sentences
    # (or, for files the builder filtered, it dropped rows before training read them)
    unfiltered, raw = _training_cells(data, data_root, "heldout=none", "val=none")
    unfiltered_leaks = sum(map(len, holding(raw, eval_sentences).values()))
    assert unfiltered.heldout_dropped == 0 and (unfiltered_leaks - sum(map(len, leaks.values())) > 100 or built > 100)
    assert not leaks, f"data={data}: {describe(leaks)}"


def test_heldout_reads_a_benchmark_config_or_the_object_built_from_it_alike(tmp_path):
    """conf/heldout composes conf/benchmark/ files: a source is read by its format and files, `_target_` ignored,
    whether the DataModule gets the mapping or (Hydra's recursive instantiate) the benchmark object."""
    user = _user_copy(tmp_path, {"images": ["c.jpg"]})
    settings = {k: user[k] for k in ("format", "captions", "images", "split_files")} | {"split": "test"}
    as_config = {"f8k_test": {"_target_": "mmembed.evaluation.benchmarks.retrieval.CaptionRetrievalBenchmark",
                              **settings, "i2i": False}}
    as_object = {"f8k_test": CaptionRetrievalBenchmark(**settings)}
    assert heldout_sentences(as_config) == heldout_sentences(as_object) == {"a man surfs", "a dog runs"}
    with pytest.raises(DataConfigError, match="heldout.sources.x: format 'nope' has no sentences to hold out"):
        heldout_sentences({"x": {"format": "nope"}})


def test_heldout_filter_drops_rows_by_any_column_case_spacing_and_punctuation_folded():
    from datasets import Dataset

    # Flickr8k writes "runs .", SNLI "runs.", STS-B sometimes no full stop: one sentence for the filter
    rows = Dataset.from_dict({"sent0": ["A dog runs.", "Two kids play", "x"], "sent1": ["y", "z", "a  MAN surfs ."]})
    kept, dropped = drop_heldout_rows(rows, rows.column_names, frozenset({"a man surfs", "a dog runs"}))
    assert dropped == 2 and kept["sent0"] == ["Two kids play"]
    listed, dropped = drop_heldout_rows([{"text": "A dog runs"}, {"text": "a dog"}], ["text"], frozenset({"a dog runs"}))
    assert dropped == 1 and listed == [{"text": "a dog"}]


def test_long_text_suite_joins_each_test_images_five_captions_in_file_order(data_root):
    """conf/eval/long_text.yaml: 1,000 texts for the 1,000 official test images, text i = image i's captions joined."""
    cfg = OmegaConf.to_container(_compose_eval("long_text", data_root).eval.benchmarks.flickr8k_1k_long, resolve=True)
    long = read_caption_config(cfg)
    short = read_caption_config({**cfg, "join_captions": False})
    assert len(long.images) == len(long.captions) == 1000 and long.caption_image == list(range(1000))
    assert long.image_ids == short.image_ids
    first = [c.strip() for c, i in zip(short.captions, short.caption_image) if i == 0]
    assert len(first) == 5 and long.captions[0] == " ".join(first)
    assert long.meta["joined_captions"] == {"texts": 1000, "captions_per_text": len(short.captions) / 1000}


# Validation sets (conf/val/): all_local holds every one; none holds none.
VAL_SETS = sorted(p.stem for p in (REPO / "conf" / "val").glob("*.yaml") if p.stem not in ("all_local", "none"))


def _validation(data: str, data_root: Path, val: str = "all_local"):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", [f"data={data}", f"paths.data_root={data_root}", f"val={val}"])
    datamodule = instantiate(cfg.data)
    return datamodule, datamodule.validation


def _check_no_validation_leak(data: str, data_root: Path):
    """Every training row of `data` with val=all_local: no validation image (as a photo: `image_identity`) and no
    validation sentence (STS sentences, captions) in any column."""
    datamodule, validation = _validation(data, data_root)
    assert sorted(validation.names) == VAL_SETS  # every validation set
    rows = datamodule.read_train_set()
    columns = rows.column_names if hasattr(rows, "column_names") else list(rows[0])
    sentences = heldout_sentences(validation.heldout_sources())
    images = validation.heldout_images()
    assert len(sentences) > 5000 and len(images) == 1300  # 1,000 + 243 + 80 + 13 images, 36 of them twice
    leaks = holding(text_cells(rows), {"val=all_local": sentences})  # the filter's rule: instructions too
    assert not leaks, f"data={data}: {describe(leaks)}"
    image_columns = getattr(datamodule.source, "image_columns", ())
    trained_images = {image_identity(r) for c in image_columns if c in columns
                      for r in (rows[c] if hasattr(rows, "column_names") else [row[c] for row in rows]) if r}
    assert not trained_images & images, data
    return datamodule, trained_images


def test_every_validation_set_is_in_all_local_and_composes_its_benchmark_file(data_root):
    """conf/val/<set>.yaml composes conf/benchmark/ (no second reader or path): each builds a benchmark whose
    validation plan reads, and the sets of all_local are every set."""
    for name in VAL_SETS:
        _, validation = _validation("nli", data_root, name)
        assert validation.names == [name]
        plan = validation.setup()[name]
        assert plan.items and all(i["kind"] in ("text", "image", "cir_target", "cir_query") for i in plan.items)
    _, none = _validation("nli", data_root, "none")
    assert none is None


def test_no_validation_image_or_sentence_reaches_image_text_training(data_root):
    datamodule, trained = _check_no_validation_leak("image_text", data_root)
    flickr30k = read_caption_config({**_validation("nli", data_root, "flickr30k_test")[1].benchmarks()[
        "flickr30k_test"].caption_settings()})
    f30k = {image_identity(p) for p in flickr30k.images}
    train_split = {image_identity(n) for n in _split_names(data_root, "train")}
    # 173 of the 243 local Flickr30K test images are Flickr8k TRAIN images (the MANIFEST); training drops the
    # local ones, and the 80 COCO images: without validation sets they do train
    assert len(f30k) == 243 and len(f30k & train_split) == 173
    plain, _ = _validation("image_text", data_root, "stsb_dev")
    rows = plain.read_train_set()
    unfiltered = {image_identity(r["image"]) for r in rows}
    assert len(unfiltered & f30k) == 98 and len(unfiltered - trained) == 98 + 80


@pytest.mark.parametrize("data", sorted(HELD_OUT_ROWS))  # every local config (NOT_LOCAL_DATA: why not the others)
@pytest.mark.slow  # reads every training file of the data set
def test_no_validation_image_or_sentence_reaches_any_training_set(data, data_root):
    _check_no_validation_leak(data, data_root)
