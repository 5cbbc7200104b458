"""The preparation CLI: raw talking-face videos -> auto_avsr's layout, read back by `load_auto_avsr_dataset`."""

import csv
import runpy
import sys

import numpy as np
import pytest
import soundfile as sf
from skimage import data

from mmavsr_processing import MouthCropper, load_auto_avsr_dataset, read_video, write_audio, write_video
from mmavsr_processing.prepare import main, prepare_dataset

from .test_mouth_cropping import astronaut_clip


TEXTS = {"spk0/00001": "WE WENT TO THE MOON", "spk1/00002": "IT WAS A LONG WAY HOME"}
LRS3_TXT = "Text:  {text}\nConf:  3\n\nWORD START END ASDSCORE\n{words}\n"


def tone(seconds: float, rate: int) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


@pytest.fixture(scope="module")
def faces():
    """Two clips of the astronaut: 15 frames at 30 fps with 44.1 kHz audio, and 12 frames at 25 fps with 16 kHz."""
    frames, _, _ = astronaut_clip(num_frames=15, size=192)
    return {"spk0/00001": (frames, 30.0, 44100), "spk1/00002": (frames[:12], 25.0, 16000)}


@pytest.fixture()
def raw(tmp_path, faces):
    """LRS3's raw layout: speaker folders of .mp4 (with an audio track) and .txt."""
    root = tmp_path / "raw"
    for stem, (frames, fps, rate) in faces.items():
        write_video(root / f"{stem}.mp4", frames, fps=fps, audio=tone(len(frames) / fps, rate), sampling_rate=rate)
        words = "\n".join(
            f"{word} {0.1 * i:.2f} {0.1 * i + 0.08:.2f} 1.0" for i, word in enumerate(TEXTS[stem].split())
        )
        (root / f"{stem}.txt").write_text(LRS3_TXT.format(text=TEXTS[stem], words=words))
    return root


def run(raw, out, *extra):
    return main(["--input-dir", str(raw), "--output-dir", str(out), "--dataset", "lrs3", "--split", "test", *extra])


def test_round_trip_through_load_auto_avsr_dataset(raw, tmp_path):
    out = tmp_path / "out"
    assert run(raw, out, "--num-workers", "2") == 0
    label_file = out / "labels" / "lrs3_test.csv"
    rows = list(csv.reader(label_file.open()))
    assert [row[:3] for row in rows] == [
        ["lrs3", "test/spk0/00001.mp4", "13"],  # 15 frames at 30 fps (0.5 s) -> 12.5 at 25 fps, rounded half up
        ["lrs3", "test/spk1/00002.mp4", "12"],
    ]
    dataset = load_auto_avsr_dataset(out, label_file)
    assert dataset["text"] == list(TEXTS.values())
    for row, frames in zip(dataset, (13, 12)):
        video = row["video"].get_frames_in_range(0, row["num_frames"]).data  # (T, C, H, W)
        assert tuple(video.shape) == (frames, 3, 96, 96)
        audio = row["audio"].get_all_samples()
        assert audio.sample_rate == 16000 and audio.data.shape == (1, frames * 640)
    wave, rate = sf.read(out / "lrs3/test/spk0/00001.wav")
    assert rate == 16000 and 0.2 < np.abs(wave).max() < 0.4  # the tone, resampled from 44.1 kHz
    # the mp4 holds the mouth as auto_avsr's preparation cuts it (the default with the crop extra): like the still
    # photograph's aligned mouth, whatever the zoom
    frames, _ = read_video(out / "lrs3/test/spk1/00002.mp4")
    reference = MouthCropper(detector="mediapipe")(data.astronaut()[None])[0].astype(float)
    similarity = [np.corrcoef(frame[..., 0].astype(float).ravel(), reference.ravel())[0, 1] for frame in frames]
    assert np.mean(similarity) > 0.75 and min(similarity) > 0.5, similarity  # a face 60-70 pixels wide


def test_detector_choice(raw, tmp_path):
    """`--detector haar` cuts the Haar crops, `--detector mediapipe` auto_avsr's; both are the cropper's own."""
    written = {}
    for detector in ("haar", "mediapipe"):
        assert run(raw, tmp_path / detector, "--detector", detector) == 0
        written[detector], _ = read_video(tmp_path / detector / "lrs3/test/spk1/00002.mp4")
    decoded, _ = read_video(raw / "spk1/00002.mp4")
    for detector, clip in written.items():
        expected = MouthCropper(detector=detector)(decoded)
        assert np.abs(clip[..., 0].astype(int) - expected).mean() < 3, detector  # H.264 round trip
    assert np.abs(written["haar"].astype(int) - written["mediapipe"]).mean() > 10
    with pytest.raises(SystemExit):
        run(raw, tmp_path / "x", "--detector", "dlib")


def test_rerun_reuses_written_clips(raw):
    out = raw / "prepared"  # inside the input folder: its videos must not be taken for raw clips
    first = prepare_dataset(raw, out, "lrs3", split="test")
    assert (first.written, first.reused) == (2, 0)
    labels = first.label_file.read_text()
    kept = out / "lrs3/test/spk1/00002.mp4"
    stamp = kept.stat().st_mtime_ns
    (out / "lrs3/test/spk0/00001.mp4").unlink()  # as if the first run had stopped before this clip
    second = prepare_dataset(raw, out, "lrs3", split="test")
    assert (second.written, second.reused) == (1, 1)
    assert kept.stat().st_mtime_ns == stamp
    assert second.label_file.read_text() == labels
    assert len(labels.splitlines()) == 2 and not second.skipped
    assert not list(out.rglob("*.partial"))


def test_bad_clips_are_named_or_skipped_and_listed(raw, tmp_path, capsys):
    (raw / "spk2").mkdir()
    (raw / "spk2/corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (raw / "spk2/corrupt.txt").write_text("Text:  BROKEN\n")
    noise = np.random.default_rng(0).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    cup = np.repeat(data.coffee()[None, ::4, ::4], 6, axis=0)  # a real photograph without a face
    write_video(raw / "spk2/noface.mp4", cup, audio=tone(0.24, 16000))
    (raw / "spk2/noface.txt").write_text("NO FACE HERE\n")  # plain text also works
    write_video(raw / "spk2/untranscribed.mp4", noise, audio=tone(0.24, 16000))

    out = tmp_path / "out"
    assert run(raw, out) == 1  # the first bad clip stops the run: a missing transcript is found before any decoding
    assert "error: " in (error := capsys.readouterr().err) and "untranscribed.txt: transcript not found" in error
    (raw / "spk2/untranscribed.mp4").rename(raw / "spk2/untranscribed.hold")  # not a video suffix: not searched
    assert run(raw, out) == 1
    assert "corrupt.mp4: cannot decode video" in capsys.readouterr().err
    (raw / "spk2/untranscribed.hold").rename(raw / "spk2/untranscribed.mp4")

    assert run(raw, out, "--skip-bad-files") == 0
    printed = capsys.readouterr().out
    # the good clips were written by the failed run (they come before spk2) and are reused
    assert "2 clips (0 written, 2 already there, 3 skipped)" in printed
    assert "skipped by reason: no transcript 1, unreadable media 1, no face 1" in printed
    skipped = (out / "labels/lrs3_test_skipped.tsv").read_text()
    assert "corrupt.mp4\t" in skipped and "cannot decode video" in skipped
    assert "noface.mp4\t" in skipped and "no face found" in skipped
    assert "untranscribed.mp4\t" in skipped and "untranscribed.txt: transcript not found" in skipped
    assert len(load_auto_avsr_dataset(out, out / "labels/lrs3_test.csv")) == 2


def test_transcripts_csv_and_audio_beside_a_silent_video(tmp_path, faces):
    frames, fps, _ = faces["spk1/00002"]
    raw = tmp_path / "raw"
    write_video(raw / "a/clip.mp4", frames, fps=fps)  # no audio track ...
    write_audio(raw / "a/clip.wav", tone(len(frames) / fps, 16000))  # ... the wav beside it instead
    (tmp_path / "texts.csv").write_text("path,text\na/clip.mp4,hello moon\nb/gone.mp4,NOT THERE\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"gone\.mp4: listed in .*texts\.csv but not found"):
        prepare_dataset(raw, out, "demo", transcripts=tmp_path / "texts.csv")
    summary = prepare_dataset(raw, out, "demo", transcripts=tmp_path / "texts.csv", skip_bad_files=True)
    assert summary.written == 1 and len(summary.skipped) == 1
    dataset = load_auto_avsr_dataset(out, out / "labels/demo_train.csv")
    assert dataset["text"] == ["HELLO MOON"] and dataset["id"] == ["demo/train/a/clip.mp4"]


def test_module_runs_as_a_script(tmp_path, monkeypatch, capsys):
    """`python -m mmavsr_processing.prepare ...` (run in this process: a new interpreter would re-import torch)."""
    argv = [
        "prepare",
        "--input-dir",
        str(tmp_path / "nowhere"),
        "--output-dir",
        str(tmp_path / "out"),
        "--dataset",
        "x",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delitem(sys.modules, "mmavsr_processing.prepare")  # as in a fresh interpreter
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("mmavsr_processing.prepare", run_name="__main__")
    assert exit_info.value.code == 1
    assert f"error: input dir {tmp_path / 'nowhere'} is not a directory" in capsys.readouterr().err


def test_workers_after_mediapipe_ran_in_this_process(raw, tmp_path):
    """mediapipe's state does not survive a fork: the workers come from a fresh server process, whatever ran here."""
    MouthCropper(detector="mediapipe")(data.astronaut()[None])  # mediapipe loaded and run in this process
    summary = prepare_dataset(raw, tmp_path / "out", "lrs3", split="test", num_workers=2, detector="mediapipe")
    assert summary.written == 2 and not summary.skipped
    in_process = prepare_dataset(raw, tmp_path / "one", "lrs3", split="test", detector="mediapipe")
    for stem in TEXTS:
        parallel, _ = read_video(tmp_path / "out" / "lrs3" / "test" / f"{stem}.mp4")
        alone, _ = read_video(tmp_path / "one" / "lrs3" / "test" / f"{stem}.mp4")
        assert np.array_equal(parallel, alone)
    assert in_process.written == 2


def test_a_face_too_close_to_the_edge_is_named_and_counted(raw, tmp_path, monkeypatch, capsys):
    from mmavsr_processing import MediapipeFaceDetector, prepare
    from mmavsr_processing.mouth_alignment import mean_face_keypoints

    class MouthFarBelowTheEyes(MediapipeFaceDetector):
        """Keypoints no similarity transform brings onto the mean face: the crop would leave the aligned face."""

        def __init__(self):
            pass

        def __call__(self, frames, indices=None):
            keypoints = np.repeat(mean_face_keypoints()[None], len(frames), axis=0)
            keypoints[:, 3, 1] += 200
            return keypoints

    monkeypatch.setattr(prepare, "MouthCropper", lambda **options: MouthCropper(MouthFarBelowTheEyes()))
    assert run(raw, tmp_path / "out") == 1
    assert "00001.mp4: frame 0: the aligned mouth lies" in capsys.readouterr().err
    assert run(raw, tmp_path / "out", "--skip-bad-files") == 0
    printed = capsys.readouterr().out
    assert "0 clips (0 written, 0 already there, 2 skipped)" in printed
    assert "skipped by reason: face too close to the edge 2" in printed
