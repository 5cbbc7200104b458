"""MMAVSRDataCollator and MaxFramesBatchSampler: padding, -100 labels, input types, frame caps, epoch seeding."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmavsr_processing import MMAVSRProcessor, TimeMask, write_audio, write_video
from mmavsr_processing.collation import ClipReader, MaxFramesBatchSampler, MMAVSRDataCollator


@pytest.fixture(scope="module")
def processor():
    return MMAVSRProcessor.from_auto_avsr()


def _row(num_frames, text, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "video": rng.integers(0, 256, (num_frames, 96, 96, 3), dtype=np.uint8),
        "audio": {"array": (0.1 * rng.standard_normal(640 * num_frames)).astype(np.float32), "sampling_rate": 16000},
        "text": text,
    }


def test_collator_pads_everything_and_masks_labels(processor):
    rows = [_row(3, "BIN RED", 0), _row(6, "PLACE BLUE AT A ONE NOW", 1)]
    batch = MMAVSRDataCollator(processor)(rows)
    assert batch["pixel_values_videos"].shape == (2, 6, 1, 88, 88)
    assert batch["video_attention_mask"].sum(-1).tolist() == [3, 6]
    assert batch["input_features"].shape == (2, 3840)
    assert batch["attention_mask"].sum(-1).tolist() == [1920, 3840]
    labels = batch["labels"]
    assert labels.dtype == torch.int64
    short = len(processor.tokenizer("BIN RED")["input_ids"])
    assert labels[0, short:].eq(-100).all() and labels[0, :short].ne(-100).all()
    assert processor.batch_decode(labels) == ["BIN RED", "PLACE BLUE AT A ONE NOW"]


def test_collator_writes_ctc_labels_with_a_ctc_tokenizer(processor):
    """A CTC head with a vocabulary of its own (the LLM and Whisper decoders') gets `ctc_labels` in its units."""
    from mmavsr_processing import MMAVSRTokenizer

    ctc_tokenizer = MMAVSRTokenizer.from_auto_avsr()
    rows = [_row(3, "BIN RED", 0), _row(6, "PLACE BLUE AT A ONE NOW", 1)]
    batch = MMAVSRDataCollator(processor, modalities=("audio",), ctc_tokenizer=ctc_tokenizer)(rows)
    assert ctc_tokenizer.batch_decode(batch["ctc_labels"].clamp(min=0), skip_special_tokens=True) == [
        "BIN RED",
        "PLACE BLUE AT A ONE NOW",
    ]
    short = len(ctc_tokenizer("BIN RED")["input_ids"])
    assert batch["ctc_labels"][0, short:].eq(-100).all() and batch["ctc_labels"][0, -1].eq(-100)
    assert "ctc_labels" not in MMAVSRDataCollator(processor, modalities=("audio",))(rows)


def test_clip_reader_cache_decodes_each_clip_once_and_keeps_it_as_read(processor, tmp_path):
    rows = []
    for index in range(2):
        row = _row(4 + index, "BIN RED", index)
        write_video(tmp_path / f"{index}.mp4", row["video"])
        write_audio(tmp_path / f"{index}.wav", row["audio"]["array"])
        rows.append(
            {"video": str(tmp_path / f"{index}.mp4"), "audio": str(tmp_path / f"{index}.wav"), "text": "BIN RED"}
        )
    plain, cached = ClipReader(rows, processor), ClipReader(rows, processor, cache=True)
    read = plain[0]
    collator = MMAVSRDataCollator(
        processor,
        training=True,
        video_augmentation=TimeMask(max_width=3, stride=2, seed=0),
        audio_augmentation=TimeMask(max_width=1000, stride=2000, seed=0),
    )
    collator([cached[0], cached[1]])  # masks and crops work on copies
    for name in ("0.mp4", "0.wav"):
        (tmp_path / name).unlink()
    again = cached[0]  # from memory: its files are gone
    assert torch.equal(again["video"], read["video"]) and np.array_equal(again["audio"], read["audio"])
    with pytest.raises(ValueError, match=r"0\.mp4"):
        plain[0]
    # a cached clip is returned as a new dict: what a caller adds to it is not kept
    again["extra"] = 1
    assert "extra" not in cached[0]


def test_collator_reads_files_and_decoders(processor, tmp_path):
    from torchcodec.decoders import AudioDecoder, VideoDecoder

    row = _row(4, "HI")
    write_video(tmp_path / "a.mp4", row["video"], fps=25)
    write_audio(tmp_path / "a.wav", row["audio"]["array"])
    rows = [
        {"video": str(tmp_path / "a.mp4"), "audio": str(tmp_path / "a.wav"), "text": "HI"},
        {"video": VideoDecoder(str(tmp_path / "a.mp4")), "audio": AudioDecoder(str(tmp_path / "a.wav")), "text": "HI"},
    ]
    batch = MMAVSRDataCollator(processor)(rows)
    assert batch["pixel_values_videos"].shape == (2, 4, 1, 88, 88)
    torch.testing.assert_close(batch["input_features"][0], batch["input_features"][1], atol=1e-4, rtol=0)


def test_collator_modalities_and_bad_rows(processor):
    rows = [_row(2, "HI", 0), _row(3, "BIN", 1)]
    video_only = MMAVSRDataCollator(processor, modalities=("video",))(rows)
    assert set(video_only) == {"pixel_values_videos", "video_attention_mask", "labels"}
    no_text = MMAVSRDataCollator(processor)([{"audio": r["audio"]} for r in rows])
    assert set(no_text) == {"input_features", "attention_mask"}
    with pytest.raises(
        ValueError, match=r"row 1 has keys \['video', 'text'\], the first row has \['video', 'audio', 'text'\]"
    ):
        MMAVSRDataCollator(processor)([rows[0], {"video": rows[1]["video"], "text": "X"}])
    with pytest.raises(ValueError, match="8000 Hz, expected 16000 Hz"):
        MMAVSRDataCollator(processor)([{"audio": {"array": np.ones(800, np.float32), "sampling_rate": 8000}}])
    with pytest.raises(ValueError, match="rows carry none of the modalities"):
        MMAVSRDataCollator(processor)([{"text": "HI"}])
    with pytest.raises(ValueError, match="modalities must be"):
        MMAVSRDataCollator(processor, modalities=("lips",))


def test_collator_applies_augmentations(processor):
    rows = [_row(50, "HI", 0)]
    collator = MMAVSRDataCollator(processor, training=True, video_augmentation=TimeMask.for_video(seed=0))
    pixels = collator(rows)["pixel_values_videos"][0]  # (T, 1, 88, 88)
    black = (0 - 0.421) / 0.165
    masked_frames = torch.isclose(pixels, torch.tensor(black)).flatten(1).all(1)
    assert 0 < masked_frames.sum() < 50
    silenced = MMAVSRDataCollator(processor, audio_augmentation=[lambda wave: wave * 0 + 1.0])(rows)
    assert silenced["input_features"].abs().max() == 0  # a constant wave normalises to zero


def test_collator_moves_clip_boundaries_before_the_modalities(processor):
    rows = [_row(50, "HI", 0)]
    seen = []
    collator = MMAVSRDataCollator(
        processor,
        training=True,
        clip_augmentation=lambda clip: {**clip, "video": clip["video"][:30], "audio": clip["audio"][: 30 * 640]},
        video_augmentation=lambda video: seen.append(len(video)) or video,
    )
    batch = collator(rows)
    assert seen == [30], "the per-modality augmentations see the clip the clip augmentation returned"
    assert batch["pixel_values_videos"].shape[1] == 30


def _check_batches(sampler, lengths, max_frames):
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert sum(lengths[i] for i in batch) <= max_frames or len(batch) == 1
    return batches


def test_sampler_caps_frames_and_uses_every_index_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 400, size=200).tolist() + [2000]  # one clip longer than the cap
    for shuffle in (False, True):
        sampler = MaxFramesBatchSampler(lengths, max_frames=1600, shuffle=shuffle, seed=0)
        batches = _check_batches(sampler, lengths, 1600)
        assert [200] in batches
        assert len(sampler) == len(batches)
    ordered = list(MaxFramesBatchSampler(lengths, max_frames=1600, shuffle=False))
    assert ordered[0] == [200]  # the longest first


def test_sampler_is_deterministic_per_seed_and_epoch():
    lengths = list(range(10, 310, 3))
    sampler = MaxFramesBatchSampler(lengths, max_frames=500, seed=1)
    epoch0 = list(sampler)
    assert list(MaxFramesBatchSampler(lengths, max_frames=500, seed=1)) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    assert list(MaxFramesBatchSampler(lengths, max_frames=500, seed=2)) != epoch0


def test_sampler_drop_last_and_bad_arguments():
    lengths = [10] * 25
    batches = list(MaxFramesBatchSampler(lengths, max_frames=100, shuffle=False, drop_last=True))
    assert [len(b) for b in batches] == [10, 10]
    with pytest.raises(ValueError, match="max_frames must be >= 1"):
        MaxFramesBatchSampler(lengths, max_frames=0)
    with pytest.raises(ValueError, match="non-negative"):
        MaxFramesBatchSampler([3, -1])


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 300), min_size=1, max_size=60),
    max_frames=st.integers(1, 600),
    shuffle=st.booleans(),
    seed=st.integers(0, 10),
)
def test_sampler_property(lengths, max_frames, shuffle, seed):
    _check_batches(
        MaxFramesBatchSampler(lengths, max_frames=max_frames, shuffle=shuffle, seed=seed), lengths, max_frames
    )


def test_sampler_works_with_a_dataloader(processor):
    rows = [_row(n, "HI", n) for n in (2, 5, 3, 4)]
    sampler = MaxFramesBatchSampler([2, 5, 3, 4], max_frames=7, shuffle=False)
    loader = torch.utils.data.DataLoader(rows, batch_sampler=sampler, collate_fn=MMAVSRDataCollator(processor))
    frames = [batch["video_attention_mask"].sum().item() for batch in loader]
    assert frames == [5, 7, 2]  # longest first: [5], [4, 3], [2]
