"""Pipelines: Transformers' ASR pipeline on an audio-only MMAVSR model (seq2seq, chunking), and
`audio-visual-speech-recognition` on real mp4 files (frames + audio track, silent videos, mouth cropping)."""

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import pipeline
from transformers.pipelines.automatic_speech_recognition import (
    AutomaticSpeechRecognitionPipeline,
    _find_longest_common_sequence,
)

from mmavsr_processing import MMAVSRProcessor, read_video, write_audio, write_video
from mmavsr_processing.media_io import fit_audio_to_video, read_audio_track, resample_audio
from modeling_mmavsr import MMAVSRForConditionalGeneration, MMAVSRSpeechRecognitionPipeline

from .common import tiny_config


AUTO_AVSR_TEXT = dict(vocab_size=5049, bos_token_id=5048, eos_token_id=5048, decoder_start_token_id=5048)
RATE, FRAMES = 16000, 30


def save_model(folder, modality, seed):
    torch.manual_seed(seed)
    model = MMAVSRForConditionalGeneration(tiny_config(modality, text_config=AUTO_AVSR_TEXT)).eval()
    model.generation_config.num_beams = 2  # the pipeline must take this, not its own default of 5
    model.save_pretrained(folder)
    MMAVSRProcessor.from_auto_avsr().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {m: save_model(root / m, m, seed) for seed, m in enumerate(("audio", "video", "audiovisual"))}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A talking-mouth-sized clip (96x96, 25 fps) with its sound, the same clip silent, and a wav."""
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (FRAMES, 96, 96, 3), dtype=np.uint8)
    wave = (0.1 * rng.standard_normal(FRAMES * 640)).astype(np.float32)
    paths = {"mp4": root / "clip.mp4", "silent": root / "silent.mp4", "wav": root / "clip.wav"}
    write_video(paths["mp4"], frames, audio=wave)
    write_video(paths["silent"], frames)
    write_audio(paths["wav"], wave)
    return {"wave": wave, **{k: str(v) for k, v in paths.items()}}


def transcribe(model, processor, **inputs):
    """What the pipelines must give: the processor, `generate` with the model's generation config, decoding."""
    features = processor(**inputs, sampling_rate=RATE) if "audio" in inputs else processor(**inputs)
    ids = model.generate(**features, max_new_tokens=256)
    return processor.batch_decode(ids)[0]


def load(folder):
    return MMAVSRForConditionalGeneration.from_pretrained(folder).eval(), MMAVSRProcessor.from_pretrained(folder)


@pytest.mark.smoke
def test_asr_pipeline_runs_an_audio_only_model_as_seq2seq(folders, media):
    asr = pipeline("automatic-speech-recognition", model=folders["audio"])
    assert type(asr) is AutomaticSpeechRecognitionPipeline and asr.type == "seq2seq"
    model, processor = load(folders["audio"])
    expected = transcribe(model, processor, audio=media["wave"])
    assert expected
    assert asr(media["wave"])["text"] == expected
    assert asr(media["wav"])["text"] == expected  # a file path (decoded by ffmpeg)
    # generation settings: the model's generation config, then per-call arguments
    assert (
        asr(media["wave"], num_beams=1)["text"]
        == processor.batch_decode(
            model.generate(**processor(audio=media["wave"], sampling_rate=RATE), num_beams=1, max_new_tokens=256)
        )[0]
    )


def test_asr_pipeline_chunks_long_audio(folders):
    asr = pipeline("automatic-speech-recognition", model=folders["audio"])
    model, processor = load(folders["audio"])
    wave = (0.1 * np.random.default_rng(1).standard_normal(int(2.5 * RATE))).astype(np.float32)
    chunks = [wave[:RATE], wave[RATE : 2 * RATE], wave[2 * RATE :]]
    seen = []
    generate = asr.model.generate

    def spy(**kwargs):
        seen.append(int(kwargs["attention_mask"].sum()))
        return generate(**kwargs)

    asr.model.generate = spy
    text = asr(wave, chunk_length_s=1.0, stride_length_s=0, ignore_warning=True)["text"]
    assert seen == [RATE, RATE, RATE // 2]
    ids = [model.generate(**processor(audio=c, sampling_rate=RATE), max_new_tokens=256)[0] for c in chunks]
    assert text == processor.tokenizer.decode(torch.cat(ids), skip_special_tokens=True)


def test_mmavsr_pipeline_merges_overlapping_chunks(folders):
    asr = pipeline("audio-visual-speech-recognition", model=folders["audio"])
    assert isinstance(asr, MMAVSRSpeechRecognitionPipeline)
    model, processor = load(folders["audio"])
    wave = (0.1 * np.random.default_rng(2).standard_normal(int(2.0 * RATE))).astype(np.float32)
    text = asr(wave, chunk_length_s=1.2, stride_length_s=0.2, ignore_warning=True)["text"]
    # chunks of 1.2 s advancing by 0.8 s, merged on their longest common token run
    starts = [0, int(0.8 * RATE)]
    ids = [
        model.generate(**processor(audio=wave[s : s + int(1.2 * RATE)], sampling_rate=RATE), max_new_tokens=256)
        for s in starts
    ]
    merged = _find_longest_common_sequence([i.numpy() for i in ids], processor.tokenizer)
    assert text == processor.tokenizer.decode(merged, skip_special_tokens=True)
    # a dict at another rate is resampled by the pipeline itself (no torchaudio needed)
    low = resample_audio(wave[:RATE], RATE, 8000)
    assert asr({"array": low, "sampling_rate": 8000})["text"] == asr(resample_audio(low, 8000, RATE))["text"]


@pytest.mark.smoke
def test_audio_visual_pipeline_transcribes_an_mp4(folders, media):
    avsr = pipeline("audio-visual-speech-recognition", model=folders["audiovisual"])
    model, processor = load(folders["audiovisual"])
    frames, fps = read_video(media["mp4"])
    track = read_audio_track(media["mp4"])
    assert fps == 25 and len(frames) == FRAMES
    assert abs(len(track) - len(media["wave"])) < 2048  # the AAC track holds the clip's sound
    assert np.corrcoef(track[: len(media["wave"])], media["wave"])[0, 1] > 0.9
    audio = fit_audio_to_video(track, len(frames), RATE)
    assert len(audio) == FRAMES * 640
    expected = transcribe(model, processor, audio=audio, videos=frames)
    assert avsr(media["mp4"])["text"] == expected
    assert avsr({"video": frames, "audio": track, "sampling_rate": RATE})["text"] == expected


def test_video_only_model_takes_silent_videos_and_av_model_asks_for_sound(folders, media):
    vsr = pipeline("audio-visual-speech-recognition", model=folders["video"])
    model, processor = load(folders["video"])
    frames, _ = read_video(media["silent"])
    assert read_audio_track(media["silent"]) is None
    expected = transcribe(model, processor, videos=frames)
    assert vsr(media["silent"])["text"] == expected
    assert vsr(media["mp4"])["text"] == transcribe(model, processor, videos=read_video(media["mp4"])[0])
    assert vsr(frames)["text"] == expected

    avsr = pipeline("audio-visual-speech-recognition", model=folders["audiovisual"])
    with pytest.raises(ValueError, match="silent.mp4: this audiovisual model needs the audio track"):
        avsr(media["silent"])
    with pytest.raises(ValueError, match="reads the lips: give a video"):
        avsr(media["wave"])
    with pytest.raises(ValueError, match="chunk_length_s cuts fixed windows; it does not go with segmentation='vad'"):
        avsr(media["mp4"], chunk_length_s=1.0, segmentation="vad")
    with pytest.raises(ValueError, match="crop_mouth must be True, False or None"):
        avsr(media["mp4"], crop_mouth="yes")


def test_audio_only_model_reads_the_sound_of_a_video(folders, media):
    asr = pipeline("audio-visual-speech-recognition", model=folders["audio"])
    assert asr(media["mp4"])["text"] == asr(read_audio_track(media["mp4"]))["text"]
    with pytest.raises(ValueError, match="silent.mp4: this audio-only model needs sound"):
        asr(media["silent"])


class RecordingCropper:
    """A mouth cropper returning fixed ROIs, recording the frames it gets."""

    def __init__(self, rois):
        self.rois, self.calls = rois, []

    def __call__(self, frames):
        self.calls.append(frames.shape)
        return self.rois


def test_mouth_is_cropped_only_from_frames_larger_than_a_mouth_roi(folders):
    rng = np.random.default_rng(3)
    faces = rng.integers(0, 256, (FRAMES, 160, 200, 3), dtype=np.uint8)
    rois = rng.integers(0, 256, (FRAMES, 96, 96), dtype=np.uint8)
    cropper = RecordingCropper(rois)
    vsr = pipeline("audio-visual-speech-recognition", model=folders["video"], mouth_cropper=cropper)
    on_rois = vsr(rois)["text"]
    assert cropper.calls == []  # 96x96 frames are mouth ROIs already
    assert vsr(faces)["text"] == on_rois and cropper.calls == [(FRAMES, 160, 200, 3)]
    vsr(faces, crop_mouth=False)  # forced off: the frames are resized as they are
    assert len(cropper.calls) == 1
    vsr(rois, crop_mouth=True)  # forced on: grayscale frames reach the cropper as RGB
    assert cropper.calls[-1] == (FRAMES, 96, 96, 3)


def test_real_mouth_cropper_on_a_real_face(folders):
    from skimage.data import astronaut, coffee

    from mmavsr_processing.mouth_cropping import MouthCropper, NoFaceError

    face = astronaut()  # 512x512 RGB, one frontal face
    frames = np.repeat(face[None], 5, axis=0)
    vsr = pipeline("audio-visual-speech-recognition", model=folders["video"])
    text = vsr(frames)["text"]
    assert text == vsr(MouthCropper(detector="mediapipe")(frames), crop_mouth=False)["text"]  # the crop extra's
    haar = pipeline("audio-visual-speech-recognition", model=folders["video"], mouth_detector="haar")
    assert haar(frames)["text"] == vsr(MouthCropper(detector="haar")(frames), crop_mouth=False)["text"]
    assert haar.mouth_cropper.detector_name == "haar" and vsr.mouth_cropper.detector_name == "mediapipe"
    cup = np.repeat(coffee()[None, ::2, ::2], 5, axis=0)  # a real photograph without a face
    with pytest.raises(NoFaceError, match="video input: .*crop_mouth=False"):
        vsr(cup)
    with pytest.raises(ValueError, match="mouth_detector must be 'mediapipe', 'haar' or None, got 'dlib'"):
        pipeline("audio-visual-speech-recognition", model=folders["video"], mouth_detector="dlib")
    with pytest.raises(ValueError, match="give mouth_cropper or mouth_detector, not both"):
        pipeline(
            "audio-visual-speech-recognition",
            model=folders["video"],
            mouth_detector="haar",
            mouth_cropper=MouthCropper(detector="haar"),
        )


def test_frame_rates_are_brought_to_25_fps(folders, tmp_path):
    clip = np.random.default_rng(5).integers(0, 256, (2 * FRAMES, 96, 96, 3), dtype=np.uint8)
    write_video(tmp_path / "fast.mp4", clip, fps=50)
    vsr = pipeline("audio-visual-speech-recognition", model=folders["video"])
    decoded, fps = read_video(tmp_path / "fast.mp4")
    assert fps == 50
    assert vsr(str(tmp_path / "fast.mp4"))["text"] == vsr(decoded[::2])["text"]


class CentreMouth:
    """A mouth detector for frames of one grey level: the mouth is at the centre, the face half the frame wide."""

    def __call__(self, frame):
        from mmavsr_processing.mouth_cropping import MouthLocation

        height, width = frame.shape[:2]
        return MouthLocation(x=width / 2, y=height / 2, face_width=width / 2)


def frame_numbers(grey_levels) -> list[int]:
    """Frame i of the clips below is uniformly grey at level 8 * i: the number of each frame from its mean level."""
    return [int(round(float(level) / 8)) for level in grey_levels]


@pytest.mark.parametrize("fps", [30.0, 29.97])
def test_pipeline_and_prepare_pick_the_same_frames(folders, tmp_path, monkeypatch, fps):
    """Inference and data preparation bring a 1 s clip to 25 fps the same way (the frame nearest each 25 fps
    timestamp) and give its audio 640 samples a frame."""
    from mmavsr_processing import prepare
    from mmavsr_processing.mouth_cropping import MouthCropper

    rate = 44100
    frames = np.repeat(np.arange(0, 240, 8, dtype=np.uint8), 192 * 192 * 3).reshape(30, 192, 192, 3)
    sound = (0.3 * np.sin(2 * np.pi * 300 * np.arange(int(30 / fps * rate)) / rate)).astype(np.float32)
    write_video(tmp_path / "raw/spk/clip.mp4", frames, fps=fps, audio=sound, sampling_rate=rate)
    (tmp_path / "raw/spk/clip.txt").write_text("HELLO\n")
    nearest = [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 28, 29]

    avsr = pipeline(
        "audio-visual-speech-recognition",
        model=folders["audiovisual"],
        mouth_cropper=MouthCropper(detector=CentreMouth()),
    )
    (inputs,) = avsr.preprocess(str(tmp_path / "raw/spk/clip.mp4"))
    pixels = inputs["pixel_values_videos"][0, :, 0]  # (T, 88, 88), normalised grey
    video_processor = avsr.video_processor
    levels = (pixels.mean((1, 2)) * video_processor.image_std[0] + video_processor.image_mean[0]) * 255
    assert frame_numbers(levels) == nearest
    assert inputs["input_features"].shape == (1, 16000)

    monkeypatch.setattr(prepare, "MouthCropper", lambda **options: MouthCropper(detector=CentreMouth()))
    summary = prepare.prepare_dataset(tmp_path / "raw", tmp_path / "out", "demo", split="test")
    assert summary.written == 1
    prepared, prepared_fps = read_video(tmp_path / "out/demo/test/spk/clip.mp4")
    assert prepared_fps == 25
    assert frame_numbers(prepared[..., 0].mean((1, 2))) == nearest
    assert sf.info(str(tmp_path / "out/demo/test/spk/clip.wav")).frames == 16000
