"""AU dataset loaders (finetune.data) on tiny trees written in the released BP4D/DISFA layouts."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import scipy.io
from PIL import Image

from finetune.data import (BP4D_AUS, DISFA_AUS, DISFA_INTENSITY_AUS, FrameRecord, VideoFrames, load_bp4d, load_csv,
                           load_disfa, read_frame, video_frame_count)  # fmt: skip

# ---------------------------------------------------------------------------------------------
# BP4D: AUCoding/AU_OCC/{subject}_{task}.csv, {subject}/{task}/{frame:04d}.jpg

BP4D_SEQS = {  # (subject, task) -> first frame, frame count
    ("F001", "T1"): (2440, 4),
    ("F001", "T2"): (721, 3),  # -> 0721.jpg: zero padding
    ("M007", "T1"): (100, 3),
    ("F003", "T1"): (2440, 3),
}


def bp4d_value(subject: str, task: str, frame: int, au: int) -> int:
    """The label written for a cell: 0/1 by a pattern, 9 (unknown) at some cells."""
    if (frame + au) % 7 == 0:
        return 9
    return (frame * 3 + au + len(subject + task)) % 2


def frame_colour(i: int) -> tuple[int, int, int]:
    return (20 * i % 256, 255 - 20 * i % 256, 128)


def write_jpeg(path: Path, rgb, size=(40, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), rgb, np.uint8)).save(path, quality=95)


def make_bp4d(root: Path, label_parts=("AUCoding", "AU_OCC"), image_parts=(), seqs=None) -> Path:
    """Label CSVs under root/label_parts, frames under root/image_parts/{subject}/{task}/."""
    labels = root.joinpath(*label_parts)
    labels.mkdir(parents=True)
    images = root.joinpath(*image_parts)
    for (subject, task), (start, n) in (seqs or BP4D_SEQS).items():
        lines = [",".join(str(k) for k in range(100))]
        for f in range(start, start + n):
            lines.append(",".join([str(f)] + [str(bp4d_value(subject, task, f, au)) for au in range(1, 100)]))
        # AU27 is all 9 everywhere: a column the dataset has but never codes
        for i in range(1, len(lines)):
            cells = lines[i].split(",")
            cells[27] = "9"
            lines[i] = ",".join(cells)
        (labels / f"{subject}_{task}.csv").write_text("\n".join(lines) + "\n")
        for i, f in enumerate(range(start, start + n)):
            write_jpeg(images / subject / task / f"{f:04d}.jpg", frame_colour(i))
        # an image beyond the coded range (BP4D codes part of each task only)
        write_jpeg(images / subject / task / f"{start + n:04d}.jpg", (0, 0, 0))
    return root


@pytest.fixture
def bp4d(tmp_path) -> Path:
    return make_bp4d(tmp_path / "BP4D")


@pytest.mark.parametrize("label_parts", [("AUCoding", "AU_OCC"), ("AUCoding", "AUCoding"), ("AUCoding",)])
def test_bp4d_labels_frames_and_paths(tmp_path, label_parts):
    root = make_bp4d(tmp_path / "BP4D", label_parts)
    t = load_bp4d(root)
    assert t.au_names == [f"AU{a}" for a in BP4D_AUS]
    assert len(t) == sum(n for _, n in BP4D_SEQS.values())
    assert t.subjects() == ["F001", "F003", "M007"]
    f001_t2 = [r for r in t.records if r.sequence == "F001_T2"]
    assert [r.frame for r in f001_t2] == [721, 722, 723]
    assert Path(f001_t2[0].source) == root / "F001" / "T2" / "0721.jpg"
    for r in t.records:
        subject, task = r.sequence.split("_")
        want = [bp4d_value(subject, task, r.frame, au) for au in BP4D_AUS]
        assert r.occ.dtype == np.int8 and r.occ.tolist() == [-1 if v == 9 else v for v in want]
        assert r.intensity.dtype == np.float32 and np.isnan(r.intensity).all()
        assert r.landmarks is None and Path(r.source).is_file()
    # cells by hand, F001_T1 frame 2440: AU10 (2450 = 7 * 350) is 9 -> -1; AU12 (7320 + 12 + 6) % 2 = 0;
    # AU1 (7320 + 1 + 6) % 2 = 1
    first = t.records[0]
    assert (first.sequence, first.frame) == ("F001_T1", 2440)
    assert first.occ[BP4D_AUS.index(10)] == -1
    assert first.occ[BP4D_AUS.index(12)] == 0 and first.occ[BP4D_AUS.index(1)] == 1


def test_bp4d_subject_filter(bp4d):
    t = load_bp4d(bp4d, subjects=["M007"])
    assert t.subjects() == ["M007"] and [r.frame for r in t.records] == [100, 101, 102]
    assert Path(t.records[0].source) == bp4d / "M007" / "T1" / "0100.jpg"
    with pytest.raises(ValueError, match=r"no label files in .*AU_OCC for subjects \['F002'\]"):
        load_bp4d(bp4d, subjects=["F002"])


def test_bp4d_fera_intensity_merged(bp4d):
    codes = bp4d / "AU Intensity Codes3.0"
    (codes / "AU06").mkdir(parents=True)
    (codes / "AU12").mkdir(parents=True)
    (codes / "AU06" / "F001_T1_AU06.csv").write_text("2440,0\n2441,3\n2442,9\n2443,5\n2444,4\n")
    (codes / "AU12" / "F001_T1_AU12.csv").write_text("2441,2\n")
    t = load_bp4d(bp4d, intensity_root=bp4d)
    j6, j12 = BP4D_AUS.index(6), BP4D_AUS.index(12)
    f001 = [r for r in t.records if r.sequence == "F001_T1"]
    got6 = [r.intensity[j6] for r in f001]
    assert got6[0] == 0 and got6[1] == 3 and math.isnan(got6[2]) and got6[3] == 5
    assert [float(r.intensity[j12]) for r in f001][1] == 2 and np.isnan(f001[0].intensity[j12])
    others = [r for r in t.records if r.sequence != "F001_T1"]
    assert all(np.isnan(r.intensity).all() for r in others)
    assert any("no FERA 2015 intensity" in n for n in t.notes)
    # AUs FERA does not code stay NaN
    assert np.isnan(f001[1].intensity[BP4D_AUS.index(1)])


def test_bp4d_frame_without_image_raises_naming_both(bp4d):
    (bp4d / "F001" / "T2" / "0722.jpg").unlink()
    with pytest.raises(ValueError) as e:
        load_bp4d(bp4d)
    msg = str(e.value)
    assert "F001_T2.csv" in msg and str(bp4d / "F001" / "T2" / "0722.jpg") in msg
    t = load_bp4d(bp4d, missing_images="skip")
    assert len(t) == sum(n for _, n in BP4D_SEQS.values()) - 1
    assert 722 not in [r.frame for r in t.records if r.sequence == "F001_T2"]
    assert any("1 labelled frames skipped" in n for n in t.notes)


def test_bp4d_missing_folder_and_zip_hint(bp4d):
    shutil.rmtree(bp4d / "M007")
    (bp4d / "2D+3D").mkdir()
    (bp4d / "2D+3D" / "M007.zip").write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"M007_T1\.csv.*M007.zip: extract it first"):
        load_bp4d(bp4d)


def test_bp4d_frames_in_the_extracted_2d3d_folders(tmp_path):
    """BP4D as released: 2D+3D/{subject}.zip extract to 2D+3D/{subject}/{task}/."""
    root = make_bp4d(tmp_path / "BP4D", image_parts=("2D+3D",))
    t = load_bp4d(root)
    assert len(t) == sum(n for _, n in BP4D_SEQS.values()) and not t.notes
    first = next(r for r in t.records if r.sequence == "F001_T2")
    assert Path(first.source) == root / "2D+3D" / "F001" / "T2" / "0721.jpg"
    # the search order: root itself before root/2D+3D, subject by subject
    shutil.copytree(root / "2D+3D" / "M007", root / "M007")
    t = load_bp4d(root)
    assert {Path(r.source).parents[2] for r in t.records} == {root, root / "2D+3D"}
    assert all(Path(r.source).parents[2] == root for r in t.records if r.subject == "M007")
    # image_root names the folder outright
    shutil.move(root / "2D+3D", tmp_path / "frames")
    shutil.rmtree(root / "M007")
    t = load_bp4d(root, image_root=tmp_path / "frames")
    assert all(Path(r.source).is_relative_to(tmp_path / "frames") for r in t.records) and len(t) == 13


def test_bp4d_every_file_is_checked_before_training(bp4d, caplog):
    """Missing and empty images, labels without images: one error listing every sequence.
    Images without labels: a warning naming each such sequence."""
    (bp4d / "F003" / "T1" / "2441.jpg").write_bytes(b"")  # an empty file would fail only when read
    (bp4d / "F001" / "T2" / "0722.jpg").unlink()
    shutil.rmtree(bp4d / "M007" / "T1")
    with pytest.raises(ValueError) as e:
        load_bp4d(bp4d)
    msg = str(e.value)
    assert "3 labelled sequence(s) cannot be read whole" in msg
    assert "F003_T1.csv: 1 of 3 labelled frames have an empty (0-byte) image" in msg
    assert str(bp4d / "F003" / "T1" / "2441.jpg") in msg and str(bp4d / "F001" / "T2" / "0722.jpg") in msg
    assert "no image folder for M007/T1" in msg
    t = load_bp4d(bp4d, missing_images="skip")
    assert len(t) == sum(n for _, n in BP4D_SEQS.values()) - 1 - 1 - 3
    assert all(Path(r.source).stat().st_size > 0 for r in t.records)
    assert any("5 labelled frames skipped" in n for n in t.notes)

    # images without labels: the rest can run, and a warning names each such sequence
    for name in ("F003_T1.csv", "M007_T1.csv"):
        (bp4d / "AUCoding" / "AU_OCC" / name).unlink()
    write_jpeg(bp4d / "F001" / "T2" / "0722.jpg", (1, 2, 3))
    write_jpeg(bp4d / "F001" / "T10" / "0001.jpg", (1, 2, 3))
    write_jpeg(bp4d / "2D+3D" / "M011" / "T3" / "0001.jpg", (1, 2, 3))  # in another image root
    with caplog.at_level("WARNING"):
        t = load_bp4d(bp4d)
    assert t.subjects() == ["F001"] and len(t) == 7
    assert any("3 image sequence(s) have no label file in" in n and n.endswith(": F001/T10, F003/T1, M011/T3")
               for n in t.notes)  # fmt: skip
    assert "F001/T10, F003/T1, M011/T3" in caplog.text
    assert any(n.endswith("complete?): F001/T10") for n in load_bp4d(bp4d, subjects=["F001"]).notes)


def test_bp4d_bad_values_and_absent_aus(bp4d):
    with pytest.raises(ValueError, match=r"F001_T1\.csv: no column for \['AU100'\]"):
        load_bp4d(bp4d, aus=[1, 100])
    with pytest.raises(ValueError, match=r"lacks \['AU27'\]"):
        load_bp4d(bp4d, aus=[1, 27])
    csv = bp4d / "AUCoding" / "AU_OCC" / "F003_T1.csv"
    lines = csv.read_text().splitlines()
    cells = lines[2].split(",")
    cells[12] = "2"
    lines[2] = ",".join(cells)
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"F003_T1\.csv, line 3: AU12 value 2"):
        load_bp4d(bp4d)


def test_bp4d_read_frame_pixels(bp4d):
    t = load_bp4d(bp4d)
    r = [r for r in t.records if r.sequence == "F003_T1"][2]
    img = read_frame(r, size=24)  # no landmarks: centre square
    assert img.shape == (24, 24, 3) and img.dtype == np.uint8
    assert np.abs(img.astype(int) - frame_colour(2)).max() <= 6


# ---------------------------------------------------------------------------------------------
# DISFA: Videos_LeftCamera/LeftVideoSN001_comp.avi, ActionUnit_Labels/SN001/SN001_au1.txt,
# Landmark_Points/SN001/tmp_frame_lm/*.mat

N_VIDEO = 10
LM_BOX = (20.0, 12.0, 44.0, 36.0)  # x0, y0, x1, y1 of the landmarks written for DISFA


def write_video(path: Path, n: int, codec: str, gop: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=20)
        s.width, s.height = 64, 48
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if gop:
            s.codec_context.gop_size = gop
        if codec == "mpeg4":
            s.options = {"qscale": "2"}
        for t in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), frame_colour(t), np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def disfa_code(subject: str, au: int, t: int) -> int:
    return (t + au + int(subject[2:])) % 6


def landmarks_for(t: int) -> np.ndarray:
    x0, y0, x1, y1 = LM_BOX
    pts = np.stack([np.linspace(x0, x1, 66), np.linspace(y0, y1, 66)], 1) + t * 0.01
    pts[0] = (x0, y1)
    pts[1] = (x1, y0)
    return pts


def make_disfa(root: Path, video_dir="Videos_LeftCamera") -> Path:
    write_video(root / video_dir / "LeftVideoSN001_comp.avi", N_VIDEO, "mjpeg")
    write_video(root / video_dir / "leftvideoSN013_Comp.AVI", N_VIDEO, "mpeg4", gop=3)
    for subject in ("SN001", "SN013"):
        for au in DISFA_INTENSITY_AUS:
            f = root / "ActionUnit_Labels" / subject / f"{subject}_au{au}.txt"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("".join(f"{t + 1},{disfa_code(subject, au, t)}\n" for t in range(N_VIDEO)))
    lm1 = root / "Landmark_Points" / "SN001" / "tmp_frame_lm"
    lm1.mkdir(parents=True)
    for t in (0, 1, 2, 4, 10):  # frame 3 missing, 10 past the end
        scipy.io.savemat(lm1 / f"SN001_{t:04d}_lm.mat", {"pts": landmarks_for(t)})
    lm13 = root / "Landmark_Points" / "SN013" / "tmp_frame_lm"
    lm13.mkdir(parents=True)
    for number in (1, 3, 11):  # l0NNNN: number = frame + 1 -> frames 0 and 2; 11 -> frame 10, past the end
        scipy.io.savemat(lm13 / f"l0{number:04d}_lm.mat", {"pts": landmarks_for(number - 1)})
    return root


@pytest.fixture
def disfa(tmp_path) -> Path:
    return make_disfa(tmp_path / "DISFA")


@pytest.mark.parametrize("video_dir", ["Videos_LeftCamera", "video_leftcamera"])
def test_disfa_labels_presence_rule_and_frames(tmp_path, video_dir):
    root = make_disfa(tmp_path / "DISFA", video_dir)
    t = load_disfa(root)
    assert t.au_names == [f"AU{a}" for a in DISFA_AUS]
    assert t.subjects() == ["SN001", "SN013"] and len(t) == 2 * N_VIDEO
    for r in t.records:
        assert r.sequence == r.subject and Path(r.source).is_file()
        codes = [disfa_code(r.subject, au, r.frame) for au in DISFA_AUS]
        assert r.intensity.tolist() == codes
        assert r.occ.dtype == np.int8 and r.occ.tolist() == [int(c >= 2) for c in codes]
    sn001 = [r for r in t.records if r.subject == "SN001"]
    assert [r.frame for r in sn001] == list(range(N_VIDEO))
    # by hand, SN001 AU1 = (t + 2) % 6: frame 0 -> 2 (present), 4 -> 0, 5 -> 1 (absent at >= 2)
    assert sn001[0].occ[0] == 1 and sn001[0].intensity[0] == 2
    assert sn001[4].occ[0] == 0 and sn001[4].intensity[0] == 0
    assert sn001[5].occ[0] == 0 and sn001[5].intensity[0] == 1

    ti = load_disfa(root, intensity=True, landmarks=False)
    assert ti.au_names == [f"AU{a}" for a in DISFA_INTENSITY_AUS]
    r = ti.records[N_VIDEO + 5]
    assert r.subject == "SN013" and r.frame == 5
    assert r.intensity.tolist() == [disfa_code("SN013", au, 5) for au in DISFA_INTENSITY_AUS]
    assert all(x.landmarks is None for x in ti.records)


def test_disfa_landmarks_both_name_variants(disfa):
    t = load_disfa(disfa)
    lm = {(r.subject, r.frame): r.landmarks for r in t.records}
    for f in (0, 1, 2, 4):
        assert lm["SN001", f].shape == (66, 2) and lm["SN001", f].dtype == np.float32
        np.testing.assert_allclose(lm["SN001", f], landmarks_for(f), atol=1e-5)
    assert lm["SN001", 3] is None and lm["SN001", 9] is None
    np.testing.assert_allclose(lm["SN013", 0], landmarks_for(0), atol=1e-5)  # l00001_lm.mat
    np.testing.assert_allclose(lm["SN013", 2], landmarks_for(2), atol=1e-5)  # l00003_lm.mat
    assert lm["SN013", 1] is None
    assert any("SN001_0010_lm.mat" in n and "past" in n for n in t.notes)
    assert any("l00011_lm.mat" in n for n in t.notes)
    assert all(r.landmarks is None for r in load_disfa(disfa, landmarks=False).records)
    assert load_disfa(disfa, subjects=["sn013"], landmarks=False).subjects() == ["SN013"]
    with pytest.raises(FileNotFoundError, match=r"no video in .*Videos_LeftCamera for subjects \['SN002'\]"):
        load_disfa(disfa, subjects=["SN002"])


def test_disfa_missing_label_file(disfa):
    (disfa / "ActionUnit_Labels" / "SN013" / "SN013_au5.txt").unlink()
    load_disfa(disfa)  # AU5 is not an occurrence AU: not needed
    with pytest.raises(FileNotFoundError, match=r"SN013_au5\.txt.*leftvideoSN013_Comp\.AVI"):
        load_disfa(disfa, intensity=True)


def test_disfa_row_count_disagrees_with_video(disfa):
    f = disfa / "ActionUnit_Labels" / "SN001" / "SN001_au12.txt"
    f.write_text("".join(f"{t + 1},0\n" for t in range(N_VIDEO - 1)))
    with pytest.raises(ValueError, match=r"SN001_au12\.txt has 9 rows but video .*LeftVideoSN001_comp\.avi has 10"):
        load_disfa(disfa)


def test_disfa_bad_value_and_absent_au(disfa):
    with pytest.raises(ValueError, match=r"no labels for \['AU7'\]"):
        load_disfa(disfa, aus=[1, 7])
    f = disfa / "ActionUnit_Labels" / "SN013" / "SN013_au26.txt"
    lines = f.read_text().splitlines()
    lines[3] = "4,6"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"SN013_au26\.txt, line 4: intensity '6'"):
        load_disfa(disfa)


def test_video_frames_random_access_matches_colours(disfa):
    for name, threshold in (("LeftVideoSN001_comp.avi", 48), ("leftvideoSN013_Comp.AVI", 0)):
        path = disfa / "Videos_LeftCamera" / name
        assert video_frame_count(path) == N_VIDEO == video_frame_count(path, decode=True)
        with VideoFrames(path, seek_threshold=threshold) as v:
            assert len(v) == N_VIDEO
            for i in (7, 2, 9, 0, 5, 5, 6, 3, 8):  # forward, backward, repeated
                px = v[i]
                assert px.shape == (48, 64, 3)
                assert np.abs(px.astype(int) - frame_colour(i)).max() <= 8, (name, i)
            with pytest.raises(IndexError, match=name.replace(".", r"\.")):
                v[N_VIDEO]


def test_disfa_read_frame_decodes_the_labelled_frame(disfa):
    t = load_disfa(disfa)
    for r in (t.records[3], t.records[N_VIDEO + 8], t.records[N_VIDEO + 2], t.records[0]):
        img = read_frame(r, size=16)
        assert img.shape == (16, 16, 3) and img.dtype == np.uint8
        assert np.abs(img.astype(int) - frame_colour(r.frame)).max() <= 8, (r.subject, r.frame)


# ---------------------------------------------------------------------------------------------
# read_frame crops


def test_landmark_crop_centres_on_landmarks(tmp_path):
    im = np.full((80, 100, 3), 90, np.uint8)
    im[10:30, 60:80] = (255, 0, 0)  # red patch, x 60..79, y 10..29
    Image.fromarray(im).save(tmp_path / "face.png")
    pts = np.array([[60, 10], [80, 30], [70, 20]], np.float32)
    rec = FrameRecord("S1", "S1", 0, str(tmp_path / "face.png"), np.zeros(1, np.int8),
                      np.full(1, np.nan, np.float32), pts)  # fmt: skip
    # box 20 x 20 -> side 30 around (70, 20): pixels x 55..84, y 5..34; the patch is rows/cols 5..24
    out = read_frame(rec, size=30)
    assert out.shape == (30, 30, 3)
    assert (out[5:25, 5:25] == (255, 0, 0)).all()
    assert (out[:5] == 90).all() and (out[25:, :] == 90).all() and (out[:, :5] == 90).all()
    big = read_frame(rec, size=60)
    assert tuple(big[30, 30]) == (255, 0, 0) and tuple(big[1, 1]) == (90, 90, 90)
    # centre square: x 10..89, the centre (50, 40) is background
    centre = read_frame(rec, size=40, crop="centre")
    assert tuple(centre[20, 20]) == (90, 90, 90)
    # without landmarks the "landmarks" crop falls back to the centre square
    rec.landmarks = None
    assert (read_frame(rec, size=40) == centre).all()
    # a box reaching past the frame is padded with black
    rec.landmarks = np.array([[0, 0], [10, 10]], np.float32)
    corner = read_frame(rec, size=15)
    assert (corner[0, 0] == 0).all() and (corner[10, 10] == 90).all()
    with pytest.raises(ValueError, match="crop must be"):
        read_frame(rec, size=8, crop="eyes")


# ---------------------------------------------------------------------------------------------
# CSV datasets


def test_csv_dataset(tmp_path):
    d = tmp_path / "mine"
    for i in range(3):
        write_jpeg(d / "img" / f"{i}.jpg", frame_colour(i))
    (d / "labels.csv").write_text(
        "path,subject,AU1,AU12,AU12_int,frame\n"
        "img/0.jpg,p1,1,0,0.5,10\n"
        "img/1.jpg,p1,9,-1,,11\n"
        "img/2.jpg,p2,,1,4,\n"
    )
    t = load_csv(d / "labels.csv")
    assert t.au_names == ["AU1", "AU12"] and t.subjects() == ["p1", "p2"]
    assert t.occ_matrix().tolist() == [[1, 0], [-1, -1], [-1, 1]]
    inten = t.intensity_matrix()
    assert np.isnan(inten[:, 0]).all() and inten[0, 1] == 0.5 and np.isnan(inten[1, 1]) and inten[2, 1] == 4
    assert [r.frame for r in t.records] == [10, 11, 0] and t.records[2].sequence == "p2"
    assert Path(t.records[1].source) == d / "img" / "1.jpg"
    assert np.abs(read_frame(t.records[1], size=8).astype(int) - frame_colour(1)).max() <= 6
    assert load_csv(d / "labels.csv", aus=["AU12"]).occ_matrix().tolist() == [[0], [-1], [1]]
    with pytest.raises(ValueError, match=r"labels\.csv: no column for \['AU4'\]"):
        load_csv(d / "labels.csv", aus=[4, 12])
    # root= resolves paths elsewhere; a missing image names the CSV line and the path
    with pytest.raises(FileNotFoundError, match=r"labels\.csv, line 2: image not found: .*elsewhere"):
        load_csv(d / "labels.csv", root=tmp_path / "elsewhere")
    (d / "bad.csv").write_text("path,subject,AU1\nimg/0.jpg,p1,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 2: AU1 value '2'"):
        load_csv(d / "bad.csv")
    (d / "img" / "2.jpg").write_bytes(b"")  # found before training, not when a loader reaches it
    with pytest.raises(ValueError, match=r"labels\.csv, line 4: image is empty \(0 bytes\): .*2\.jpg"):
        load_csv(d / "labels.csv")


# ---------------------------------------------------------------------------------------------
# frame tables (the protocol over them: tests/test_protocol.py)


def test_table_subset(disfa):
    d = load_disfa(disfa, landmarks=False)
    with pytest.raises(ValueError, match=r"subjects not in the table: \['SN999'\]"):
        d.subset(["SN001", "SN999"])
    assert d.subset(["SN013"]).subjects() == ["SN013"]
