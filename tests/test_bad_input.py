"""Bad input through every entry point: the loader, the processor (and collator), the pipeline and the training script.

Real broken files are written to tmp dirs: corrupt, empty and truncated mp4s, a wav at another rate, a stereo wav, a
30 fps video, audio much longer than its video, empty and non-ASCII transcripts, label CSVs with bad rows. Each must
give an error that names the file (or item) and the problem, or a documented skip that is counted.
"""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import TrainerCallback, pipeline

from mmavsr_processing import (
    DatasetError,
    MediaError,
    MMAVSRFeatureExtractor,
    MMAVSRProcessor,
    MMAVSRTokenizer,
    MMAVSRVideoProcessor,
    load_auto_avsr_dataset,
    resample_audio,
    write_audio,
    write_video,
)
from mmavsr_processing.collation import SKIPPED_CLIPS, ClipReader, MMAVSRDataCollator
from mmavsr_training.run import main
from modeling_mmavsr import MMAVSRForConditionalGeneration

from .common import tiny_config
from .test_training_script import tiny_preset, write_tiny_corpus


FRAMES, RATE, SIZE = 10, 16000, 24
AUTO_AVSR_TEXT = dict(vocab_size=5049, bos_token_id=5048, eos_token_id=5048, decoder_start_token_id=5048)
TEXT = "BIN BLUE AT NOW"


def _frames(count=FRAMES, seed=0):
    return (np.random.default_rng(seed).random((count, SIZE, SIZE)) * 255).astype(np.uint8)


def _wave(seconds, seed=0, rate=RATE):
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Good and broken clips side by side, each an `NAME.mp4` + `NAME.wav` pair in auto_avsr's layout."""
    root = tmp_path_factory.mktemp("media")
    folder = root / "d"
    seconds = FRAMES / 25
    for name in ("good", "corrupt", "empty", "truncated", "rate", "stereo", "fps", "long", "clíp_ñ"):
        fps = 30 if name == "fps" else 25
        write_video(folder / f"{name}.mp4", _frames(), fps=fps)
        wave = _wave(3.0 if name == "long" else seconds)
        if name == "rate":
            sf.write(folder / f"{name}.wav", _wave(seconds, rate=8000), 8000, subtype="PCM_16")
        elif name == "stereo":
            sf.write(folder / f"{name}.wav", np.stack([wave, wave], axis=1), RATE, subtype="PCM_16")
        else:
            write_audio(folder / f"{name}.wav", wave)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)
    (folder / "empty.mp4").write_bytes(b"")
    good = (folder / "good.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "labels").mkdir()
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return MMAVSRTokenizer.from_auto_avsr()


@pytest.fixture(scope="module")
def processor():
    return MMAVSRProcessor.from_auto_avsr()


def _ids(tokenizer, text=TEXT):
    return " ".join(map(str, tokenizer(text, add_special_tokens=False)["input_ids"]))


def _label_file(media, name, lines):
    path = media / "labels" / f"{name}.csv"
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() for line in lines))
    return path


# ------------------------------------------------------------------------------------------------ loader


LOADER_MEDIA_CASES = [
    ("corrupt", "corrupt file", r"video .*corrupt\.mp4 is corrupt"),
    ("truncated", "corrupt file", r"video .*truncated\.mp4 is corrupt"),
    ("empty", "missing or empty file", r"video .*empty\.mp4 is empty"),
    ("rate", "media format", r"audio .*rate\.wav is sampled at 8000 Hz, expected 16000 Hz"),
    ("stereo", "media format", r"audio .*stereo\.wav has 2 channels, expected mono"),
    ("fps", "media format", r"video .*fps\.mp4 is 30 fps, expected 25 fps"),
    ("long", "media format", r"audio .*long\.wav lasts 3\.00 s and video .*long\.mp4 0\.40 s"),
]


@pytest.mark.smoke
@pytest.mark.parametrize("name, problem, message", LOADER_MEDIA_CASES, ids=[c[0] for c in LOADER_MEDIA_CASES])
def test_loader_names_bad_media_or_skips_and_counts_them(media, tokenizer, name, problem, message):
    label_file = _label_file(media, name, [f"d,good.mp4,{FRAMES},{_ids(tokenizer)}\n", f"d,{name}.mp4,10,1234\n"])
    with pytest.raises(DatasetError, match=message):
        load_auto_avsr_dataset(media, label_file, tokenizer=tokenizer, check_media=True)
    dataset = load_auto_avsr_dataset(media, label_file, tokenizer=tokenizer, check_media=True, skip_bad_files=True)
    assert dataset["id"] == ["d/good.mp4"]
    assert dataset.info.description == f"skipped rows: {{{problem!r}: 1}}"


def test_loader_without_check_media_only_checks_presence(media, tokenizer):
    """The opt-out for speed passes a non-empty broken file; reading it later fails (see the ClipReader tests). The
    default opens every file."""
    lines = [f"d,{name}.mp4,{FRAMES},{_ids(tokenizer)}\n" for name in ("good", "truncated", "rate", "long")]
    label_file = _label_file(media, "presence", lines)
    assert len(load_auto_avsr_dataset(media, label_file, tokenizer=tokenizer, check_media=False)) == 4
    with pytest.raises(DatasetError, match=r"3 of 4 clips have unusable media: .*truncated\.mp4 is corrupt"):
        load_auto_avsr_dataset(media, label_file, tokenizer=tokenizer)


def test_loader_checks_num_frames_against_the_video(media, tokenizer):
    label_file = _label_file(media, "frames", [f"d,good.mp4,40,{_ids(tokenizer)}\n"])
    with pytest.raises(DatasetError, match=r"video .*good\.mp4 has 10 frames, but the label file says 40"):
        load_auto_avsr_dataset(media, label_file, tokenizer=tokenizer, check_media=True)
    assert len(load_auto_avsr_dataset(media, label_file, tokenizer=tokenizer, check_media=False)) == 1  # not opened


def test_label_csv_bad_rows_are_named_by_line_or_skipped_and_counted(media, tokenizer):
    ids = _ids(tokenizer)
    rows = [
        ("\ufeffd,good.mp4,10," + ids + "\n", None),  # a byte-order mark is not part of the dataset name
        ("dataset,rel_path,num_frames,token ids\n", r"num_frames and token ids must be integers"),
        (b"d,good.mp4,10,\xff\xfe 12\n", r"not UTF-8 text"),
        ('d,"good.mp4,10,12\n', r"not a CSV row"),
        ("d,good.mp4,10\n", r"expected 4 columns"),
        ("d,good.mp4,10,\n", r"empty transcript"),
        ("d,good.mp4,-3,12\n", r"num_frames must be positive"),
        ("d,good.mp4,10,99999\n", r"token ids \[99999\] are not transcript ids"),
        ("d,good.mp4,10,5048 0\n", r"token ids \[5048, 0\] are not transcript ids"),
        ("d,good.mp4,10,1 1\n", r"the token ids \[1, 1\] decode to an empty transcript"),
        ("d,go\x00od.mp4,10,12\n", r"the dataset or rel_path holds control characters"),
        ("d,missing.mp4,10,12\n", r"video .*missing\.mp4 does not exist"),
        ("\n", None),  # blank lines are ignored
        ("d,clíp_ñ.mp4,10," + ids + "\n", None),  # non-ASCII file names are fine
    ]
    for index, (row, message) in enumerate(rows):
        if message is None:
            continue
        label_file = _label_file(media, f"bad{index}", [rows[0][0], row])
        with pytest.raises(DatasetError, match=f"line 2: {message}") as raised:
            load_auto_avsr_dataset(media, label_file, tokenizer=tokenizer)
        assert str(label_file) in str(raised.value)
    label_file = _label_file(media, "all_rows", [row for row, _ in rows])
    dataset = load_auto_avsr_dataset(media, label_file, tokenizer=tokenizer, skip_bad_files=True)
    assert dataset["id"] == ["d/good.mp4", "d/clíp_ñ.mp4"]
    assert dataset["text"] == [TEXT, TEXT]
    assert dataset.info.description == "skipped rows: {'bad row': 10, 'missing or empty file': 1}"


# ------------------------------------------------------------------------------------------------ processor


def test_processor_names_unreadable_files(media, processor):
    folder = media / "d"
    for name, message in (
        ("corrupt", "cannot decode video"),
        ("truncated", "cannot decode video"),
        ("empty", "file is empty"),
        ("missing", "file not found"),
    ):
        with pytest.raises(MediaError, match=rf"{name}\.mp4: {message}"):
            processor(videos=[str(folder / "good.mp4"), str(folder / f"{name}.mp4")])
    with pytest.raises(ValueError, match=r"fps\.mp4: video is 30 fps, expected 25 fps"):
        processor(videos=[str(folder / "fps.mp4")])


def test_processor_refuses_or_converts_other_rates_and_channels(media, processor):
    folder = media / "d"
    with pytest.raises(ValueError, match=r"audio item 0: .*rate\.wav: sampling rate is 8000 Hz, expected 16000 Hz"):
        processor(audio=[str(folder / "rate.wav")])
    with pytest.raises(ValueError, match=r"audio item 0: .*stereo\.wav: audio has 2 channels, expected mono"):
        processor(audio=[str(folder / "stereo.wav")])
    with pytest.raises(ValueError, match=r"audio item 0: audio of shape \(2, 6400\) is not mono"):
        processor(audio=[np.zeros((2, 6400), np.float32)])
    converting = MMAVSRProcessor(
        MMAVSRFeatureExtractor(resample=True, mono=True), MMAVSRVideoProcessor(), processor.tokenizer
    )
    resampled = converting(audio=[str(folder / "rate.wav")])
    assert resampled["attention_mask"].sum().item() == FRAMES * 640  # 0.4 s at 16 kHz
    averaged = converting(audio=[str(folder / "stereo.wav")])["input_features"]
    torch.testing.assert_close(
        averaged, converting(audio=[str(folder / "good.wav")])["input_features"], atol=0.05, rtol=0
    )


def test_processor_refuses_audio_and_video_of_different_durations(media, processor):
    folder = media / "d"
    with pytest.raises(ValueError, match=r"item 1: the audio lasts 3\.00 s and the video 0\.40 s"):
        processor(videos=[_frames(), _frames()], audio=[_wave(0.4), _wave(3.0)], sampling_rate=RATE, text=[TEXT, TEXT])
    # within the tolerance (an AAC track's priming, whole frames), or with the check off, the batch is made
    assert processor(videos=[_frames()], audio=[_wave(0.4 + 0.3)])["attention_mask"].sum() == int(0.7 * RATE)
    batch = processor(videos=[str(folder / "long.mp4")], audio=[str(folder / "long.wav")], av_tolerance=None)
    assert batch["video_attention_mask"].sum() == FRAMES and batch["attention_mask"].sum() == 3 * RATE


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "text item 0: the transcript is empty"),
        ("  \t ", "text item 0: the transcript is empty"),
        (
            "CAFÉ NAÏVE",
            r"text item 0: the transcript 'CAFÉ NAÏVE' holds characters the tokenizer does not know \('É', 'Ï'\)",
        ),
        ("日本語", r"characters the tokenizer does not know \('日', '本', '語'\)"),
        (None, "text item 0: the transcript must be a string, got NoneType"),
    ],
)
def test_processor_refuses_empty_and_unknown_text(processor, text, message):
    with pytest.raises(ValueError, match=message):
        processor(text=[text])


def test_processor_keeps_text_the_vocabulary_spells(processor):
    """Lower case is upper-cased, apostrophes are pieces: none of it becomes <unk>."""
    labels = processor(text=["don't place blue"])["labels"]
    assert processor.batch_decode(labels) == ["DON'T PLACE BLUE"]
    assert processor.tokenizer.unk_token_id not in labels[0].tolist()


def test_collator_errors_name_the_rows_files(media, processor):
    folder = media / "d"
    collator = MMAVSRDataCollator(processor)

    def row(name, text=TEXT):
        return {"video": str(folder / f"{name}.mp4"), "audio": {"path": str(folder / f"{name}.wav")}, "text": text}

    assert collator([row("good"), row("clíp_ñ")])["video_attention_mask"].sum().item() == 2 * FRAMES
    with pytest.raises(ValueError, match=r"long\.mp4 and .*long\.wav: the audio lasts 3\.00 s and the video 0\.40 s"):
        collator([row("good"), row("long")])
    with pytest.raises(ValueError, match=r"good\.mp4 and .*good\.wav: the transcript is empty"):
        collator([row("good", text="")])
    with pytest.raises(MediaError, match=r"truncated\.mp4: cannot decode video"):
        collator([row("truncated")])
    with pytest.raises(ValueError, match=r"row 1: audio sampling rate is 8000 Hz"):
        collator([{"audio": _wave(0.4)}, {"audio": {"array": _wave(0.4, rate=8000), "sampling_rate": 8000}}])


# ------------------------------------------------------------------------------------------------ training data path


def _rows(media, names):
    folder = media / "d"
    return [
        {"video": str(folder / f"{n}.mp4"), "audio": str(folder / f"{n}.wav"), "text": TEXT, "index": i}
        for i, n in enumerate(names)
    ]


def test_clip_reader_skips_and_counts_clips_that_fail_to_decode(media, processor):
    """A truncated mp4 passes the loader's default checks; reading it in the DataLoader must not end the epoch."""
    rows = _rows(media, ["good", "truncated", "clíp_ñ", "rate", "long", "good"])
    with pytest.raises(MediaError, match=r"truncated\.mp4: cannot decode video"):
        ClipReader(rows, processor)[1]

    reader = ClipReader(rows, processor, skip_bad_files=True)
    loader = torch.utils.data.DataLoader(reader, batch_size=1, collate_fn=MMAVSRDataCollator(processor))
    batches = list(loader)
    assert len(batches) == len(rows)  # the epoch is whole: the next usable clip takes a bad one's place
    assert all(batch["video_attention_mask"].sum() == FRAMES for batch in batches)
    skipped = [batch.get(SKIPPED_CLIPS, []) for batch in batches]
    assert [len(s) for s in skipped] == [0, 1, 0, 2, 1, 0]
    assert "truncated.mp4: cannot decode video" in skipped[1][0]
    assert "rate.wav: sampling rate is 8000 Hz" in skipped[3][0]
    assert "the audio lasts 3.00 s and the video 0.40 s" in skipped[3][1] == skipped[4][0]
    assert reader[3]["index"] == 5  # the next usable row in dataset order, the same every epoch

    with pytest.raises(ValueError, match=r"None of the 2 clips can be used; the first problem: .*truncated\.mp4"):
        ClipReader(_rows(media, ["truncated", "corrupt"]), processor, skip_bad_files=True)[0]


def test_clip_reader_passes_columns_through(media, processor, tokenizer):
    label_file = _label_file(media, "columns", [f"d,good.mp4,{FRAMES},{_ids(tokenizer)}\n"])
    reader = ClipReader(load_auto_avsr_dataset(media, label_file, tokenizer=tokenizer), processor)
    assert reader["num_frames"] == [FRAMES] and len(reader) == 1
    clip = reader[0]
    assert clip["video"].shape == (FRAMES, 3, SIZE, SIZE) and clip["audio"].shape == (FRAMES * 640,)


class TrainingProgress(TrainerCallback):
    """Records whether training began and how many optimizer steps began."""

    def __init__(self):
        self.began, self.steps = False, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = True

    def on_step_begin(self, args, state, control, **kwargs):
        self.steps += 1


def test_training_script_checks_media_before_the_first_step(tmp_path):
    """A truncated mp4 in the training set and a stereo wav in the evaluation set. By default the run stops before
    training begins, naming the file; `--skip-bad-files` leaves both out and counts them; `--skip_media_check` starts
    training without opening the files, and the training data path meets the clip then (skipped, or named)."""
    corpus = write_tiny_corpus(tmp_path / "corpus")
    bad = corpus / "demo" / "train" / "clip1.mp4"
    bad.write_bytes(bad.read_bytes()[:300])  # a cut download: not empty
    stereo = corpus / "demo" / "test" / "clip0.wav"
    wave, _ = sf.read(stereo, dtype="float32")
    sf.write(stereo, np.stack([wave, wave], axis=1), RATE, subtype="PCM_16")
    flags = [
        f"--config_name={tiny_preset(tmp_path / 'p.json', 'audiovisual')}",
        f"--root-dir={corpus}",
        "--train-file=train.csv",
        "--val-file=test.csv",
        "--report_to=none",
        "--per_device_train_batch_size=1",
        "--per_device_eval_batch_size=1",
        "--num_train_epochs=1",
        "--save_strategy=no",
        "--generation_num_beams=1",
        "--generation_max_length=4",
        "--disable_tqdm=true",
    ]
    progress = TrainingProgress()
    with pytest.raises(DatasetError, match=r"train\.csv, line 2: video .*train/clip1\.mp4 is corrupt"):
        main(flags + [f"--output_dir={tmp_path / 'strict'}"], callbacks=[progress])
    assert not progress.began and progress.steps == 0

    out = tmp_path / "skipping"
    results = main(flags + [f"--output_dir={out}", "--skip-bad-files"])
    assert results["train_samples"] == 3 and results["train_skipped_clips"] == 0  # left out when loading
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    assert results["eval_samples"] == 1  # the stereo clip was left out too
    assert np.isfinite(results["eval_wer"])

    # opted out: training starts; the data path names the clip when it reads it, or skips it with --skip-bad-files
    progress = TrainingProgress()
    with pytest.raises(MediaError, match=r"train/clip1\.mp4: cannot decode video"):
        main(flags + [f"--output_dir={tmp_path / 'unchecked'}", "--skip_media_check"], callbacks=[progress])
    assert progress.began
    out = tmp_path / "unchecked_skipping"
    results = main(flags + [f"--output_dir={out}", "--skip_media_check", "--skip-bad-files"])
    assert results["train_skipped_clips"] == 1 and results["train_samples"] == 4
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4  # one batch a clip, none lost
    assert results["eval_samples"] == 1  # evaluation sets are checked whole when skipping


def test_training_from_dataset_name_checks_media_before_the_first_step(tmp_path):
    """The same check for `--dataset_name` (here a parquet of path rows): a truncated mp4 stops the run before
    training begins, naming the file; `--skip-bad-files` leaves it out; `--skip_media_check` starts training."""
    import datasets

    corpus = write_tiny_corpus(tmp_path / "corpus")
    bad = corpus / "demo" / "train" / "clip1.mp4"
    bad.write_bytes(bad.read_bytes()[:300])
    clips = [corpus / "demo" / "train" / f"clip{index}" for index in range(4)]
    rows = [{"video": f"{clip}.mp4", "audio": f"{clip}.wav", "text": TEXT} for clip in clips]
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "rows.parquet")
    flags = [
        f"--config_name={tiny_preset(tmp_path / 'p.json', 'audiovisual')}",
        f"--dataset_name={tmp_path / 'rows.parquet'}",
        "--do_train",
        "--report_to=none",
        "--per_device_train_batch_size=1",
        "--max_steps=2",
        "--save_strategy=no",
        "--disable_tqdm=true",
    ]
    progress = TrainingProgress()
    with pytest.raises(MediaError, match=r"rows\.parquet \(train split\): 1 of 4 clips .*train/clip1\.mp4 is corrupt"):
        main(flags + [f"--output_dir={tmp_path / 'strict'}"], callbacks=[progress])
    assert not progress.began

    results = main(flags + [f"--output_dir={tmp_path / 'skipping'}", "--skip-bad-files"])
    assert results["train_samples"] == 3

    # opted out: nothing is left out up front and training runs (the data path skips the clip if it meets it)
    progress = TrainingProgress()
    unchecked = ["--skip_media_check", "--skip-bad-files"]
    results = main(flags + [f"--output_dir={tmp_path / 'unchecked'}", *unchecked], callbacks=[progress])
    assert progress.began and progress.steps == 2 and results["train_samples"] == 4


# ------------------------------------------------------------------------------------------------ pipeline


def _save_model(folder, modality, seed=0):
    torch.manual_seed(seed)
    MMAVSRForConditionalGeneration(tiny_config(modality, text_config=AUTO_AVSR_TEXT)).eval().save_pretrained(folder)
    MMAVSRProcessor.from_auto_avsr().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        modality: pipeline(
            "audio-visual-speech-recognition", model=_save_model(root / modality, modality), max_new_tokens=4
        )
        for modality in ("audio", "audiovisual")
    }


def test_pipeline_names_unreadable_videos(media, pipelines):
    folder = media / "d"
    for name, message in (("corrupt", "cannot decode video"), ("truncated", "cannot decode video"), ("empty", "empty")):
        with pytest.raises(MediaError, match=rf"{name}\.mp4: .*{message}"):
            pipelines["audiovisual"]({"video": str(folder / f"{name}.mp4"), "audio": _wave(0.4)})
        with pytest.raises(MediaError, match=rf"{name}\.mp4"):
            pipelines["audio"](str(folder / f"{name}.mp4"))


def test_pipeline_refuses_audio_and_video_of_different_durations(media, pipelines):
    folder = media / "d"
    clip = media / "long_track.mp4"
    write_video(clip, _frames(), audio=_wave(3.0))
    with pytest.raises(ValueError, match=r"long_track\.mp4: the audio lasts 3\.\d\d s and the video 0\.40 s"):
        pipelines["audiovisual"](str(clip))
    with pytest.raises(ValueError, match=r"video input: the audio lasts 3\.00 s and the video 0\.40 s"):
        pipelines["audiovisual"]({"video": _frames(), "audio": _wave(3.0), "sampling_rate": RATE})
    text = pipelines["audiovisual"]({"video": str(folder / "good.mp4"), "audio": str(folder / "good.wav")})["text"]
    assert isinstance(text, str)


def test_pipeline_resamples_and_averages_audio_files_and_names_empty_ones(media, pipelines, tmp_path):
    asr = pipelines["audio"]
    folder = media / "d"
    wave = _wave(0.4)
    sf.write(tmp_path / "48k.wav", resample_audio(wave, RATE, 48000), 48000, subtype="FLOAT")  # the same sound
    sf.write(tmp_path / "stereo.wav", np.stack([wave, wave], axis=1), RATE, subtype="FLOAT")
    sf.write(tmp_path / "mono.wav", wave, RATE, subtype="FLOAT")

    def features(path):
        return next(iter(asr.preprocess(str(path))))["input_features"]

    reference = features(tmp_path / "mono.wav")
    torch.testing.assert_close(features(tmp_path / "stereo.wav"), reference)
    resampled = features(tmp_path / "48k.wav")
    assert resampled.shape == reference.shape
    assert np.corrcoef(resampled.flatten(), reference.flatten())[0, 1] > 0.99
    assert asr(str(folder / "clíp_ñ.wav"))["text"] == asr(str(folder / "good.wav"))["text"]  # the same sound
    sf.write(tmp_path / "silent.wav", np.zeros(0, np.float32), RATE)
    with pytest.raises(MediaError, match=r"silent\.wav: the audio file holds no sample"):
        asr(str(tmp_path / "silent.wav"))
    (tmp_path / "garbage.wav").write_bytes(b"RIFF" + b"\x00" * 40)
    with pytest.raises(MediaError, match=r"garbage\.wav: cannot read audio"):
        asr(str(tmp_path / "garbage.wav"))
