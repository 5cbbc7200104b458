"""The demo corpus: flite/espeak-ng/festival speech, two mouth models, auto_avsr layout read back by the LRS3 loader."""

import numpy as np
import pytest
import soundfile as sf

from mmavsr_processing import demo_corpus, demo_tts, load_auto_avsr_dataset, read_video
from mmavsr_processing.demo_corpus import (
    GRID_WORDS,
    SAMPLES_PER_FRAME,
    TTS_VOICES,
    VARIANTS,
    DemoCorpusError,
    generate_demo_corpus,
    mouth_trajectory,
    plan_corpus,
    render_mouth,
    synthesize,
)
from mmavsr_processing.demo_mouth import contour_trajectory, mouth_frames, render_contour_mouth


OPENING, SPREAD, CLOSURE = 0, 1, 2
APERTURE, WIDTH, PROTRUSION, TUCK = 0, 1, 2, 4
# "mama" then "see" then "few": lips close on m, open wide on aa, spread on iy, lower lip under the teeth on f
MAMA_SEE_FEW = [
    ("pau", 0.0, 0.2),
    ("m", 0.2, 0.32),
    ("aa", 0.32, 0.56),
    ("m", 0.56, 0.68),
    ("aa", 0.68, 0.92),
    ("pau", 0.92, 1.2),
    ("s", 1.2, 1.36),
    ("iy", 1.36, 1.6),
    ("pau", 1.6, 1.8),
    ("f", 1.8, 1.96),
    ("y", 1.96, 2.04),
    ("uw", 2.04, 2.3),
    ("pau", 2.3, 2.6),
]


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
    phones = [
        ("pau", 0.0, 0.2),
        ("m", 0.2, 0.32),
        ("aa", 0.32, 0.56),
        ("m", 0.56, 0.68),
        ("aa", 0.68, 0.92),
        ("pau", 0.92, 1.2),
        ("s", 1.2, 1.36),
        ("iy", 1.36, 1.6),
        ("pau", 1.6, 2.0),
    ]
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
    rows = [
        line.split(",") for split in ("train", "val", "test") for line in label_files[split].read_text().splitlines()
    ]
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


def test_a_seed_makes_the_same_files_with_any_number_of_workers(tmp_path):
    for folder, workers in (("one", 1), ("two", 2)):
        generate_demo_corpus(tmp_path / folder, num_clips=4, seed=3, num_workers=workers, progress=False)
    files = sorted(path.relative_to(tmp_path / "one") for path in (tmp_path / "one").rglob("*") if path.is_file())
    assert len([path for path in files if path.suffix == ".mp4"]) == 4
    for path in files:
        assert (tmp_path / "one" / path).read_bytes() == (tmp_path / "two" / path).read_bytes(), path


def test_command_line(tmp_path, capsys):
    demo_corpus.main(
        [
            "--output-dir",
            str(tmp_path),
            "--num-clips",
            "2",
            "--num-workers",
            "1",
            "--voices",
            "slt",
            "--split-fractions",
            "1",
            "0",
            "0",
        ]
    )
    assert len((tmp_path / "labels" / "train.csv").read_text().splitlines()) == 2
    with pytest.raises(SystemExit) as stop:
        demo_corpus.main(["--output-dir", str(tmp_path), "--num-clips", "0"])
    assert stop.value.code == 2
    assert "num_clips must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("tts", ["espeak", "festival"])
def test_other_engines_speech_and_phone_timings_agree(tts):
    plan = plan_corpus(1, seed=0, tts=tts)[0]
    wave, phones = synthesize(plan)
    assert wave.dtype == np.float32 and wave.ndim == 1 and np.abs(wave).max() > 0.05
    assert phones[0][0] == "pau" and phones[-1][0] == "pau"
    assert phones[-1][2] == pytest.approx(len(wave) / 16000)
    starts, ends = np.array([p[1] for p in phones]), np.array([p[2] for p in phones])
    assert starts[0] == 0 and np.all(ends > starts) and np.allclose(starts[1:], ends[:-1])
    # the phones are the sentence's, in the ARPAbet the mouth models know: "SET RED IN G THREE AGAIN"
    assert plan.words == ("SET", "RED", "IN", "G", "THREE", "AGAIN")
    spoken = [p[0] for p in phones if p[0] != "pau"]
    assert spoken[:5] == ["s", "eh", "t", "r", "eh"] and "th" in spoken and "jh" in spoken

    # the timings match the audio: pauses are quiet, vowels loud
    def energy(names):
        return np.mean(
            [np.sqrt(np.mean(wave[int(s * 16000) : int(e * 16000)] ** 2)) for p, s, e in phones if p in names]
        )

    assert energy({"pau"}) < 0.1 * energy({"eh", "ih", "iy", "ax", "ey"})


def test_variants_speak_and_draw_the_same_sentence_differently():
    flite, espeak, festival = (plan_corpus(4, seed=2, tts=tts)[3] for tts in ("flite", "espeak", "festival"))
    assert flite.words == espeak.words == festival.words and flite.split == espeak.split == festival.split
    waves = [synthesize(plan)[0] for plan in (flite, espeak, festival)]
    spectra = [np.abs(np.fft.rfft(wave[:16000], 16000))[:4000] for wave in waves]
    spectra = [np.convolve(spectrum, np.ones(50) / 50, mode="same") for spectrum in spectra]
    for i in range(3):
        for j in range(i):
            correlation = np.corrcoef(spectra[i], spectra[j])[0, 1]
            assert correlation < 0.9, (i, j, correlation)

    # the same phones drawn by the two mouth models: different pictures, both following the phones
    ellipse = mouth_frames("ellipse", MAMA_SEE_FEW, 65, appearance_seed=3, clip_seed=3)
    contour = mouth_frames("contour", MAMA_SEE_FEW, 65, appearance_seed=3, clip_seed=3)
    assert ellipse.shape == contour.shape == (65, 96, 96, 3)
    assert np.abs(ellipse.astype(float) - contour).mean() > 15
    with pytest.raises(ValueError, match="unknown mouth model 'cartoon'"):
        mouth_frames("cartoon", MAMA_SEE_FEW, 65, appearance_seed=3, clip_seed=3)


def test_contour_mouth_follows_the_phones():
    trajectory = contour_trajectory(MAMA_SEE_FEW, num_frames=65)
    frame = lambda seconds: int(seconds * 25)  # noqa: E731
    assert trajectory[frame(0.26), APERTURE] < 0.05  # m: lips shut (enforced closure)
    assert trajectory[frame(0.44), APERTURE] > 0.7  # aa: open
    assert trajectory[frame(1.48), WIDTH] > 0.6  # iy: spread
    assert trajectory[frame(2.2), PROTRUSION] > 0.6 and trajectory[frame(2.2), WIDTH] < -0.4  # uw: rounded
    assert trajectory[frame(1.88), TUCK] > 0.8  # f: lower lip tucked
    # a smooth (critically damped) trajectory: no frame jumps more than half the range
    assert np.abs(np.diff(trajectory[:, APERTURE])).max() < 0.5
    # a slower speaker (larger time constant) undershoots the short open vowel between the closures
    slow = contour_trajectory(MAMA_SEE_FEW, num_frames=65, time_constant=0.09)
    assert slow[frame(0.44), APERTURE] < trajectory[frame(0.44), APERTURE] - 0.1

    frames = render_contour_mouth(trajectory, appearance_seed=0, clip_seed=0)
    assert frames.shape == (65, 96, 96, 3) and frames.dtype == np.uint8
    dark = (frames.mean(-1) < 70).sum(axis=(1, 2))  # the open mouth's cavity is the darkest region
    assert dark[frame(0.44)] > 60 and dark[frame(0.26)] < 0.25 * dark[frame(0.44)]
    # the face is fixed per speaker (appearance seed); head motion and noise change per clip
    still = np.tile(trajectory[frame(0.44)][None], (4, 1))
    first, same_face, other_face = (
        render_contour_mouth(still, appearance_seed=a, clip_seed=c) for a, c in ((1, 0), (1, 7), (2, 0))
    )
    assert np.abs(first.astype(float) - other_face).mean() > 2 * np.abs(first.astype(float) - same_face).mean()


@pytest.mark.parametrize("variant", ["espeak-contour", "festival-contour"])
def test_variant_corpus_in_auto_avsr_layout(tmp_path, variant):
    tts, mouth_model = VARIANTS[variant]
    demo_corpus.main(
        [
            "--output-dir",
            str(tmp_path),
            "--num-clips",
            "2",
            "--num-workers",
            "1",
            "--variant",
            variant,
            "--split-fractions",
            "1",
            "0",
            "0",
        ]
    )
    rows = [line.split(",") for line in (tmp_path / "labels" / "train.csv").read_text().splitlines()]
    plans = plan_corpus(2, seed=0, tts=tts, mouth_model=mouth_model, split_fractions=(1, 0, 0))
    assert [row[1] for row in rows] == [plan.rel_path for plan in plans]
    for row, plan in zip(rows, plans):
        assert plan.voice in TTS_VOICES[tts] and plan.speaker.startswith(plan.voice.replace("+", "_"))
        video = tmp_path / "demo" / row[1]
        frames, fps = read_video(video)
        wave, rate = sf.read(video.with_suffix(".wav"))
        assert fps == 25 and rate == 16000 and frames.shape[1:3] == (96, 96)
        assert len(wave) == len(frames) * SAMPLES_PER_FRAME == int(row[2]) * SAMPLES_PER_FRAME
    dataset = load_auto_avsr_dataset(tmp_path, tmp_path / "labels" / "train.csv")
    assert sorted(dataset["text"]) == sorted(plan.text for plan in plans)
    assert '"tts": "%s"' % tts in (tmp_path / "corpus.json").read_text()

    # a folder holds one variant: resuming it as another is refused, by name
    with pytest.raises(DemoCorpusError, match=f"made with --tts {tts} --mouth-model {mouth_model}"):
        generate_demo_corpus(tmp_path, num_clips=2, num_workers=1, progress=False)


@pytest.mark.parametrize("tts, package", [("flite", "apt-get install flite"), ("festival", "apt-get install festival")])
def test_missing_engine_on_path_is_explained(monkeypatch, tmp_path, tts, package):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without the synthesiser
    with pytest.raises(DemoCorpusError, match=package):
        generate_demo_corpus(tmp_path / "corpus", num_clips=1, tts=tts, mouth_model="contour")
    assert not (tmp_path / "corpus").exists()


def test_missing_espeak_library_is_explained(monkeypatch, tmp_path):
    monkeypatch.setattr(demo_tts, "ESPEAK_LIBRARY", "libespeak-ng-not-installed.so.9")
    with pytest.raises(DemoCorpusError, match="apt-get install espeak-ng"):
        generate_demo_corpus(tmp_path, num_clips=1, tts="espeak")


def test_variant_flags_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        demo_corpus.main(["--output-dir", str(tmp_path), "--variant", "espeak-contour", "--tts", "flite"])
    assert stop.value.code == 2 and "--variant espeak-contour means --tts espeak, not flite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        demo_corpus.main(["--output-dir", str(tmp_path), "--tts", "espeak", "--voices", "slt"])
    assert stop.value.code == 2 and "unknown espeak voice(s) ['slt']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown speech synthesiser"):
        plan_corpus(2, tts="sam")


def test_only_some_splits(tmp_path):
    plans = plan_corpus(5, seed=1, split_fractions=(1, 1, 1))
    wanted = [plan for plan in plans if plan.split == "test"]
    assert 0 < len(wanted) < len(plans)
    demo_corpus.main(
        [
            "--output-dir",
            str(tmp_path),
            "--num-clips",
            "5",
            "--num-workers",
            "1",
            "--seed",
            "1",
            "--split-fractions",
            "1",
            "1",
            "1",
            "--splits",
            "test",
        ]
    )
    assert sorted(path.name for path in (tmp_path / "labels").iterdir()) == ["test.csv"]
    rows = [line.split(",") for line in (tmp_path / "labels" / "test.csv").read_text().splitlines()]
    assert [row[1] for row in rows] == [plan.rel_path for plan in wanted]
    assert sorted(path.relative_to(tmp_path / "demo").as_posix() for path in tmp_path.rglob("*.mp4")) == sorted(
        plan.rel_path for plan in wanted
    )
    with pytest.raises(ValueError, match="unknown split"):
        generate_demo_corpus(tmp_path, num_clips=5, splits=("dev",))
