"""The demo corpus: flite speech, viseme-driven mouth video, auto_avsr layout read back by the LRS3 loader."""

import numpy as np
import pytest
import soundfile as sf

from mmavsr_processing import demo_corpus, load_auto_avsr_dataset, read_video
from mmavsr_processing.demo_corpus import (
    GRID_WORDS,
    SAMPLES_PER_FRAME,
    DemoCorpusError,
    generate_demo_corpus,
    mouth_trajectory,
    plan_corpus,
    render_mouth,
    synthesize,
)


OPENING, SPREAD, CLOSURE = 0, 1, 2


def test_plan_is_deterministic_and_covers_the_grid_grammar():
    plans = plan_corpus(200, seed=3)
    assert plans == plan_corpus(200, seed=3)
    assert plans != plan_corpus(200, seed=4)
    for plan in plans:
        assert len(plan.words) == 6
        for word, choices in zip(plan.words, GRID_WORDS.values()):
            assert word in choices
    assert {plan.split for plan in plans} == {"train", "val", "test"}
    assert len({plan.voice for plan in plans}) == 4
    # a prefix of a larger corpus is the smaller corpus: growing --num-clips keeps the clips already made
    assert plan_corpus(50, seed=3) == plans[:50]


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_clips"):
        plan_corpus(0)
    with pytest.raises(ValueError, match="unknown flite voice"):
        plan_corpus(3, voices=("nobody",))
    with pytest.raises(ValueError, match="split_fractions"):
        plan_corpus(3, split_fractions=(1.0, -1.0, 0.0))


def test_flite_speech_and_phone_timings_agree():
    plan = plan_corpus(1, seed=0)[0]
    wave, phones = synthesize(plan)
    assert wave.dtype == np.float32 and wave.ndim == 1 and np.abs(wave).max() > 0.05
    assert phones[0][0] == "pau" and phones[-1][0] == "pau"
    assert phones[-1][2] == pytest.approx(len(wave) / 16000)
    starts, ends = np.array([p[1] for p in phones]), np.array([p[2] for p in phones])
    assert np.all(ends > starts) and np.allclose(starts[1:], ends[:-1])


def test_mouth_follows_the_phones():
    # "mama" vs "see": lips close on m, open wide on aa, spread on iy
    phones = [("pau", 0.0, 0.2), ("m", 0.2, 0.32), ("aa", 0.32, 0.56), ("m", 0.56, 0.68), ("aa", 0.68, 0.92),
              ("pau", 0.92, 1.2), ("s", 1.2, 1.36), ("iy", 1.36, 1.6), ("pau", 1.6, 2.0)]
    trajectory = mouth_trajectory(phones, num_frames=50)
    frame = lambda seconds: int(seconds * 25)  # noqa: E731
    assert trajectory[frame(0.26), CLOSURE] > 0.8  # m: lips shut
    assert trajectory[frame(0.44), OPENING] > 0.7  # aa: jaw open
    assert trajectory[frame(1.48), SPREAD] > 0.6  # iy: lips spread
    # coarticulation: the trajectory is continuous, no frame jumps the whole range
    assert np.abs(np.diff(trajectory[:, OPENING])).max() < 0.9

    frames = render_mouth(trajectory, appearance_seed=0, clip_seed=0)
    assert frames.shape == (50, 96, 96, 3) and frames.dtype == np.uint8
    dark = (frames.mean(-1) < 60).sum(axis=(1, 2))  # the open mouth's cavity is the darkest region
    assert dark[frame(0.44)] > 150 and dark[frame(0.26)] < 0.2 * dark[frame(0.44)]


def test_faces_vary_between_speakers_and_stay_fixed_within_one():
    shape = np.tile(np.array([[0.6, 0.2, 0.0, 0.0, 0.5, 0.3]], dtype=np.float32), (2, 1))
    first = render_mouth(shape, appearance_seed=1, clip_seed=0)
    same_face = render_mouth(shape, appearance_seed=1, clip_seed=7)
    other_face = render_mouth(shape, appearance_seed=2, clip_seed=0)
    assert np.abs(first.astype(float) - same_face).mean() < 12
    assert np.abs(first.astype(float) - other_face).mean() > 12


def test_corpus_in_auto_avsr_layout_reads_back_and_resumes(tmp_path):
    label_files = generate_demo_corpus(tmp_path, num_clips=6, seed=1, num_workers=1, progress=False)
    plans = plan_corpus(6, seed=1)
    rows = [line.split(",") for split in ("train", "val", "test") for line in label_files[split].read_text().splitlines()]
    assert len(rows) == 6
    for plan in plans:
        video = tmp_path / "demo" / plan.rel_path
        frames, fps = read_video(video)
        wave, rate = sf.read(video.with_suffix(".wav"))
        assert fps == 25 and rate == 16000 and frames.shape[1:3] == (96, 96)
        assert len(wave) == len(frames) * SAMPLES_PER_FRAME  # the two streams agree exactly

    dataset = load_auto_avsr_dataset(tmp_path, label_files["train"])
    texts = {plan.text for plan in plans if plan.split == "train"}
    assert set(dataset["text"]) == texts and len(dataset) == len(texts)

    # resuming keeps finished clips and remakes missing ones
    kept, lost = (tmp_path / "demo" / plan.rel_path for plan in plans[:2])
    stamp = kept.stat().st_mtime_ns
    lost.unlink()
    generate_demo_corpus(tmp_path, num_clips=6, seed=1, num_workers=1, progress=False)
    assert kept.stat().st_mtime_ns == stamp and lost.is_file()
    assert not list(tmp_path.rglob("*.part.*"))


def test_missing_flite_is_explained(monkeypatch, tmp_path):
    monkeypatch.setattr(demo_corpus.shutil, "which", lambda name: None)
    with pytest.raises(DemoCorpusError, match="apt-get install flite"):
        generate_demo_corpus(tmp_path, num_clips=1)


def test_command_line(tmp_path, capsys):
    demo_corpus.main(["--output-dir", str(tmp_path), "--num-clips", "2", "--num-workers", "1",
                      "--voices", "slt", "--split-fractions", "1", "0", "0"])
    assert len((tmp_path / "labels" / "train.csv").read_text().splitlines()) == 2
    with pytest.raises(SystemExit) as stop:
        demo_corpus.main(["--output-dir", str(tmp_path), "--num-clips", "0"])
    assert stop.value.code == 2
    assert "num_clips must be at least 1" in capsys.readouterr().err
