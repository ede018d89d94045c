"""segstream.evaluation on a tiny COCO-format dataset whose answers are worked out by hand below.

The dataset (built by `build_dataset`): four PNG images, listed out of id order in the JSON.

image 1, 4x6: person = two overlapping rectangles of one instance (cols 0-1; rows 0-1 of cols 1-2),
    dog = compressed RLE of rows 1-3 x cols 2-4 (overlaps the person at row 1, col 2),
    toothbrush (not a VOC class) over rows 0-1 x cols 4-5, crowd person = uncompressed RLE of col 5.
image 2, 8x12: cat polygon over cols 0-5, car polygon over rows 3-6 x cols 7-10.
image 3, 4x4: only a toothbrush. image 4, 4x4: no annotation at all.

Each image's red channel is 10 x the class the fake predictor (and the oracle model of
test_eval_cli.py) predicts there; image 2 is constant on aligned 2x2 blocks so that halving it
keeps one class per block.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from pycocotools import mask as coco_mask  # type: ignore[import-untyped]

from segstream.evaluation import (
    IGNORE,
    ConfusionMatrix,
    DatasetError,
    Predictor,
    Resolution,
    Sample,
    StreamingPredictor,
    check_dataset,
    class_planes,
    evaluate_torchvision,
    evaluate_zoo,
    instance_masks,
    load_dataset,
    predict_all,
    read_rgb,
    resize_target,
    semantic_target,
    zoo_image_score,
)

U8 = npt.NDArray[np.uint8]
PERSON, DOG, CAT, CAR, TOOTHBRUSH = 1, 18, 17, 3, 90  # COCO category ids
X = IGNORE


def grid(rows: Iterable[Iterable[int]]) -> U8:
    return np.array([list(r) for r in rows], np.uint8)


# What the predictor answers, by image: at the image's own size and at the inference size (--size 4).
PRED_1 = grid(
    [
        [15, 15, 0, 0, 0, 0],
        [15, 15, 12, 12, 8, 15],
        [15, 0, 12, 12, 12, 15],
        [15, 15, 12, 12, 7, 15],
    ]
)
PRED_2_SMALL = grid(
    [
        [8, 8, 8, 0, 0, 0],
        [8, 8, 0, 7, 7, 7],
        [8, 8, 8, 7, 0, 0],
        [12, 8, 8, 0, 0, 15],
    ]
)
PRED_2 = np.kron(PRED_2_SMALL, np.ones((2, 2), np.uint8))
PRED_3 = grid([[0, 0, 0, 0], [0, 15, 15, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
PRED_4 = np.zeros((4, 4), np.uint8)

# Protocol 1's ground truth, by hand from the annotations above.
TARGET_1 = grid(
    [
        [15, 15, 15, 0, 0, 15],  # (0,2): the person's second rectangle; (0,4): the toothbrush is no VOC class
        [15, 15, X, 12, 12, 15],  # (1,2): person and dog overlap -> ignored
        [15, 15, 12, 12, 12, 15],
        [15, 15, 12, 12, 12, 15],
    ]
)
# Image 2 at 4x6: PIL's NEAREST takes source rows/cols 1, 3, 5, 7 (, 9, 11): floor((i + 0.5) * 2).
TARGET_2_SMALL = grid(
    [
        [8, 8, 8, 0, 0, 0],  # source row 1: no car (rows 3-6)
        [8, 8, 8, 7, 7, 0],  # source row 3; source cols 7, 9 are car, 11 is not
        [8, 8, 8, 7, 7, 0],
        [8, 8, 8, 0, 0, 0],
    ]
)


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    """A polygon pycocotools fills as cols x0..x1-1, rows y0..y1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _annotation(ann_id: int, image_id: int, category: int, segmentation: object, crowd: int = 0) -> dict[str, object]:
    return {"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": crowd, "segmentation": segmentation}


def _image(pred: U8) -> U8:
    rgb = np.zeros((*pred.shape, 3), np.uint8)
    rgb[..., 0] = pred * 10
    rgb[..., 1] = 77  # something to prove channels are not mixed up
    return rgb


def build_dataset(root: Path) -> tuple[Path, Path]:
    """Writes the images and the instances JSON under `root`; returns (images dir, annotations file)."""
    images = root / "images"
    images.mkdir()
    for name, pred in (("a.png", PRED_1), ("b.png", PRED_2), ("c.png", PRED_3), ("d.png", PRED_4)):
        assert cv2.imwrite(str(images / name), cv2.cvtColor(_image(pred), cv2.COLOR_RGB2BGR))
    dog = np.zeros((4, 6), np.uint8)
    dog[1:4, 2:5] = 1
    dog_rle = coco_mask.encode(np.asfortranarray(dog))
    dog_counts = dog_rle["counts"].decode("ascii")
    annotations = [
        _annotation(11, 1, PERSON, [_rect(0, 0, 2, 4), _rect(1, 0, 3, 2)]),
        _annotation(12, 1, DOG, {"size": [4, 6], "counts": dog_counts}),
        _annotation(13, 1, TOOTHBRUSH, [_rect(4, 0, 6, 2)]),
        # Column-major runs: 20 pixels off (cols 0-4), then the 4 of col 5.
        _annotation(14, 1, PERSON, {"size": [4, 6], "counts": [20, 4]}, crowd=1),
        _annotation(21, 2, CAT, [_rect(0, 0, 6, 8)]),
        _annotation(22, 2, CAR, [_rect(7, 3, 11, 7)]),
        _annotation(31, 3, TOOTHBRUSH, [_rect(0, 0, 4, 4)]),
    ]
    data = {
        "images": [
            {"id": 3, "file_name": "c.png", "height": 4, "width": 4},
            {"id": 1, "file_name": "a.png", "height": 4, "width": 6},
            {"id": 4, "file_name": "d.png", "height": 4, "width": 4},
            {"id": 2, "file_name": "b.png", "height": 8, "width": 12},
        ],
        "annotations": annotations,
        "categories": [
            {"id": i, "name": n} for i, n in ((1, "person"), (3, "car"), (17, "cat"), (18, "dog"), (90, "toothbrush"))
        ],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return images, path


# Protocol 1 over all four images, counted by hand pixel by pixel (row = truth, column = prediction):
# image 1: (15,15) 10, (15,0) 3, (0,0) 2, (12,12) 6, (12,8) 1, (12,7) 1, one pixel ignored
# image 2: (8,8) 10, (0,0) 6, (8,0) 1, (7,7) 3, (0,7) 1, (7,0) 1, (8,12) 1, (0,15) 1
# image 3: (0,0) 14, (0,15) 2        image 4: (0,0) 16
EXPECTED_MATRIX = {
    (0, 0): 38, (0, 7): 1, (0, 15): 3,
    (7, 0): 1, (7, 7): 3,
    (8, 0): 1, (8, 8): 10, (8, 12): 1,
    (12, 7): 1, (12, 8): 1, (12, 12): 6,
    (15, 0): 3, (15, 15): 10,
}  # fmt: skip
# Truth rows: 0: 42, 7: 4, 8: 12, 12: 8, 15: 13. Predicted columns: 0: 43, 7: 5, 8: 11, 12: 7, 15: 13.
EXPECTED_IOU = {
    0: Fraction(38, 42 + 43 - 38),
    7: Fraction(3, 4 + 5 - 3),
    8: Fraction(10, 12 + 11 - 10),
    12: Fraction(6, 8 + 7 - 6),
    15: Fraction(10, 13 + 13 - 10),
}
EXPECTED_CLASS_ACCURACY = {
    0: Fraction(38, 42),
    7: Fraction(3, 4),
    8: Fraction(10, 12),
    12: Fraction(6, 8),
    15: Fraction(10, 13),
}
EXPECTED_PIXEL_ACCURACY = Fraction(38 + 3 + 10 + 6 + 10, 79)  # 80 pixels, one ignored
EXPECTED_MEAN_IOU_PRESENT = (Fraction(38, 47) + Fraction(1, 2) + Fraction(10, 13) + Fraction(2, 3) + Fraction(5, 8)) / 5

# Protocol 2 (images 1 and 2 only), channels 1..20 at full resolution:
# image 1: truth person 14 px (10 + 4 crowd), dog 9; predicted foreground 19 px; intersection
#   person 10 + dog 7 = 17; union 19 + 23 - 17 = 25; disagreement 25 - 17 = 8 of 20 x 24 = 480.
# image 2: truth cat 48, car 16; predicted cat 40, car 16, dog 4, person 4 = 64; intersection
#   cat 40 + car 6 = 46; union 64 + 64 - 46 = 82; disagreement 36 of 20 x 96 = 1920.
EXPECTED_ZOO = [(1, 17, 25, 480 - 8, 480), (2, 46, 82, 1920 - 36, 1920)]
EXPECTED_ZOO_MEAN_IOU = (Fraction(17, 25) + Fraction(46, 82)) / 2
EXPECTED_ZOO_PIXEL_ACCURACY = (Fraction(472, 480) + Fraction(1884, 1920)) / 2


class FakePredictor:
    """Answers from a table keyed by the image's bytes, and remembers what it was asked."""

    def __init__(self, size: int) -> None:
        small = {1: PRED_1, 2: PRED_2_SMALL, 3: PRED_3, 4: PRED_4}
        full = {1: PRED_1, 2: PRED_2, 3: PRED_3, 4: PRED_4}
        self.table: dict[tuple[bytes, Resolution], U8] = {}
        for key, pred in full.items():
            image = _image(pred).tobytes()
            self.table[image, "frame"] = pred
            self.table[image, "inference"] = small[key] if size == 4 else pred
        self.calls: list[tuple[int, Resolution]] = []

    def predict(self, rgb: U8, resolution: Resolution) -> U8:
        pred = self.table[rgb.tobytes(), resolution]
        self.calls.append((int(rgb[0, 0, 0]), resolution))
        return pred


class StreamingFake(FakePredictor):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.streamed = 0

    def predict_many(self, images: Iterable[U8], resolution: Resolution) -> Iterator[U8]:
        for rgb in images:
            self.streamed += 1
            yield self.predict(rgb, resolution)


@pytest.fixture
def dataset(tmp_path: Path) -> list[Sample]:
    images, annotations = build_dataset(tmp_path)
    return load_dataset(annotations, images)


def _matrix_entries(matrix: ConfusionMatrix) -> dict[tuple[int, int], int]:
    return {(int(r), int(c)): int(matrix.matrix[r, c]) for r, c in zip(*np.nonzero(matrix.matrix), strict=True)}


def test_dataset_is_sorted_by_id_and_keeps_voc_instances_only(dataset: list[Sample]) -> None:
    assert [s.image_id for s in dataset] == [1, 2, 3, 4]
    assert [[i.voc_index for i in s.instances] for s in dataset] == [[15, 12, 15], [8, 7], [], []]
    assert [s.has_voc_instance for s in dataset] == [True, True, False, False]
    assert dataset[0].instances[2].iscrowd
    assert read_rgb(dataset[1]).shape == (8, 12, 3)
    assert (read_rgb(dataset[0])[..., 0] == PRED_1 * 10).all()


def test_ground_truth_rasterises_to_the_hand_drawn_masks(dataset: list[Sample]) -> None:
    first, second = dataset[0], dataset[1]
    assert (semantic_target(instance_masks(first), (4, 6)) == TARGET_1).all()
    planes = class_planes(instance_masks(first), (4, 6))
    person = grid([[1, 1, 1, 0, 0, 1], [1, 1, 1, 0, 0, 1], [1, 1, 0, 0, 0, 1], [1, 1, 0, 0, 0, 1]])
    dog = grid([[0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0]])
    assert sorted(planes) == [12, 15]
    assert (planes[15] == person.astype(bool)).all()
    assert (planes[12] == dog.astype(bool)).all()
    target_2 = semantic_target(instance_masks(second), (8, 12))
    assert (target_2[:, :6] == 8).all() and (target_2[3:7, 7:11] == 7).all()
    assert int((target_2 == 0).sum()) == 96 - 48 - 16
    assert (resize_target(target_2, (4, 6)) == TARGET_2_SMALL).all()


def test_protocol_1_reproduces_the_hand_counted_confusion_matrix(dataset: list[Sample]) -> None:
    fake = FakePredictor(size=4)
    result = evaluate_torchvision(dataset, fake)
    matrix = result.matrix
    assert result.images == 4
    assert _matrix_entries(matrix) == EXPECTED_MATRIX
    iou = matrix.iou()
    assert {c: v for c, v in enumerate(iou) if v is not None} == EXPECTED_IOU
    accuracy = matrix.class_accuracy()
    assert {c: v for c, v in enumerate(accuracy) if v is not None} == EXPECTED_CLASS_ACCURACY
    # 16 classes are in neither truth nor prediction: torchvision's mean is nan.
    assert matrix.mean_iou() is None
    assert matrix.mean_iou_present() == EXPECTED_MEAN_IOU_PRESENT
    assert matrix.pixel_accuracy() == EXPECTED_PIXEL_ACCURACY
    assert [r for _, r in fake.calls] == ["inference"] * 4


def test_protocol_2_reproduces_the_hand_counted_per_image_iou(dataset: list[Sample]) -> None:
    fake = FakePredictor(size=4)
    result = evaluate_zoo(dataset, fake)
    assert (result.images, result.skipped) == (2, 2)
    scores = [(s.image_id, s.intersection, s.union, s.agreement, s.channel_pixels) for s in result.accumulator.scores]
    assert scores == EXPECTED_ZOO
    assert result.mean_iou() == EXPECTED_ZOO_MEAN_IOU
    assert result.pixel_accuracy() == EXPECTED_ZOO_PIXEL_ACCURACY
    # Only the images with a VOC instance, at their own resolution.
    assert fake.calls == [(int(PRED_1[0, 0]) * 10, "frame"), (int(PRED_2[0, 0]) * 10, "frame")]


def test_streaming_predictors_are_streamed(dataset: list[Sample]) -> None:
    fake = StreamingFake(size=4)
    assert isinstance(fake, StreamingPredictor)
    assert not isinstance(FakePredictor(size=4), StreamingPredictor)
    assert isinstance(FakePredictor(size=4), Predictor)
    result = evaluate_torchvision(dataset, fake)
    assert fake.streamed == 4
    assert _matrix_entries(result.matrix) == EXPECTED_MATRIX


def test_predict_all_falls_back_to_one_call_per_image() -> None:
    fake = FakePredictor(size=4)
    out = list(predict_all(fake, [_image(PRED_3), _image(PRED_4)], "frame"))
    assert [o.shape for o in out] == [(4, 4), (4, 4)]
    assert len(fake.calls) == 2


def test_confusion_matrix_with_every_class_present() -> None:
    # Classes 0..20 once each; class 1's pixel is predicted as 2.
    target = np.arange(21, dtype=np.uint8).reshape(1, 21)
    prediction = target.copy()
    prediction[0, 1] = 2
    matrix = ConfusionMatrix()
    matrix.update(target, prediction)
    # IoU 1 = 0 / 1, IoU 2 = 1 / (1 + 2 - 1), the 19 others 1.
    assert matrix.mean_iou() == (19 + Fraction(0) + Fraction(1, 2)) / 21 == Fraction(13, 14)
    assert matrix.pixel_accuracy() == Fraction(20, 21)


def test_confusion_matrix_ignores_255_and_rejects_foreign_classes() -> None:
    matrix = ConfusionMatrix()
    matrix.update(grid([[X, X], [0, 5]]), grid([[3, 4], [0, 5]]))
    assert int(matrix.matrix.sum()) == 2
    assert matrix.pixel_accuracy() == 1
    with pytest.raises(ValueError, match="class 21"):
        matrix.update(grid([[0]]), grid([[21]]))
    with pytest.raises(ValueError, match="shape"):
        matrix.update(grid([[0, 0]]), grid([[0]]))


def test_semantic_target_ignores_overlaps_of_the_same_class_too() -> None:
    a = grid([[1, 1, 0]]).astype(bool)
    b = grid([[0, 1, 1]]).astype(bool)
    assert semantic_target([(15, a), (15, b)], (1, 3)).tolist() == [[15, X, 15]]
    assert semantic_target([(15, a), (3, b)], (1, 3)).tolist() == [[15, X, 3]]
    assert semantic_target([], (1, 3)).tolist() == [[0, 0, 0]]
    with pytest.raises(ValueError, match="not a VOC foreground class"):
        semantic_target([(0, a)], (1, 3))


def test_zoo_score_of_an_empty_union_is_perfect() -> None:
    empty = np.zeros((2, 3), bool)
    score = zoo_image_score([(15, empty)], np.zeros((2, 3), np.uint8), image_id=9)
    assert (score.intersection, score.union, score.agreement, score.channel_pixels) == (0, 0, 120, 120)
    assert score.iou == 1 and score.pixel_accuracy == 1


def test_zoo_score_counts_every_channel_of_overlapping_classes() -> None:
    # Pixel 0 is both a person and a dog; predicting dog hits the dog channel and misses the person one.
    person = grid([[1, 0]]).astype(bool)
    dog = grid([[1, 1]]).astype(bool)
    score = zoo_image_score([(15, person), (12, dog)], grid([[12, 0]]))
    # Truth 3 channel-pixels, predicted 1, intersection 1: union 3, disagreement 2 of 20 x 2.
    assert (score.intersection, score.union, score.agreement, score.channel_pixels) == (1, 3, 38, 40)


def test_check_dataset_passes_a_sound_dataset(dataset: list[Sample]) -> None:
    check_dataset(dataset)


def test_check_dataset_lists_every_problem_at_once(tmp_path: Path) -> None:
    images, annotations = build_dataset(tmp_path)
    data = json.loads(annotations.read_text())
    (images / "d.png").unlink()  # the last image by id
    assert cv2.imwrite(str(images / "b.png"), np.zeros((8, 10, 3), np.uint8))  # 10 wide, not 12
    (images / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(4))  # a PNG cut short in its header
    data["annotations"][1]["segmentation"]["size"] = [5, 6]  # the dog's RLE, on a 4x6 image
    data["annotations"][4]["segmentation"] = [[0, 0, 1]]  # the cat: not a polygon pycocotools takes
    annotations.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as info:
        check_dataset(load_dataset(annotations, images))
    lines = str(info.value).splitlines()
    assert lines[0] == "the dataset has problems; nothing was evaluated (5 problems):"
    assert f"  image 4: {images / 'd.png'} does not exist" in lines
    assert any(f"image 2: {images / 'b.png'} is 10x8 but the annotations say 12x8" in line for line in lines)
    assert f"  image 3: {images / 'c.png'}: its PNG header is corrupt or truncated" in lines
    assert "  annotation 12 (image 1): its RLE is 6x5, the image 6x4" in lines
    assert any(line.startswith("  annotation 21 (image 2): unusable segmentation") for line in lines)


def test_check_dataset_reads_a_jpeg_size_past_large_metadata(tmp_path: Path) -> None:
    ok, encoded = cv2.imencode(".jpg", np.zeros((5, 7, 3), np.uint8))
    assert ok
    data = encoded.tobytes()
    # A 60 KiB application segment before the start of frame, as a large EXIF block would be.
    filler = b"\xff\xe1" + (60002).to_bytes(2, "big") + bytes(60000)
    path = tmp_path / "big-exif.jpg"
    path.write_bytes(data[:2] + filler + data[2:])
    check_dataset([Sample(1, path, height=5, width=7)])
    with pytest.raises(DatasetError, match="is 7x5 but the annotations say 7x6"):
        check_dataset([Sample(1, path, height=6, width=7)])


def test_load_dataset_lists_every_bad_entry(tmp_path: Path) -> None:
    images, annotations = build_dataset(tmp_path)
    data = json.loads(annotations.read_text())
    del data["images"][0]["height"], data["images"][2]["file_name"]
    del data["annotations"][0]["image_id"]
    annotations.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as info:
        load_dataset(annotations, images)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{annotations} is not usable (3 problems):"
    assert lines[1:] == [
        "  annotation id 11 lacks a valid 'image_id'",
        "  image id 3 lacks a valid 'height'",
        "  image id 4 lacks a valid 'file_name'",
    ]
