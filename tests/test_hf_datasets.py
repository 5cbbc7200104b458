"""Datasets-native data: any `datasets` dataset as training rows, streamed frame-capped batches (sharded, resumable),
and prepared / demo corpora written as a dataset with their media embedded (save, load, train, decode)."""

import json
import logging
import math
import shutil

import datasets
import numpy as np
import pytest
import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from mmavsr_processing import (
    DatasetError,
    MMAVSRDataCollator,
    MMAVSRFeatureExtractor,
    MMAVSRProcessor,
    MMAVSRTokenizer,
    MMAVSRVideoProcessor,
    demo_corpus,
    load_auto_avsr_dataset,
    prepare,
    write_audio,
    write_video,
)
from mmavsr_processing.hf_datasets import (
    MaxFramesStreamBatcher,
    export_auto_avsr_dataset,
    load_avsr_dataset,
    shard_stream,
    streaming_dataloader,
)
from mmavsr_processing.stream_resume import StreamingStateCallback, restore_streaming_state
from mmavsr_training.arguments import parse_args
from mmavsr_training.run import main
from modeling_mmavsr import MMAVSRForConditionalGeneration

from .common import tiny_config
from .test_mouth_cropping import astronaut_clip
from .test_training_script import tiny_preset


WORDS = ["BIN", "BLUE", "AT", "NOW", "PLACE", "RED", "WITH", "GREEN"]


@pytest.fixture(scope="module")
def tokenizer():
    return MMAVSRTokenizer.from_auto_avsr()


@pytest.fixture(scope="module")
def processor(tokenizer):
    video = MMAVSRVideoProcessor(size={"height": 24, "width": 24}, crop_size={"height": 20, "width": 20})
    return MMAVSRProcessor(MMAVSRFeatureExtractor(), video, tokenizer)


def tiny_model(tokenizer, seed=0):
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    text = dict(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos)
    return MMAVSRForConditionalGeneration(tiny_config("audiovisual", text_config=text))


def training_args(output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        remove_unused_columns=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    values.update(overrides)
    return Seq2SeqTrainingArguments(**values)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer):
    """Ten short noise clips (8-16 frames, 24x24, with their wav) in auto_avsr's layout: ROOT/labels/train.csv."""
    root = tmp_path_factory.mktemp("corpus")
    generator = np.random.default_rng(0)
    lines = []
    for index in range(10):
        frames = int(generator.integers(8, 17))
        relative = f"train/clip{index}.mp4"
        write_video(root / "demo" / relative, (generator.random((frames, 24, 24)) * 255).astype(np.uint8))
        write_audio(root / "demo" / f"train/clip{index}.wav", 0.1 * generator.standard_normal(frames * 640))
        ids = tokenizer(" ".join(generator.choice(WORDS, 3)), add_special_tokens=False)["input_ids"]
        lines.append(f"demo,{relative},{frames},{' '.join(map(str, ids))}")
    (root / "labels").mkdir()
    (root / "labels" / "train.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def saved(corpus, tmp_path_factory):
    """The corpus written as a `datasets` dataset (`train`, and the same clips as `validation`) with its media
    embedded; the corpus folder is then removed."""
    copy = tmp_path_factory.mktemp("copy") / "corpus"
    shutil.copytree(corpus, copy)
    folder = tmp_path_factory.mktemp("saved") / "dataset"
    labels = copy / "labels" / "train.csv"
    export_auto_avsr_dataset(copy, {"train": labels, "val": labels}, save_to_disk=folder)
    shutil.rmtree(copy)  # every byte the dataset needs must be inside it
    return folder


def path_rows(corpus, frame_counts):
    """Rows naming the corpus files by path, one per entry of `frame_counts` (the files are reused)."""
    rows = []
    for index, frames in enumerate(frame_counts):
        clip = corpus / "demo" / "train" / f"clip{index % 10}"
        rows.append(
            {
                "id": f"row{index}",
                "mp4": f"{clip}.mp4",
                "wav": f"{clip}.wav",
                "sentence": "BIN BLUE AT",
                "num_frames": int(frames),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------------ loading


def test_parquet_of_paths_with_own_column_names_batches_like_the_csv_layout(corpus, processor, tmp_path):
    file = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(path_rows(corpus, [12, 9, 15])).to_parquet(file)
    dataset = load_avsr_dataset(file, video_column="mp4", audio_column="wav", text_column="sentence")
    assert sorted(dataset.column_names) == ["audio", "id", "num_frames", "text", "video"]
    reference = load_auto_avsr_dataset(corpus, corpus / "labels" / "train.csv").select(range(2))
    collator = MMAVSRDataCollator(processor)
    ours, theirs = collator([dataset[0], dataset[1]]), collator(list(reference))
    # the same files give the same model inputs, whichever loader named them
    for key in ("pixel_values_videos", "video_attention_mask", "input_features", "attention_mask"):
        torch.testing.assert_close(ours[key], theirs[key])
    assert ours["labels"].shape[0] == 2


def test_videofolder_with_metadata_gives_video_audio_and_text(corpus, processor, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    rows = []
    for index in range(3):
        for suffix in (".mp4", ".wav"):
            shutil.copy(corpus / "demo" / "train" / f"clip{index}{suffix}", folder / f"clip{index}{suffix}")
        rows.append(f"clip{index}.mp4,clip{index}.wav,BIN BLUE AT NOW")
    (folder / "metadata.csv").write_text("file_name,audio_file_name,transcription\n" + "\n".join(rows) + "\n")

    dataset = load_avsr_dataset(folder, text_column="transcription")
    assert len(dataset) == 3 and isinstance(dataset.features["audio"], datasets.Audio)
    batch = MMAVSRDataCollator(processor)(list(dataset))
    assert batch["pixel_values_videos"].shape[:2] == (3, max(batch["video_attention_mask"].sum(1)))
    assert batch["input_features"].shape[0] == 3

    stream = load_avsr_dataset(folder, text_column="transcription", streaming=True)
    batches = list(MaxFramesStreamBatcher(stream, batch_size=2, shuffle=False))
    assert [len(batch) for batch in batches] == [2, 1]
    assert MMAVSRDataCollator(processor)(batches[0])["labels"].shape[0] == 2


def test_missing_or_mistyped_columns_stop_before_training_naming_them(corpus, tmp_path):
    file = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(path_rows(corpus, [12, 9])).to_parquet(file)
    with pytest.raises(DatasetError) as error:
        load_avsr_dataset(file, video_column="mp4", audio_column="wav")  # text is in `sentence`
    message = str(error.value)
    assert "no text column 'text' (--text_column_name)" in message
    assert "mp4 (Value)" in message and "sentence (Value)" in message and "num_frames (Value)" in message
    with pytest.raises(
        DatasetError,
        match=r"the video column 'num_frames' \(--video_column_name\) holds "
        r"Value\('int64'\), expected a datasets.Video column or file paths",
    ):
        load_avsr_dataset(file, video_column="num_frames", audio_column="wav", text_column="sentence")
    with pytest.raises(DatasetError, match=r"no split 'test'; the splits are \['train'\]"):
        load_avsr_dataset(_saved_single_split(tmp_path), split="test")
    # a video-only model needs no audio column
    video_only = load_avsr_dataset(file, modalities=("video",), video_column="mp4", text_column="sentence")
    assert "audio" not in video_only.column_names and len(video_only) == 2


def _saved_single_split(tmp_path):
    folder = tmp_path / "single"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["A"]})}).save_to_disk(str(folder))
    return folder


# ---------------------------------------------------------------------------------------------------- streaming


def test_stream_batches_stay_under_max_frames_cover_every_row_once_and_resume(corpus, tmp_path):
    lengths = np.random.default_rng(1).integers(5, 40, size=37)
    file = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(path_rows(corpus, lengths)).to_parquet(file)
    stream = load_avsr_dataset(file, video_column="mp4", audio_column="wav", text_column="sentence", streaming=True)
    frames = dict(zip((f"row{i}" for i in range(len(lengths))), lengths.tolist()))

    batcher = MaxFramesStreamBatcher(stream, max_frames=60, buffer_size=10, seed=3)
    batches = [[row["id"] for row in batch] for batch in batcher]
    assert sorted(i for batch in batches for i in batch) == sorted(frames)
    for batch in batches:
        assert sum(frames[i] for i in batch) <= 60 or len(batch) == 1
    assert len(batches) < len(lengths)  # rows were grouped

    # stop after 5 batches, save, and a new batcher continues with the 6th
    stopped = MaxFramesStreamBatcher(stream, max_frames=60, buffer_size=10, seed=3)
    iterator = iter(stopped)
    first = [[row["id"] for row in next(iterator)] for _ in range(5)]
    state = stopped.state_dict()
    resumed = MaxFramesStreamBatcher(stream, max_frames=60, buffer_size=10, seed=3)
    resumed.load_state_dict(state)
    assert first == batches[:5]
    assert [[row["id"] for row in batch] for batch in resumed] == batches[5:]


def test_shard_stream_gives_each_process_its_own_rows(saved):
    ids = set(load_avsr_dataset(saved)["id"])
    for num_shards in (4, 3):  # whole shards per process, or every other row
        stream = load_avsr_dataset(saved, streaming=True, num_shards=num_shards)
        parts = [
            [
                row["id"]
                for batch in MaxFramesStreamBatcher(shard_stream(stream, rank, 2, seed=5), batch_size=3)
                for row in batch
            ]
            for rank in (0, 1)
        ]
        assert not set(parts[0]) & set(parts[1]) and set(parts[0]) | set(parts[1]) == ids
        assert abs(len(parts[0]) - len(parts[1])) <= 2


class StreamingTrainer(Seq2SeqTrainer):
    """What the training script does with --streaming: the batcher's own DataLoader."""

    def get_train_dataloader(self):
        return streaming_dataloader(self.train_dataset, self.data_collator, self.args)


class RecordingCollator:
    def __init__(self, collator):
        self.collator, self.seen = collator, []

    def __call__(self, rows):
        self.seen.append([row["id"] for row in rows])
        return self.collator(rows)


def test_streamed_training_resumes_with_the_next_batches(saved, processor, tokenizer, tmp_path):
    def run(output_dir, resume=None):
        stream = shard_stream(load_avsr_dataset(saved, streaming=True, num_shards=2), seed=0, shuffle_buffer_size=4)
        batcher = MaxFramesStreamBatcher(stream, max_frames=30, buffer_size=6, seed=0)
        collator = RecordingCollator(MMAVSRDataCollator(processor, training=True))
        args = training_args(output_dir, max_steps=5, save_strategy="steps", save_steps=2)
        trainer = StreamingTrainer(
            model=tiny_model(tokenizer),
            args=args,
            train_dataset=batcher,
            data_collator=collator,
            callbacks=[StreamingStateCallback(batcher)],
        )
        restored = restore_streaming_state(batcher, resume, args)
        trainer.train(resume_from_checkpoint=resume)
        return collator.seen, restored, trainer

    seen, restored, trainer = run(tmp_path / "full")
    assert not restored and trainer.state.global_step == 5 and len(seen) == 5
    assert (tmp_path / "full" / "checkpoint-2" / "stream_state_rank0.json").is_file()
    # 10 clips of 8-16 frames under 30 frames a batch: the 5 steps run past the first epoch
    assert len({i for batch in seen for i in batch}) == 10

    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed_seen, restored, resumed = run(tmp_path / "resumed", resume=str(tmp_path / "resumed" / "checkpoint-2"))
    assert restored and resumed.args.ignore_data_skip
    assert resumed_seen == seen[2:]  # the batches after the checkpoint's, not the first ones again
    assert resumed.state.global_step == 5


def test_bad_streamed_clip_is_skipped_and_named(corpus, processor, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes((corpus / "demo" / "train" / "clip0.mp4").read_bytes()[:200])
    rows = path_rows(corpus, [10, 10, 10])
    rows[1]["mp4"] = str(broken)
    file = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(rows).to_parquet(file)
    stream = load_avsr_dataset(file, video_column="mp4", audio_column="wav", text_column="sentence", streaming=True)
    batcher = MaxFramesStreamBatcher(stream, batch_size=3, shuffle=False, processor=processor, skip_bad_files=True)
    (batch,) = list(batcher)
    assert [row["id"] for row in batch] == ["row0", "row2"]
    assert len(batch[0]["skipped_clips"]) == 1 and str(broken) in batch[0]["skipped_clips"][0]
    collated = MMAVSRDataCollator(processor)(batch)
    assert collated["pixel_values_videos"].shape[0] == 2 and len(collated["skipped_clips"]) == 1
    with pytest.raises(ValueError, match=str(broken)):
        MMAVSRDataCollator(processor)(list(MaxFramesStreamBatcher(stream, batch_size=3, shuffle=False))[0])


# ------------------------------------------------------------------------------------------------------- export


def test_demo_corpus_saved_as_a_dataset_trains_two_steps_and_decodes(tmp_path, processor, tokenizer):
    corpus, folder = tmp_path / "demo", tmp_path / "dataset"
    demo_corpus.main(
        [
            "--output-dir",
            str(corpus),
            "--num-clips",
            "4",
            "--split-fractions",
            "0.5",
            "0.25",
            "0.25",
            "--num-workers",
            "1",
            "--save-to-disk",
            str(folder),
        ]
    )
    expected = load_auto_avsr_dataset(corpus, corpus / "labels" / "train.csv")
    written = {"val": "validation"}
    splits = {written.get(file.stem, file.stem) for file in (corpus / "labels").glob("*.csv") if file.stat().st_size}
    shutil.rmtree(corpus)  # the media must be embedded

    train = load_avsr_dataset(folder, split="train")
    assert set(datasets.load_from_disk(str(folder))) == splits and len(splits) >= 2  # an empty split is left out
    assert train["text"] == expected["text"] and train["num_frames"] == expected["num_frames"]
    assert train.features["video"].decode  # embedded bytes: decoded by datasets (torchcodec)

    model = tiny_model(tokenizer)
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args(tmp_path / "out"),
        train_dataset=train,
        data_collator=MMAVSRDataCollator(processor, training=True),
    )
    result = trainer.train()
    assert trainer.state.global_step == 2 and math.isfinite(result.training_loss)

    validation = load_avsr_dataset(folder, split=sorted(splits - {"train"})[0])
    batch = MMAVSRDataCollator(processor)(list(validation))
    labels = batch.pop("labels")
    model.eval()
    generated = model.generate(**batch.to(model.device), num_beams=2, max_new_tokens=4)
    texts = processor.batch_decode(generated, skip_special_tokens=True)
    assert len(texts) == len(validation) == labels.shape[0] and all(isinstance(text, str) for text in texts)


def test_prepare_writes_its_splits_as_a_dataset(tmp_path, tokenizer):
    raw = tmp_path / "raw"
    frames, _, _ = astronaut_clip(num_frames=12, size=192)
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(12 * 640) / 16000)).astype(np.float32)
    for split in ("train", "test"):
        write_video(raw / split / "spk0" / "00001.mp4", frames, fps=25.0, audio=tone)
        (raw / split / "spk0" / "00001.txt").write_text(f"Text:  WE WENT TO THE {split.upper()}\n")
    out, folder = tmp_path / "out", tmp_path / "dataset"
    for split in ("train", "test"):
        argv = [
            "--input-dir",
            str(raw / split),
            "--output-dir",
            str(out),
            "--dataset",
            "lrs3",
            "--split",
            split,
            "--save-to-disk",
            str(folder),
        ]
        assert prepare.main(argv) == 0
    shutil.rmtree(out)
    dataset = datasets.load_from_disk(str(folder))
    assert set(dataset) == {"train", "test"}  # the second run wrote both splits prepared so far
    test = load_avsr_dataset(folder, split="test")
    assert test["text"] == ["WE WENT TO THE TEST"] and test["num_frames"] == [12]
    video = test[0]["video"].get_frames_in_range(0, 12).data
    assert tuple(video.shape) == (12, 3, 96, 96)


# ------------------------------------------------------------------------------------------- training script


def script_flags(saved, output_dir, preset, *extra):
    return [
        f"--config_name={preset}",
        f"--dataset_name={saved}",
        f"--output_dir={output_dir}",
        "--report_to=none",
        "--per_device_eval_batch_size=2",
        "--seed=0",
        "--disable_tqdm=true",
        "--generation_num_beams=2",
        "--max-frames=30",
        *extra,
    ]


def test_script_trains_and_evaluates_from_dataset_name(saved, tmp_path):
    preset = tiny_preset(tmp_path / "p.json", "audiovisual")
    flags = script_flags(saved, tmp_path / "run", preset, "--do_train", "--do_eval", "--max_steps=2")
    results = main([*flags, "--max_eval_samples=3"])
    assert results["train_samples"] == 10 and results["eval_samples"] == 3
    assert 0 <= results["eval_wer"] and (tmp_path / "run" / "model.safetensors").is_file()


def test_script_streams_and_resumes_the_stream(saved, tmp_path, caplog):
    preset = tiny_preset(tmp_path / "p.json", "video")
    flags = script_flags(saved, tmp_path / "run", preset, "--do_train", "--streaming", "--save_steps=2")
    results = main([*flags, "--max_steps=3"])
    assert "train_samples" not in results and results["train_skipped_clips"] == 0
    assert (tmp_path / "run" / "checkpoint-2" / "stream_state_rank0.json").is_file()
    # the same command with more steps resumes the newest checkpoint, the stream where it stopped
    with caplog.at_level(logging.INFO, logger="mmavsr_processing"):
        main([*flags, "--max_steps=5"])
    assert "Resuming the stream where" in caplog.text and str(tmp_path / "run" / "checkpoint-3") in caplog.text
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["global_step"] == 5


def test_script_refuses_conflicting_data_flags_and_names_a_missing_column(saved, corpus, tmp_path):
    preset = tiny_preset(tmp_path / "p.json", "video")
    with pytest.raises(ValueError, match=r"--dataset_name .* and --root-dir, --train-file: give a dataset or"):
        main(
            script_flags(saved, tmp_path / "a", preset, "--do_train", f"--root-dir={corpus}", "--train-file=train.csv")
        )
    with pytest.raises(ValueError, match=r"--streaming streams --dataset_name's training split"):
        main(
            [
                f"--config_name={preset}",
                f"--root-dir={corpus}",
                "--train-file=train.csv",
                "--streaming",
                f"--output_dir={tmp_path / 'b'}",
                "--report_to=none",
            ]
        )
    with pytest.raises(ValueError, match=r"choose the splits' use with --do_train"):
        parse_args([f"--dataset_name={saved}", f"--output_dir={tmp_path / 'c'}"])
    with pytest.raises(DatasetError, match=r"no video column 'mouth' \(--video_column_name\); the columns are: id "):
        main(script_flags(saved, tmp_path / "d", preset, "--do_train", "--max_steps=1", "--video_column_name=mouth"))
