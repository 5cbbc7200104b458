"""LRS3 through `datasets`, auto_avsr's preprocessed layout and the raw layout: rows, decoding, and clear errors or
counted skips."""

import logging
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from mmavsr_processing import (
    DatasetError,
    MediaError,
    MMAVSRTokenizer,
    load_auto_avsr_dataset,
    load_lrs3_dataset,
    write_audio,
    write_video,
)
from mmavsr_processing.media_check import check_dataset_media, find_bad_media


TEXTS = ["BIN BLUE AT F TWO NOW", "PLACE RED WITH G NINE SOON"]


@pytest.fixture()
def corpus(tmp_path):
    tokenizer = MMAVSRTokenizer.from_auto_avsr()
    lines = []
    for index, text in enumerate(TEXTS):
        relative = f"test/spk{index}/clip{index}.mp4"
        frames = 10 + index
        video = (np.random.default_rng(index).random((frames, 32, 32, 3)) * 255).astype(np.uint8)
        write_video(tmp_path / "demo" / relative, video)
        write_audio((tmp_path / "demo" / relative).with_suffix(".wav"), np.zeros(frames * 640, dtype=np.float32))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        lines.append(f"demo,{relative},{frames},{' '.join(map(str, ids))}")
    (tmp_path / "labels").mkdir()
    label_file = tmp_path / "labels" / "test.csv"
    label_file.write_text("\n".join(lines) + "\n")
    return tmp_path, label_file, lines


def test_rows_carry_decodable_video_audio_and_text(corpus):
    root, label_file, _ = corpus
    dataset = load_auto_avsr_dataset(root, label_file)
    assert dataset["text"] == TEXTS
    assert dataset["num_frames"] == [10, 11]
    assert dataset[0]["id"] == "demo/test/spk0/clip0.mp4"
    samples = dataset[1]["audio"].get_all_samples()
    assert samples.sample_rate == 16000 and samples.data.shape[-1] == 11 * 640
    frames = dataset[1]["video"].get_frames_in_range(0, 11).data
    assert frames.shape[0] == 11 and frames.dtype == torch.uint8


@pytest.mark.parametrize(
    "corruption, message",
    [
        ("missing_wav", r"line 2: audio .*clip1\.wav does not exist"),
        ("empty_mp4", r"line 1: video .*clip0\.mp4 is empty"),
        ("bad_ids", r"line 2: num_frames and token ids must be integers"),
        ("columns", r"line 2: expected 4 columns"),
        ("no_text", r"line 2: empty transcript"),
    ],
)
def test_bad_rows_name_the_file_and_line_or_are_skipped_and_counted(corpus, corruption, message, caplog):
    root, label_file, lines = corpus
    if corruption == "missing_wav":
        (root / "demo/test/spk1/clip1.wav").unlink()
    elif corruption == "empty_mp4":
        (root / "demo/test/spk0/clip0.mp4").write_bytes(b"")
    else:
        broken = {"bad_ids": lines[1] + " x7", "columns": "demo,only-two", "no_text": lines[1].rsplit(",", 1)[0] + ","}
        label_file.write_text(lines[0] + "\n" + broken[corruption] + "\n")
    with pytest.raises(DatasetError, match=message):
        load_auto_avsr_dataset(root, label_file)
    with caplog.at_level(logging.WARNING):
        dataset = load_auto_avsr_dataset(root, label_file, skip_bad_files=True)
    assert len(dataset) == 1
    assert "skipped 1 of 2 rows" in caplog.text
    assert "skipped rows" in dataset.info.description


def test_missing_root_or_label_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match="is not a directory"):
        load_auto_avsr_dataset(tmp_path / "nowhere", tmp_path / "x.csv")
    with pytest.raises(DatasetError, match=r"label file .*x\.csv does not exist"):
        load_auto_avsr_dataset(tmp_path, tmp_path / "x.csv")


# --- auto_avsr layout: corrupt (not just empty) media, checked by default ---


def test_check_media_finds_corrupt_files_that_are_not_empty(corpus):
    root, label_file, _ = corpus
    (root / "demo/test/spk1/clip1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    with pytest.raises(DatasetError, match=r"line 2: video .*clip1\.mp4 is corrupt"):
        load_auto_avsr_dataset(root, label_file)
    assert len(load_auto_avsr_dataset(root, label_file, skip_bad_files=True)) == 1
    # the opt-out for speed checks only that files exist and are not empty
    assert len(load_auto_avsr_dataset(root, label_file, check_media=False)) == 2
    (root / "demo/test/spk1/clip1.mp4").unlink()
    write_video(root / "demo/test/spk1/clip1.mp4", np.zeros((11, 32, 32, 3), dtype=np.uint8))
    (root / "demo/test/spk0/clip0.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    with pytest.raises(DatasetError, match=r"line 1: audio .*clip0\.wav is corrupt"):
        load_auto_avsr_dataset(root, label_file)


@pytest.fixture()
def five_clips(tmp_path):
    """Five clips in auto_avsr's layout, the fourth mp4 cut short as by an interrupted download."""
    tokenizer = MMAVSRTokenizer.from_auto_avsr()
    ids = " ".join(map(str, tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]))
    lines = []
    for index in range(5):
        relative = f"test/spk{index}/clip{index}.mp4"
        video = (np.random.default_rng(index).random((10, 32, 32, 3)) * 255).astype(np.uint8)
        write_video(tmp_path / "demo" / relative, video)
        write_audio((tmp_path / "demo" / relative).with_suffix(".wav"), np.zeros(10 * 640, dtype=np.float32))
        lines.append(f"demo,{relative},10,{ids}")
    truncated = tmp_path / "demo/test/spk3/clip3.mp4"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "five.csv").write_text("\n".join(lines) + "\n")
    return tmp_path, tmp_path / "labels" / "five.csv"


def test_skip_bad_files_skips_and_counts_a_truncated_mp4(five_clips, caplog):
    root, label_file = five_clips
    with caplog.at_level(logging.WARNING):
        dataset = load_auto_avsr_dataset(root, label_file, skip_bad_files=True, num_workers=3)
    assert dataset["id"] == [f"demo/test/spk{i}/clip{i}.mp4" for i in (0, 1, 2, 4)]
    assert dataset.info.description == "skipped rows: {'corrupt file': 1}"
    assert "skipped 1 of 5 rows" in caplog.text
    assert re.search(r"skipping: .*five\.csv, line 4: video .*spk3/clip3\.mp4 is corrupt", caplog.text)

    with pytest.raises(DatasetError, match=r"five\.csv, line 4: video .*spk3/clip3\.mp4 is corrupt"):
        load_auto_avsr_dataset(root, label_file)


def test_several_bad_files_are_counted_in_the_error(five_clips):
    root, label_file = five_clips
    (root / "demo/test/spk1/clip1.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    message = r"2 of 5 clips have unusable media: .*line 2: audio .*clip1\.wav is corrupt.*; .*line 4: video .*clip3"
    with pytest.raises(DatasetError, match=message):
        load_auto_avsr_dataset(root, label_file, num_workers=2)


@pytest.mark.smoke
def test_find_bad_media_reads_a_datasets_dataset_undecoded(five_clips):
    """The package's check on any `datasets.Dataset` with `Video` / `Audio` columns (paths or embedded bytes)."""
    root, label_file = five_clips
    dataset = load_auto_avsr_dataset(root, label_file, check_media=False)
    bad = find_bad_media(dataset, num_workers=2)
    assert [(item.index, Path(item.path).name) for item in bad] == [(3, "clip3.mp4")]
    assert "is corrupt" in bad[0].reason
    with pytest.raises(MediaError, match=r"training set: 1 of 5 clips have unusable media: video .*clip3\.mp4"):
        check_dataset_media(dataset, source="training set")
    kept = check_dataset_media(dataset, skip_bad_files=True, num_workers=2)
    assert kept["id"] == [f"demo/test/spk{i}/clip{i}.mp4" for i in (0, 1, 2, 4)]

    paths = [item["path"] for item in dataset.cast_column("video", datasets.Video(decode=False))["video"]]
    embedded = datasets.Dataset.from_dict(
        {"video": [{"path": None, "bytes": Path(path).read_bytes()} for path in paths]},
        features=datasets.Features({"video": datasets.Video()}),
    )
    bad = find_bad_media(embedded)
    assert [item.index for item in bad] == [3] and "video <embedded bytes> is corrupt" in bad[0].reason


# --- LRS3's raw layout: speaker folders of .mp4 (face video with audio) and .txt ---

RAW = {
    "trainval/spkA/50001": "SO WE WENT HOME",
    "trainval/spkB/50002": "AND THAT'S IT",
    "test/spkC/00003": "THANK YOU",
}


def lrs3_txt(text: str, timed: bool = True) -> str:
    words = "".join(f"{word} {0.3 * i:.2f} {0.3 * i + 0.25:.2f} 2.5\n" for i, word in enumerate(text.split()))
    return f"Text:  {text}\nConf:  4\n\n" + (f"WORD START END ASDSCORE\n{words}" if timed else "")


@pytest.fixture()
def lrs3_raw(tmp_path):
    root = tmp_path / "lrs3"
    for index, (stem, text) in enumerate(RAW.items()):
        frames = 10 + index
        video = (np.random.default_rng(index).random((frames, 48, 48, 3)) * 255).astype(np.uint8)
        audio = 0.1 * np.sin(np.arange(int(frames * 0.04 * 44100)) / 10).astype(np.float32)
        write_video(root / f"{stem}.mp4", video, audio=audio, sampling_rate=44100)
        (root / f"{stem}.txt").write_text(lrs3_txt(text, timed=index != 2))
    (root / "README.txt").write_text("not a clip: files directly in the root are ignored\n")
    return root


def test_raw_lrs3_rows_carry_video_audio_text_and_word_timings(lrs3_raw):
    dataset = load_lrs3_dataset(lrs3_raw, check_media=True)
    assert dataset["id"] == sorted(RAW)
    assert dataset["text"] == [RAW[key] for key in sorted(RAW)]
    row = dataset[dataset["id"].index("trainval/spkB/50002")]
    assert [word["word"] for word in row["words"]] == ["AND", "THAT'S", "IT"]
    assert row["words"][1]["start"] == pytest.approx(0.3) and row["words"][1]["end"] == pytest.approx(0.55)
    assert dataset[0]["words"] == []  # test/spkC: no timing table
    frames = row["video"].get_frames_in_range(0, 11).data
    assert tuple(frames.shape) == (11, 3, 48, 48)
    samples = row["audio"].get_all_samples()  # the mp4's AAC track, resampled from 44.1 kHz
    assert samples.sample_rate == 16000 and abs(samples.data.shape[-1] - 11 * 640) < 2048


@pytest.mark.parametrize(
    "corruption, message",
    [
        ("missing_txt", r"transcript .*spkA/50001\.txt does not exist"),
        ("orphan_txt", r"video .*spkB/50002\.mp4 does not exist"),
        ("empty_mp4", r"video .*spkA/50001\.mp4 is empty"),
        ("no_text_line", r"spkA/50001\.txt, line 1: expected `Text:  THE WORDS`"),
        ("bad_timing", r"spkA/50001\.txt, line 5: expected `WORD START END \[SCORE\]`, got 'SO zero 0.25 2.5'"),
        ("corrupt_mp4", r"video .*spkA/50001\.mp4 is corrupt"),
    ],
)
def test_raw_lrs3_bad_files_are_named_or_skipped_and_counted(lrs3_raw, corruption, message, caplog):
    clip = lrs3_raw / "trainval/spkA/50001"
    if corruption == "missing_txt":
        clip.with_suffix(".txt").unlink()
    elif corruption == "orphan_txt":
        (lrs3_raw / "trainval/spkB/50002.mp4").unlink()
    elif corruption == "empty_mp4":
        clip.with_suffix(".mp4").write_bytes(b"")
    elif corruption == "no_text_line":
        clip.with_suffix(".txt").write_text("SO WE WENT HOME\n")
    elif corruption == "bad_timing":
        clip.with_suffix(".txt").write_text(lrs3_txt(RAW["trainval/spkA/50001"]).replace("SO 0.00", "SO zero"))
    else:
        clip.with_suffix(".mp4").write_bytes(clip.with_suffix(".mp4").read_bytes()[:300])  # truncated download
    with pytest.raises(DatasetError, match=message):
        load_lrs3_dataset(lrs3_raw)
    with caplog.at_level(logging.WARNING):
        dataset = load_lrs3_dataset(lrs3_raw, skip_bad_files=True)
    assert len(dataset) == 2
    assert "skipped 1 of 3 rows" in caplog.text
    assert "skipped rows" in dataset.info.description


def test_raw_lrs3_empty_or_missing_root_is_named(tmp_path):
    with pytest.raises(DatasetError, match="is not a directory"):
        load_lrs3_dataset(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("Text:  NOT IN A SPEAKER FOLDER\n")
    with pytest.raises(DatasetError, match="no .mp4 or .txt file in its sub-folders"):
        load_lrs3_dataset(tmp_path)
