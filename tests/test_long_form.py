"""Long-form transcription: recordings longer than a segment, made of demo corpus clips with pauses between them, are
cut at pauses (silero-vad) or in overlapping windows, decoded in batches, and joined with nothing lost or doubled; the
timestamps are those of the true clips; files are read in pieces; a recording too long for a model is refused, never
truncated."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import pipeline

from mmavsr_processing import MMAVSRFeatureExtractor, MMAVSRProcessor, write_audio, write_video
from mmavsr_processing.demo_corpus import generate_demo_corpus, long_recording
from mmavsr_processing.long_form import (
    SpeechDetector,
    cut_ranges,
    fixed_windows,
    frame_aligned,
    overlap_start,
    speech_segments,
)
from mmavsr_processing.media_io import iter_audio_blocks, iter_video_frames, read_video, resample_frames
from modeling_mmavsr import MMAVSRForConditionalGeneration, pipeline_mmavsr

from .test_pipelines import AUTO_AVSR_TEXT, RATE, tiny_config


GENERATE = dict(num_beams=1, max_new_tokens=4)
SEGMENT_S = 5.0  # recordings longer than this are segmented (the default, 20 s, would need a longer recording)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """7 demo clips with 0.3-1 s pauses (about 20 s): the wave, the frames, the clips' true times, and files."""
    root = tmp_path_factory.mktemp("long")
    labels = generate_demo_corpus(
        root / "corpus", num_clips=7, split_fractions=(0, 0, 1), num_workers=1, progress=False
    )
    long = long_recording(root / "corpus", labels["test"], seed=0)
    paths = {"wav": root / "long.wav", "mp4": root / "long.mp4", "silent": root / "silent.mp4"}
    write_audio(paths["wav"], long.wave)
    write_video(paths["mp4"], long.frames, audio=long.wave)
    write_video(paths["silent"], long.frames)
    return long, {key: str(path) for key, path in paths.items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_models")
    folders = {}
    for seed, modality in enumerate(("audio", "video", "audiovisual")):
        torch.manual_seed(seed)
        model = MMAVSRForConditionalGeneration(tiny_config(modality, text_config=AUTO_AVSR_TEXT)).eval()
        model.save_pretrained(root / modality)
        MMAVSRProcessor.from_auto_avsr().save_pretrained(root / modality)
        folders[modality] = (str(root / modality), model)
    return folders


def decode(model, processor, **inputs) -> list[int]:
    """The tokens of one segment decoded alone, special tokens left out."""
    ids = model.generate(**processor(**inputs, sampling_rate=RATE), **GENERATE)[0].tolist()
    return [token for token in ids if token not in processor.tokenizer.all_special_ids]


def speech_ranges(wave: np.ndarray) -> list[tuple[int, int]]:
    probabilities = SpeechDetector().probabilities([wave], RATE)
    return speech_segments(probabilities, len(wave), max_segment_s=SEGMENT_S)


def test_overlap_start_drops_only_the_repeated_words():
    assert overlap_start([5, 6, 7, 8, 9], [8, 9, 10, 11]) == 2
    assert overlap_start([5, 6, 7, 8, 9], [7, 8, 9, 10]) == 3
    assert overlap_start([5, 6, 7, 8, 9], [1, 2, 3]) == 0  # no repeat found: nothing is dropped
    assert overlap_start([5, 6, 7, 8, 9], [7, 4, 9, 10]) == 3  # one word heard differently in the overlap
    assert overlap_start([], [1, 2]) == 0


def test_cut_ranges_reads_only_what_the_next_range_needs():
    data = np.arange(1000)
    pulled = []

    def blocks():
        for start in range(0, len(data), 100):
            pulled.append(start)
            yield data[start : start + 100]

    ranges = fixed_windows(len(data), 300, 50)
    assert ranges[0] == (0, 300) and ranges[1] == (200, 500) and ranges[-1][1] == 1000
    pieces = cut_ranges(blocks(), ranges)
    assert np.array_equal(next(pieces), data[:300]) and len(pulled) == 3
    for (start, stop), piece in zip(ranges[1:], pieces):
        assert np.array_equal(piece, data[start:stop])
        assert len(pulled) == -(-stop // 100)  # never a block ahead
    with pytest.raises(ValueError, match="longer than twice its overlap"):
        fixed_windows(1000, 100, 50)


def test_streaming_readers_give_what_the_whole_file_readers_give(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (73, 32, 32, 3), dtype=np.uint8)
    wave = (0.1 * rng.standard_normal(44100 * 2)).astype(np.float32)
    write_video(tmp_path / "v.mp4", frames, fps=30, audio=wave, sampling_rate=44100)
    whole, fps = read_video(tmp_path / "v.mp4")
    blocks = list(iter_video_frames(tmp_path / "v.mp4", block_frames=10))
    assert max(len(block) for block in blocks) <= 10
    assert np.array_equal(np.concatenate(blocks), resample_frames(whole, fps))
    sound = list(iter_audio_blocks(tmp_path / "v.mp4", RATE, block_seconds=0.5))
    assert {len(block) for block in sound[:-1]} == {RATE // 2}
    assert abs(sum(map(len, sound)) - 2 * RATE) < 2048


def test_long_audio_is_cut_at_pauses_with_the_true_clip_times(models, recording):
    long, paths = recording
    folder, model = models["audio"]
    processor = MMAVSRProcessor.from_pretrained(folder)
    asr = pipeline("audio-visual-speech-recognition", model=folder, max_segment_s=SEGMENT_S, **GENERATE)
    result = asr(paths["wav"], return_timestamps=True)
    # one segment per clip, within 0.5 s of the clip's true start and end
    assert len(result["chunks"]) == len(long.clips)
    for chunk, (start, end, _) in zip(result["chunks"], long.clips):
        assert abs(chunk["timestamp"][0] - start) < 0.5 and abs(chunk["timestamp"][1] - end) < 0.5, (chunk, start)
    # each segment decoded alone, its words kept once and in order
    ranges = speech_ranges(long.wave)
    alone = [decode(model, processor, audio=long.wave[a:b]) for a, b in ranges]
    assert [chunk["text"] for chunk in result["chunks"]] == [processor.tokenizer.decode(ids) for ids in alone]
    assert result["text"] == processor.tokenizer.decode(sum(alone, []))
    # a wave gives what the file gives; batches of segments give what one at a time gives
    assert asr(long.wave)["text"] == result["text"]
    assert asr(paths["wav"], batch_size=3)["text"] == result["text"]
    # in one piece, as asked: the whole recording goes to the model (no segment)
    whole = asr(paths["wav"], segmentation="off", return_timestamps=True)
    assert whole["chunks"] == [{"text": whole["text"], "timestamp": (0.0, round(len(long.wave) / RATE, 3))}]
    assert whole["text"] == processor.tokenizer.decode(decode(model, processor, audio=long.wave))


def test_the_speech_pad_widens_each_segment_as_asked(models, recording):
    long, paths = recording
    asr = pipeline("audio-visual-speech-recognition", model=models["audio"][0], max_segment_s=SEGMENT_S, **GENERATE)
    probabilities = SpeechDetector().probabilities([long.wave], RATE)
    spans = {}
    for pad in (0.0, 0.3):
        chunks = asr(paths["wav"], return_timestamps=True, speech_pad_s=pad)["chunks"]
        expected = speech_segments(probabilities, len(long.wave), max_segment_s=SEGMENT_S, pad_s=pad)
        assert [chunk["timestamp"] for chunk in chunks] == [
            (round(a / RATE, 3), round(b / RATE, 3)) for a, b in expected
        ]
        spans[pad] = sum(end - start for start, end in expected) / RATE
    assert spans[0.3] > spans[0.0] + 0.3 * len(long.clips), "a wider pad keeps more sound around each clip"
    with pytest.raises(ValueError, match="speech_pad_s must be a number of seconds >= 0"):
        asr(paths["wav"], speech_pad_s=-0.1)


def test_the_progress_bar_counts_seconds_of_the_recording(models, recording, capsys):
    long, paths = recording
    asr = pipeline("audio-visual-speech-recognition", model=models["audio"][0], max_segment_s=SEGMENT_S, **GENERATE)
    asr(paths["wav"], progress=True)
    shown = re.findall(r"(\d+\.\d+)/(\d+\.\d+) s", capsys.readouterr().err)
    total = f"{len(long.wave) / RATE:.1f}"
    assert shown and shown[-1] == (total, total), shown[-3:]  # the whole recording, one decimal, never 47.900000000001
    assert all(len(done.split(".")[1]) == 1 for done, _ in shown)


def test_long_video_with_sound_is_cut_at_pauses_and_read_in_pieces(models, recording, monkeypatch):
    long, paths = recording
    ranges = frame_aligned(speech_ranges(long.wave), len(long.frames))
    frames, _ = read_video(paths["mp4"])  # as H.264 gives them back
    for name in ("read_video", "read_audio", "read_audio_track"):  # the long file is never read whole
        monkeypatch.setattr(pipeline_mmavsr, name, lambda *args, **kwargs: pytest.fail("read whole"))
    for modality in ("audiovisual", "video"):
        folder, model = models[modality]
        processor = MMAVSRProcessor.from_pretrained(folder)
        avsr = pipeline("audio-visual-speech-recognition", model=folder, max_segment_s=SEGMENT_S, **GENERATE)
        result = avsr(paths["mp4"], return_timestamps=True, batch_size=2)
        assert len(result["chunks"]) == len(long.clips)
        for chunk, (start, end, _) in zip(result["chunks"], long.clips):
            assert abs(chunk["timestamp"][0] - start) < 0.5 and abs(chunk["timestamp"][1] - end) < 0.5
        alone = []
        for a, b in ranges:
            inputs = {"videos": frames[a:b]}
            if modality == "audiovisual":
                inputs["audio"] = long.wave[a * 640 : b * 640]
            alone.append(decode(model, processor, **inputs))
        assert result["text"] == processor.tokenizer.decode(sum(alone, [])), modality


def test_silent_video_is_cut_into_overlapping_windows_joined_once(models, recording):
    long, paths = recording
    folder, model = models["video"]
    processor = MMAVSRProcessor.from_pretrained(folder)
    vsr = pipeline("audio-visual-speech-recognition", model=folder, **GENERATE)
    result = vsr(paths["silent"], chunk_length_s=4.0, stride_length_s=0.5, return_timestamps=True)
    frames, _ = read_video(paths["silent"])
    windows = fixed_windows(len(frames), 100, 12)
    assert len(result["chunks"]) == len(windows) > 3
    merged = []
    for index, (a, b) in enumerate(windows):
        ids = decode(model, processor, videos=frames[a:b])
        kept = ids[overlap_start(merged, ids) :] if index else ids
        merged += kept
        assert result["chunks"][index]["text"] == processor.tokenizer.decode(kept)
    assert result["text"] == processor.tokenizer.decode(merged)
    # windows share their overlaps: each chunk ends where the next starts, the last at the end
    times = [chunk["timestamp"] for chunk in result["chunks"]]
    assert times[0][0] == 0.0 and times[-1][1] == round(len(long.frames) / 25, 3)
    assert all(previous[1] == following[0] for previous, following in zip(times, times[1:]))
    # without sound, "auto" chooses windows for a recording longer than max_segment_s
    assert len(vsr(paths["silent"], max_segment_s=SEGMENT_S, return_timestamps=True)["chunks"]) > 1
    with pytest.raises(ValueError, match="silent.mp4: segmentation='vad' finds the pauses in the sound"):
        vsr(paths["silent"], segmentation="vad")


def test_too_long_for_the_model_is_refused_never_truncated(models, recording, tmp_path):
    long, paths = recording
    folder, _ = models["audio"]
    extractor = MMAVSRFeatureExtractor(feature_type="log-mel", chunk_length=10)
    with pytest.raises(ValueError, match=r"audio item 0 lasts 1\d\.\d\d s, longer than the 10 s log-mel window"):
        extractor(long.wave)
    processor = MMAVSRProcessor.from_auto_avsr(feature_type="log-mel", chunk_length=10)
    asr = pipeline("audio-visual-speech-recognition", model=folder, feature_extractor=processor.feature_extractor)
    with pytest.raises(ValueError, match=r"long.wav: lasts 1\d\.\d s, longer than this model takes in one piece \(10"):
        asr(paths["wav"], segmentation="off")
    # Transformers' own ASR pipeline has no segments: it refuses, where it used to keep the first window only
    plain = pipeline("automatic-speech-recognition", model=folder, feature_extractor=processor.feature_extractor)
    with pytest.raises(ValueError, match="longer than the 10 s log-mel window .* never truncated"):
        plain(long.wave)
    with pytest.raises(ValueError, match="segmentation must be one of"):
        asr(paths["wav"], segmentation="pauses")
    with pytest.raises(ValueError, match="no word or character timestamps"):
        asr(paths["wav"], return_timestamps="word")


def test_transcribe_command_writes_subtitles_and_names_each_unreadable_input(models, recording, tmp_path, capsys):
    from importlib.metadata import entry_points

    from mmavsr_processing.subtitles import format_timestamp
    from mmavsr_training.transcribe import console_main, main

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "mmavsr-transcribe"]
    assert script.load() is console_main
    long, paths = recording
    folder, _ = models["audiovisual"]
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    inputs = [paths["mp4"], str(tmp_path / "missing.wav"), str(tmp_path / "broken.mp4"), paths["silent"]]
    status = main(
        [
            *inputs,
            "--model",
            folder,
            "--max-segment-s",
            str(SEGMENT_S),
            "--max-new-tokens",
            "4",
            "--num-beams",
            "1",
            "--output-dir",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    errors = capsys.readouterr().err.splitlines()
    assert status == 1
    problems = [line for line in errors if line.startswith("mmavsr-transcribe: ")]
    assert len(problems) == 3  # one line for each input it could not transcribe, in order
    assert problems[0] == f"mmavsr-transcribe: {tmp_path / 'missing.wav'}: file not found"
    assert problems[1].startswith(f"mmavsr-transcribe: {tmp_path / 'broken.mp4'}: cannot decode")
    assert problems[2] == (
        f"mmavsr-transcribe: {paths['silent']}: this audiovisual model needs the audio track, but the video has none "
        "(give {'video': ..., 'audio': wave, 'sampling_rate': rate})."
    )
    srt = (tmp_path / "out/long.srt").read_text()
    cues = srt.strip().split("\n\n")
    assert len(cues) == len(long.clips)
    for number, (cue, (start, end, _)) in enumerate(zip(cues, long.clips), start=1):
        index, times, text = cue.split("\n")
        assert index == str(number) and text.strip()
        first, last = times.split(" --> ")
        assert abs(_seconds(first) - start) < 0.5 and abs(_seconds(last) - end) < 0.5
    assert format_timestamp(3725.5) == "01:02:05,500" and format_timestamp(0.0421, ".") == "00:00:00.042"
    # the same recording as a vtt and a json beside it, in int8
    assert (
        main(
            [
                paths["mp4"],
                "--model",
                folder,
                "--max-segment-s",
                str(SEGMENT_S),
                "--max-new-tokens",
                "4",
                "--output-format",
                "vtt",
                "--int8",
                "--no-progress",
            ]
        )
        == 0
    )
    vtt = (Path(paths["mp4"]).with_suffix(".vtt")).read_text()
    assert vtt.startswith("WEBVTT\n\n") and vtt.count(" --> ") == len(long.clips)
    # the pauses' settings reach the segmentation: without a pad each cue is the speech alone, so shorter
    narrow = tmp_path / "narrow"
    flags = ["--max-segment-s", str(SEGMENT_S), "--max-new-tokens", "4", "--no-progress", "--output-format", "json"]
    assert main([paths["mp4"], "--model", folder, *flags, "--speech-pad-s", "0", "--output-dir", str(narrow)]) == 0
    assert main([paths["mp4"], "--model", folder, *flags, "--speech-pad-s", "0.3", "--output-dir", str(tmp_path)]) == 0
    segments = [json.loads(file.read_text())["segments"] for file in (narrow / "long.json", tmp_path / "long.json")]
    assert len(segments[0]) == len(segments[1]) == len(long.clips)
    spans = [sum(segment["end"] - segment["start"] for segment in listed) for listed in segments]
    assert spans[1] > spans[0] + 0.3 * len(long.clips)
    for bad in (["--speech-pad-s", "-1"], ["--min-pause-s", "0"]):
        with pytest.raises(SystemExit) as stop:
            main([paths["mp4"], "--model", folder, *bad])
        assert stop.value.code == 2
    assert "must be" in capsys.readouterr().err


def _seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.replace(",", ".").split(":")
    return 3600 * int(hours) + 60 * int(minutes) + float(seconds)


def test_int8_quantizes_every_linear_layer_and_stays_close_to_fp32(models, recording):
    long, _ = recording
    folder, model = models["audio"]
    processor = MMAVSRProcessor.from_pretrained(folder)
    inputs = processor(audio=[long.wave[: 3 * RATE]], sampling_rate=RATE)
    with torch.no_grad():
        expected = model(**inputs, decoder_input_ids=torch.tensor([[5048, 7, 9]])).logits
    asr = pipeline("audio-visual-speech-recognition", model=folder, int8=True, **GENERATE)
    quantized = asr.model
    assert quantized.is_int8_quantized and not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    int8_layers = [m for m in quantized.modules() if type(m).__name__ == "Linear" and hasattr(m, "_packed_params")]
    assert len(int8_layers) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with torch.no_grad():
        logits = quantized(**inputs, decoder_input_ids=torch.tensor([[5048, 7, 9]])).logits
    assert not torch.equal(logits, expected)  # int8, not the fp32 product
    assert torch.nn.functional.cosine_similarity(logits.flatten(), expected.flatten(), dim=0) > 0.99
    assert isinstance(asr(long.wave[: 3 * RATE])["text"], str)
    with pytest.raises(ValueError, match="int8 must be True or False"):
        pipeline("audio-visual-speech-recognition", model=folder, int8="yes")


def test_a_recording_without_speech_gives_an_empty_transcript_and_says_so(models, caplog):
    folder, _ = models["audio"]
    asr = pipeline("audio-visual-speech-recognition", model=folder, **GENERATE)
    silence = np.zeros(8 * RATE, np.float32)
    with caplog.at_level("WARNING", logger="modeling_mmavsr.pipeline_mmavsr"):
        result = asr(silence, segmentation="vad", return_timestamps=True)
    assert result == {"text": "", "chunks": []}
    assert "audio input: the speech detector found no speech; the transcript is empty" in caplog.text
