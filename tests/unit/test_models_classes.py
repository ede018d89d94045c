"""Class names and colours: class files, the ONNX metadata that carries them, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from segstream.models.build import build_fcn
from segstream.models.classes import (
    CLASSES_KEY,
    PALETTE_KEY,
    ClassList,
    ClassListError,
    classes_from_metadata,
    generated_palette,
    parse_classes,
    read_classes_file,
    set_class_metadata,
    voc_classes,
)
from segstream.models.graph import model_metadata, output_channels
from segstream.models.serving import CONFIDENCE, FRAMES, LABELS, LOGITS, OUTPUT_SIZE, serving_graph
from segstream.wire.palette import VOC_CLASSES, palette_table, voc_palette
from tests.own_models import identity_model, ramp_frame, ramp_model

# --- class files ----------------------------------------------------------------------------------


def test_a_text_file_is_one_name_per_line_with_optional_colours() -> None:
    text = "# road scene\n\nbackground\nroad #804080\n  traffic light   #FAAA1E \ncar\n"
    classes = parse_classes(text, "scene.txt")
    assert classes.names == ("background", "road", "traffic light", "car")
    assert classes.palette.tolist() == [
        generated_palette(4)[0].tolist(),
        [128, 64, 128],
        [250, 170, 30],
        generated_palette(4)[3].tolist(),
    ]
    assert classes.source == "scene.txt"


def test_names_without_colours_get_the_generated_palette_which_is_voc_s_for_21() -> None:
    classes = parse_classes("\n".join(f"c{k}" for k in range(30)), "f")
    np.testing.assert_array_equal(classes.palette, voc_palette(30))
    assert classes.palette[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in classes.palette.tolist()}) == 30
    np.testing.assert_array_equal(generated_palette(21), voc_palette())
    assert voc_classes().names == VOC_CLASSES


def test_json_files_are_a_list_of_names_or_classes_and_palette() -> None:
    assert parse_classes('["a", "b"]', "f").names == ("a", "b")
    classes = parse_classes(json.dumps({"classes": ["a", "b"], "palette": [[1, 2, 3], [4, 5, 6]]}), "f")
    assert classes.names == ("a", "b") and classes.palette.tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("only\n", "1 class name(s); a model has 2 to 256 classes"),
        ("\n".join(f"c{k}" for k in range(257)), "257 class name(s)"),
        ("a\nb\na\n", "class 2: 'a' already names class 0"),
        ('["a", ""]', "class 1: '' is not a class name"),
        ('["a", 3]', "class 1: 3 is not a class name"),
        ('{"classes": ["a", "b"], "palette": [[0, 0, 0]]}', "1 colours for 2 classes"),
        ('{"classes": ["a", "b"], "palette": [[0, 0, 0], [0, 0, 256]]}', "colour of class 1: [0, 0, 256]"),
        ('{"classes": ["a", "b"], "palette": [[0, 0, 0], [true, 0, 0]]}', "colour of class 1"),
        ('{"classes": ["a", "b"], "colours": []}', "unknown key(s) colours"),
        ('{"names": ["a", "b"]}', "JSON must be a list of names"),
        ("[a, b]", "not valid JSON"),
    ],
)
def test_bad_class_files_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ClassListError) as info:
        parse_classes(text, "names.txt")
    assert str(info.value).startswith("names.txt: ") and message in str(info.value)


def test_reading_a_class_file(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    path.write_bytes("\ufeffsky\nsea\n".encode())  # a byte-order mark, as some editors write
    assert read_classes_file(path).names == ("sky", "sea")
    with pytest.raises(ClassListError, match="cannot read class file"):
        read_classes_file(tmp_path / "missing.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(ClassListError, match="not UTF-8"):
        read_classes_file(tmp_path / "binary.txt")


def test_the_colour_table_covers_every_uint8_id() -> None:
    classes = ClassList.of(["a", "b", "c"], [[1, 1, 1], [2, 2, 2], [3, 3, 3]])
    table = classes.table
    assert table.shape == (256, 3) and not table.flags.writeable
    assert table[2].tolist() == [3, 3, 3] and not table[3:].any()
    np.testing.assert_array_equal(table[np.array([[0, 2], [200, 1]], np.uint8)][0, 1], [3, 3, 3])
    with pytest.raises(ValueError, match="at most 256"):
        palette_table(np.zeros((257, 3), np.uint8))


# --- metadata ---------------------------------------------------------------------------------------


def test_metadata_round_trips_and_keeps_the_other_entries() -> None:
    model = build_fcn("tiny", num_classes=3, classes=ClassList.of(["x", "y", "z"], [[9, 8, 7], [6, 5, 4], [3, 2, 1]]))
    meta = model_metadata(model)
    assert json.loads(meta[CLASSES_KEY]) == ["x", "y", "z"]
    assert json.loads(meta[PALETTE_KEY]) == [[9, 8, 7], [6, 5, 4], [3, 2, 1]]
    again = classes_from_metadata(meta)
    assert again is not None and again.names == ("x", "y", "z") and again.palette.tolist()[0] == [9, 8, 7]

    set_class_metadata(model, ClassList.of(["p", "q", "r"]))
    meta = model_metadata(model)
    assert json.loads(meta[CLASSES_KEY]) == ["p", "q", "r"]
    assert meta["segstream.synthetic"] == "true"  # untouched
    assert [p.key for p in model.metadata_props].count(CLASSES_KEY) == 1


def test_synthetic_builds_name_voc_for_21_classes_and_nothing_otherwise() -> None:
    voc = classes_from_metadata(model_metadata(build_fcn("tiny")))
    assert voc is not None and voc.names == VOC_CLASSES
    np.testing.assert_array_equal(voc.palette, voc_palette())
    assert classes_from_metadata(model_metadata(build_fcn("tiny", num_classes=5))) is None
    with pytest.raises(ValueError, match="3 class names for a model of 5 classes"):
        build_fcn("tiny", num_classes=5, classes=ClassList.of(["a", "b", "c"]))


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({PALETTE_KEY: "[[0, 0, 0]]"}, f"{PALETTE_KEY} without {CLASSES_KEY}"),
        ({CLASSES_KEY: '"a, b"'}, "must be a JSON list of class names"),
        ({CLASSES_KEY: "a\nb"}, "not valid JSON"),
        ({CLASSES_KEY: '["a", "b"]', PALETTE_KEY: "[[0, 0, 0]]"}, "1 colours for 2 classes"),
    ],
)
def test_malformed_metadata_is_refused(meta: dict[str, str], message: str) -> None:
    with pytest.raises(ClassListError) as info:
        classes_from_metadata(meta, "the metadata of m.onnx")
    assert str(info.value).startswith("the metadata of m.onnx: ") and message in str(info.value)


def test_no_metadata_names_no_classes() -> None:
    assert classes_from_metadata({"segstream.synthetic": "true"}) is None


# --- graphs --------------------------------------------------------------------------------------------


def test_output_channels_are_read_from_the_declared_shape_or_inferred() -> None:
    assert output_channels(build_fcn("tiny", num_classes=7), "aux") == 7
    model = identity_model()
    model.graph.output[0].type.tensor_type.ClearField("shape")  # nothing declared: shape inference tells
    assert output_channels(model, "out") == 3
    with pytest.raises(ValueError, match="unknown output 'nope'"):
        output_channels(model, "nope")


@pytest.mark.parametrize("resize_in_graph", [True, False])
@pytest.mark.parametrize("name", [LOGITS, LABELS, CONFIDENCE, FRAMES, OUTPUT_SIZE])
def test_a_model_whose_tensors_bear_serving_names_still_serves(name: str, resize_in_graph: bool) -> None:
    # A head called `logits` (or `labels`...) is the serving graph's own output name: it is renamed inside.
    graph = serving_graph(ramp_model(5, output=name), name, resize_in_graph)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    frame = ramp_frame(5)[None]
    feeds: dict[str, np.ndarray] = {FRAMES: frame}
    if resize_in_graph:
        feeds[OUTPUT_SIZE] = np.array(frame.shape[1:3], np.int64)
    labels = session.run([LABELS], feeds)[0]
    assert labels[0, :, 4::8].tolist() == [[0, 1, 2, 3, 4]] * frame.shape[1]


def test_the_model_input_may_have_any_name() -> None:
    model = identity_model()
    for node in model.graph.node:
        node.input[0] = "image"
    model.graph.input[0].name = "image"
    onnx.checker.check_model(model)
    graph = serving_graph(model, "out", resize_in_graph=False)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    frame = np.zeros((1, 4, 4, 3), np.uint8)
    frame[..., 2] = 255
    assert (session.run([LABELS], {FRAMES: frame})[0] == 2).all()
