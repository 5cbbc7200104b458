"""auto_avsr's preprocessed layout through `datasets`: rows, decoding, and clear errors or counted skips."""

import logging

import numpy as np
import pytest
import torch

from mmavsr_processing import DatasetError, MMAVSRTokenizer, load_auto_avsr_dataset, write_audio, write_video


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
