"""`inspect --map`: the picture of a model file's bytes. The oracles: `inspect`'s report (bytes per storage type,
checked against gguf-py in test_inspect.py; header, metadata and tensor-info sizes, counted by formula), the
safetensors library (tensor sizes of a sharded folder) and the files' sizes on disk: every byte is drawn once."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageColor

from pellucid.errors import PellucidError
from pellucid.formats.gguf import GGUFFile
from pellucid.inspect import inspect_model
from pellucid.inspect_map import (
    PNG_SCALE,
    TYPE_COLOURS,
    check_map_path,
    file_regions,
    layer_of,
    layout_map,
    render_png,
    render_svg,
)
from pellucid.store import resolve
from test_cli import assert_user_error, run

SVG = "{http://www.w3.org/2000/svg}"


def svg_tree(m) -> ET.Element:
    return ET.fromstring(render_svg(m))  # raises if it is not well-formed XML


def rects(root: ET.Element, role: str) -> list[dict]:
    return [r.attrib for r in root.iter(f"{SVG}rect") if r.get("class") == role]


def legend_bytes(root: ET.Element) -> dict[str, int]:
    return {r["data-kind"]: int(r["data-bytes"]) for r in rects(root, "swatch")}


def assert_every_byte_once(regions: list[dict], file_sizes: dict[str, int]) -> None:
    """The drawn regions of each file follow each other without gap or overlap, from byte 0 to its end."""
    for file, size in file_sizes.items():
        spans = sorted((int(r["data-offset"]), int(r["data-bytes"])) for r in regions if r["data-file"] == file)
        assert spans[0][0] == 0, file
        for (offset, n_bytes), (next_offset, _) in zip(spans, spans[1:]):
            assert offset + n_bytes == next_offset, (file, offset)
        assert sum(n for _, n in spans) == spans[-1][0] + spans[-1][1] == size, file


@pytest.fixture(scope="module")
def smollm2_map(smollm2_path):
    return layout_map(file_regions(resolve(smollm2_path)))


@pytest.fixture(scope="module")
def gemma3_map(gemma3_path):
    return layout_map(file_regions(resolve(gemma3_path)))


# -- GGUF -----------------------------------------------------------------------------------------------


def test_smollm2_svg_has_a_rectangle_per_tensor_and_a_legend_of_bytes_per_type(smollm2_map, smollm2_path):
    root = svg_tree(smollm2_map)
    with GGUFFile(smollm2_path) as g:
        names = list(g.tensors)
    drawn = Counter(r["data-name"] for r in rects(root, "tensor"))
    assert drawn == Counter(names) and len(names) == 272  # each tensor exactly once
    by_type = {q.type: q.n_bytes for q in inspect_model(resolve(smollm2_path)).quant}
    legend = legend_bytes(root)
    assert {k: legend[k] for k in by_type} == by_type and set(by_type) == {"Q4_1", "Q8_0", "F32"}
    assert_every_byte_once(
        rects(root, "tensor") + rects(root, "part"), {smollm2_path.name: smollm2_path.stat().st_size}
    )


def test_gemma3_header_parts_add_up_to_inspects_layout(gemma3_map, gemma3_path):
    """The header's parts, found from the byte offsets the reader records, against `inspect`'s sizes."""
    report = inspect_model(resolve(gemma3_path))
    layout = report.layout
    root = svg_tree(gemma3_map)
    parts = Counter()
    for r in rects(root, "part"):
        parts[r["data-kind"]] += int(r["data-bytes"])
    assert parts["file header"] == 24
    assert parts["metadata"] + parts["tokenizer vocabulary"] + parts.get("tokenizer merges", 0) == layout.metadata_bytes
    assert parts["tensor info"] == layout.tensor_info_bytes
    assert parts["padding"] == layout.padding_bytes == 8
    assert parts["tokenizer vocabulary"] > 0.99 * layout.metadata_bytes  # Gemma's 262,144 tokens are the header
    legend = legend_bytes(root)
    assert {q.type: q.n_bytes for q in report.quant} == {k: legend[k] for k in ("Q8_0", "Q5_0", "Q4_K", "Q6_K", "F32")}
    assert_every_byte_once(rects(root, "tensor") + rects(root, "part"), {gemma3_path.name: layout.file_size})


def test_padding_between_tensors_and_bytes_after_them(tmp_path):
    """Tensors whose sizes are not multiples of the alignment leave padding, drawn as such; bytes beyond the
    last tensor's padding are 'unexplained' (inspect notes them as possible damage)."""
    from test_formats_gguf import write_gguf

    tensors = {"y": np.zeros(5, np.float32), "blk.0.x": np.ones((3, 32), np.float32), "blk.0.z": np.ones(7, np.float32)}
    path = write_gguf(tmp_path / "small.gguf", tensors=tensors)
    regions = file_regions(resolve(path)).regions
    assert [(r.name, r.n_bytes) for r in regions if r.name == "padding"][-2:] == [("padding", 12), ("padding", 4)]
    assert sum(r.n_bytes for r in regions) == path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0" * 100)
    root = svg_tree(layout_map(file_regions(resolve(path))))
    assert [int(r["data-bytes"]) for r in rects(root, "part") if r["data-kind"] == "unexplained bytes"] == [104]
    assert_every_byte_once(rects(root, "tensor") + rects(root, "part"), {path.name: path.stat().st_size})


def test_small_regions_are_visible_and_labelled_with_their_true_size(smollm2_map):
    header = next(b for b in smollm2_map.boxes if b.role == "part" and b.attrs["data-kind"] == "file header")
    assert header.w >= 40 and header.h >= 30 and header.enlarged  # 24 bytes: far below one pixel at scale
    texts = [t.text for t in smollm2_map.labels]
    assert "24 B · magic, version, counts" in texts
    norm = next(b for b in smollm2_map.boxes if b.attrs.get("data-name") == "output_norm.weight")
    assert norm.w * norm.h >= 100


def test_layers_are_grouped_in_file_order_and_the_map_is_not_too_tall(smollm2_map):
    captions = [t.text for t in smollm2_map.labels if t.text.startswith("blk.")]
    assert len(captions) == 30
    assert captions[:3] == ["blk.0", "blk.1", "blk.10"]  # the file sorts its layers by name, and the map says so
    assert any("sorts them as text" in t.text for t in smollm2_map.labels)
    assert smollm2_map.height < 1400  # 30 layers wrap into rows of six


def test_areas_are_proportional_to_bytes(smollm2_map):
    """Tensors drawn at scale (not enlarged) cover bytes / bytes_per_pixel square pixels, to 2%."""
    scaled = [b for b in smollm2_map.boxes if b.role == "tensor" and b.h > 20 and not b.enlarged]
    assert len(scaled) > 90  # token_embd and each layer's three FFN matrices
    for b in scaled:
        assert b.w * b.h == pytest.approx(int(b.attrs["data-bytes"]) / smollm2_map.bytes_per_pixel, rel=0.02)


def test_png_draws_the_same_layout(smollm2_map, tmp_path):
    path = tmp_path / "map.png"
    render_png(smollm2_map, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (PNG_SCALE * smollm2_map.width, PNG_SCALE * smollm2_map.height)
        embedding = next(b for b in smollm2_map.boxes if b.attrs.get("data-name") == "token_embd.weight")
        centre = (PNG_SCALE * (embedding.x + embedding.w / 2), PNG_SCALE * (embedding.y + embedding.h / 2))
        assert image.convert("RGB").getpixel(centre) == ImageColor.getrgb(TYPE_COLOURS["Q8_0"])


# -- safetensors ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_folder(tmp_path_factory) -> Path:
    """Two shards of a 4-layer model: norms in float32, matrices in bfloat16 and the head in float16. The
    safetensors writer puts float32 first, so each layer's norms lie apart from its matrices."""
    import torch

    from zoo import specs

    folder = tmp_path_factory.mktemp("sharded")
    g = torch.Generator().manual_seed(0)
    tensors = {
        "model.embed_tokens.weight": torch.randn(256, 64, generator=g).bfloat16(),
        "lm_head.weight": torch.randn(256, 64, generator=g).half(),
        "model.norm.weight": torch.ones(64),
    }
    for i in range(4):
        tensors[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(64)
        for name, shape in (("self_attn.q_proj", (64, 64)), ("self_attn.k_proj", (32, 64)), ("mlp.up_proj", (128, 64))):
            tensors[f"model.layers.{i}.{name}.weight"] = torch.randn(*shape, generator=g).bfloat16()
    specs._write_safetensors(tensors, folder, shards=2)  # the zoo's writer: model-0000k-of-00002 and the index
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def test_safetensors_shards_every_byte_and_dtype(sharded_folder):
    from safetensors import safe_open

    m = layout_map(file_regions(resolve(sharded_folder)))
    root = svg_tree(m)
    shards = sorted(sharded_folder.glob("model-*.safetensors"))
    assert len(shards) == 2
    assert_every_byte_once(rects(root, "tensor") + rects(root, "part"), {p.name: p.stat().st_size for p in shards})
    by_dtype: Counter = Counter()
    names = []
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            for name in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                by_dtype[f.get_slice(name).get_dtype()] += f.get_tensor(name).nbytes
                names.append(name)
    assert sorted(r["data-name"] for r in rects(root, "tensor")) == sorted(names)
    legend = legend_bytes(root)
    assert {k: legend[k] for k in by_dtype} == dict(by_dtype)
    # The same type has the same colour as in a GGUF map.
    fills = {r["data-kind"]: r["fill"] for r in rects(root, "tensor")}
    assert fills == {"F32": TYPE_COLOURS["F32"], "BF16": TYPE_COLOURS["BF16"], "F16": TYPE_COLOURS["F16"]}
    headers = [t.text for t in m.labels if "its header, then its tensors" in t.text]
    assert [h.split(",")[0] for h in headers] == [p.name for p in shards]
    assert any(t.text == "layers.0 (part 2)" for t in m.labels)  # norms first, matrices later


def test_a_split_gguf_maps_every_part(smollm2_path, tmp_path):
    from model_helpers import write_split

    parts = write_split(smollm2_path, tmp_path / "smollm2", 3)
    root = svg_tree(layout_map(file_regions(resolve(parts[0]))))
    assert_every_byte_once(rects(root, "tensor") + rects(root, "part"), {p.name: p.stat().st_size for p in parts})
    with GGUFFile(smollm2_path) as g:
        assert sorted(r["data-name"] for r in rects(root, "tensor")) == sorted(g.tensors)


def test_layer_of():
    assert layer_of("blk.12.attn_q.weight") == "blk.12"
    assert layer_of("model.layers.3.mlp.experts.7.up_proj.weight") == "model.layers.3"
    assert layer_of("encoder.layer.0.attention.self.query.weight") == "encoder.layer.0"
    assert layer_of("token_embd.weight") is None
    assert layer_of("model.norm.weight") is None


# -- the command ----------------------------------------------------------------------------------------


def test_cli_prints_the_report_then_writes_the_map(smollm2_path, tmp_path):
    path = tmp_path / "smollm2.svg"
    proc = run("inspect", str(smollm2_path), "--map", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "File layout" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1] == f"map of the file written to {path}"
    assert len(rects(ET.parse(path).getroot(), "tensor")) == 272


def test_cli_refuses_a_map_that_is_not_svg_or_png(smollm2_path, tmp_path):
    path = tmp_path / "smollm2.jpg"
    assert_user_error(run("inspect", str(smollm2_path), "--map", str(path)), "smollm2.jpg", ".svg", ".png")
    assert not path.exists()


def test_map_path_in_a_missing_folder(tmp_path):
    with pytest.raises(PellucidError, match="does not exist"):
        check_map_path(tmp_path / "nowhere" / "map.svg")
    assert check_map_path(tmp_path / "MAP.PNG").name == "MAP.PNG"
