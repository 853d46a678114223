"""`pellucid inspect MODEL --map FILE.svg|FILE.png`: a picture of where a model file's bytes go.

Three steps, each plain data in and out:

1. `file_regions(model)` walks the file (or each safetensors shard) and returns every byte range in file order:
   a GGUF file's fixed header, metadata, tokenizer vocabulary and merges, tensor-info table and alignment
   padding; a safetensors shard's length prefix and JSON header; then every tensor and any gap between two.
   Their sizes add up to the size of the files.
2. `layout_map(source)` groups the regions (each file's header; runs of model-level tensors such as the
   embedding; one cell per layer, `blk.N` or `model.layers.N`) and places each region as a rectangle whose
   area is proportional to its bytes, read like a page: left to right, top to bottom, in file order. Regions
   too small to see are drawn at a minimum size with a dashed outline; their labels give the true size.
3. `render_svg(m)` writes the shapes as SVG text; `render_png(m, path)` draws the same shapes with Pillow.

A storage type has the same colour in every map (TYPE_COLOURS), so two maps can be compared at a glance.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from pellucid.errors import PellucidError
from pellucid.formats.gguf import GGUFFile
from pellucid.memory import format_bytes
from pellucid.store import ResolvedModel

MAP_SUFFIXES = (".svg", ".png")

# -- what colours what ----------------------------------------------------------------------------------

# Parts of a file that are not tensors.
FILE_HEADER = "file header"
METADATA = "metadata"
VOCABULARY = "tokenizer vocabulary"
MERGES = "tokenizer merges"
CHAT_TEMPLATE = "chat template"
TENSOR_INFO = "tensor info"
JSON_HEADER = "JSON header"
PADDING = "padding"
UNEXPLAINED = "unexplained bytes"

# One colour per storage type, the same in every map: floats in blues, 8-bit in greens, 6-bit yellow-green,
# 5-bit ambers, 4-bit reds, 3- and 2-bit purples, below that browns; the file's own structure in greys.
TYPE_COLOURS = {
    "F64": "#1f3a68",
    "F32": "#3b6fb6",
    "F16": "#7aaee0",
    "BF16": "#3fa7a3",
    "F8_E4M3": "#8fd0cb",
    "F8_E5M2": "#b5e0dc",
    "Q8_0": "#2e9e5b",
    "Q8_1": "#55b86f",
    "Q8_K": "#1e7a45",
    "Q6_K": "#a8c545",
    "Q5_0": "#f0b429",
    "Q5_1": "#e8952a",
    "Q5_K": "#f5cf5a",
    "Q4_0": "#e4572e",
    "Q4_1": "#d1495b",
    "Q4_K": "#b8323f",
    "IQ4_NL": "#e07a8f",
    "IQ4_XS": "#c25b7a",
    "MXFP4": "#ff8a65",
    "Q3_K": "#8e5ba8",
    "IQ3_XXS": "#a77cc0",
    "IQ3_S": "#7b4f9c",
    "Q2_K": "#5e4b8b",
    "IQ2_XXS": "#7d6fb0",
    "IQ2_XS": "#6c5ca3",
    "IQ2_S": "#8a7fc2",
    "IQ1_S": "#8d6e63",
    "IQ1_M": "#a1887f",
    "TQ1_0": "#795548",
    "TQ2_0": "#bcaaa4",
    "I8": "#9e9d24",
    "U8": "#c0ca33",
    "I16": "#827717",
    "I32": "#6d7a2b",
    "I64": "#556b2f",
    "BOOL": "#b0bec5",
    FILE_HEADER: "#4b4f58",
    METADATA: "#aab3c2",
    JSON_HEADER: "#aab3c2",
    VOCABULARY: "#dcc8a4",
    MERGES: "#c5a677",
    CHAT_TEMPLATE: "#e6dcc8",
    TENSOR_INFO: "#8792a6",
    PADDING: "#f1f1ee",
    UNEXPLAINED: "#ff4fa0",
}
# For a type the table does not name: picked by a checksum of its name, so it too is stable across maps.
FALLBACK_COLOURS = ("#5d8aa8", "#c08552", "#6a994e", "#bc4749", "#6d597a", "#4d908e", "#f4a261", "#8d99ae")

INK = "#22252b"  # text
FAINT = "#6b7079"  # secondary text, ticks
BACKGROUND = "#fbfbf9"
FONT_FAMILY = "DejaVu Sans, Arial, Helvetica, sans-serif"  # the fallbacks are narrower, so labels still fit

# -- geometry, in pixels of the SVG (the PNG is drawn PNG_SCALE times larger) ------------------------------

WIDTH = 1200
MARGIN = 24
CONTENT = WIDTH - 2 * MARGIN
DATA_HEIGHT = 680  # the area of WIDTH x DATA_HEIGHT holds the whole file: this sets bytes per square pixel
MIN_BAND_HEIGHT = 36  # a band (the header, model-level tensors) is at least this tall, for two lines of label
GRID_COLUMNS = 6  # layers per row of the layer grid
GRID_GAP = 10
MIN_STRIP = 1.5  # a tensor in a layer cell is at least this tall (a norm's sliver)
MIN_OUTLINED = 6  # boxes narrower or shorter than this are drawn without an outline (it would hide the fill)
SECTION_GAP = 16
PNG_SCALE = 2
LABEL_SIZE = 11
SMALL_SIZE = 10
TINY_SIZE = 8


def colour(kind: str) -> str:
    if kind in TYPE_COLOURS:
        return TYPE_COLOURS[kind]
    return FALLBACK_COLOURS[zlib.crc32(kind.encode()) % len(FALLBACK_COLOURS)]


def text_colour(fill: str) -> str:
    """Dark text on light fills, white on dark ones (relative luminance, as WCAG computes it)."""
    r, g, b = (int(fill[i : i + 2], 16) / 255 for i in (1, 3, 5))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return INK if luminance > 0.45 else "#ffffff"


# Advance widths in DejaVu Sans, in ems, to within a few percent (measured with Pillow): the SVG is laid out
# without a font at hand, and a label must not spill out of its box.
NARROW_CHARACTERS = set("ijlt.,:;'|!()[] ·fr")
WIDE_CHARACTERS = set("mwMW@%")


def text_width(text: str, size: float, bold: bool = False) -> float:
    ems = sum(
        0.34 if c in NARROW_CHARACTERS else 0.92 if c in WIDE_CHARACTERS else 0.74 if c.isupper() else 0.62
        for c in text
    )
    return ems * size * (1.12 if bold else 1.0)


# -- 1. the byte ranges ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """One byte range of a file: a tensor, a part of a header, or a gap."""

    name: str  # the tensor's name, or the part's (one of the constants above)
    kind: str  # what colours it: the storage type of a tensor (Q4_K, BF16), else the part
    file: str
    offset: int  # in `file`
    n_bytes: int
    detail: str = ""  # a tensor's shape, a header part's count of keys or tokens
    is_tensor: bool = False
    n_elements: int = 0  # weights in a tensor


@dataclass
class MapSource:
    """What the map shows: the regions of every file, in file order, and what to call the whole."""

    name: str  # the file or folder name
    format: str  # "GGUF v3", "safetensors"
    files: list[tuple[str, int]]  # (name, size) in order
    regions: list[Region]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def n_tensors(self) -> int:
        return sum(r.is_tensor for r in self.regions)


def check_map_path(path: str | Path) -> Path:
    """The path a map is written to, checked before any work: .svg or .png, in a folder that exists."""
    path = Path(path)
    if path.suffix.lower() not in MAP_SUFFIXES:
        raise PellucidError(
            f"--map writes a picture named FILE.svg or FILE.png; {str(path)!r} ends in "
            f"{path.suffix or 'no extension'!r}. Name the file with .svg (for a browser) or .png."
        )
    if not path.parent.is_dir():
        raise PellucidError(f"cannot write the map to {path}: the folder {path.parent} does not exist")
    return path


def file_regions(model: ResolvedModel) -> MapSource:
    if model.kind == "gguf":
        return _gguf_regions(model.path)
    return _safetensors_regions(model.path)


# GGUF metadata keys that hold the tokenizer's vocabulary (one entry per token); the merges have a part of their own.
VOCABULARY_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")


def _metadata_part(key: str) -> str:
    if key in VOCABULARY_KEYS:
        return VOCABULARY
    if key == "tokenizer.ggml.merges":
        return MERGES
    if key.startswith("tokenizer.chat_template"):
        return CHAT_TEMPLATE
    return METADATA


def _gguf_regions(path: Path) -> MapSource:
    """Each file of the model (one, or every part of a gguf-split model) as its header parts and its tensors."""
    with GGUFFile(path) as g:
        regions = []
        for part in g.parts:
            name = part.path.name
            regions.append(Region(FILE_HEADER, FILE_HEADER, name, 0, _first_key_offset(part), "magic, version, counts"))
            for kind, keys in _runs(list(part.metadata_spans), _metadata_part):
                start, end = part.metadata_spans[keys[0]][0], part.metadata_spans[keys[-1]][1]
                regions.append(Region(kind, kind, name, start, end - start, _metadata_detail(part, kind, keys)))
            info_bytes = part.header_size - part.tensor_info_offset
            regions.append(
                Region(
                    TENSOR_INFO, TENSOR_INFO, name, part.tensor_info_offset, info_bytes, f"{len(part.tensors)} tensors"
                )
            )
            tensors = [
                Region(t.name, t.ggml_type.name, name, t.offset, t.n_bytes, _shape(t.shape), True, t.n_elements)
                for t in sorted(part.tensors.values(), key=lambda t: t.offset)
            ]
            regions += _with_gaps(tensors, name, part.header_size, part.file_size, part.alignment)
        files = [(part.path.name, part.file_size) for part in g.parts]
        return MapSource(g.path.name, f"GGUF v{g.version}", files, regions)


def _first_key_offset(g) -> int:
    """Where the metadata starts: after magic (4), version (4) and the two counts (8 each)."""
    return min((start for start, _ in g.metadata_spans.values()), default=g.tensor_info_offset)


def _metadata_detail(g, part: str, keys: list[str]) -> str:
    if part == VOCABULARY:
        return f"{len(g.metadata[keys[0]]):,} tokens"
    if part == MERGES:
        return f"{len(g.metadata[keys[0]]):,} merges"
    if part == CHAT_TEMPLATE:
        return f"{sum(len(g.metadata[k]) for k in keys):,} characters"
    return f"{len(keys)} key" + ("s" if len(keys) > 1 else "")


def _safetensors_regions(path: Path) -> MapSource:
    from pellucid.formats.safetensors import HFFolder  # brings torch: only for HF folders

    regions, files = [], []
    with HFFolder(path) as folder:
        for file, header in folder.headers.items():
            size = file.stat().st_size
            files.append((file.name, size))
            regions.append(Region(FILE_HEADER, FILE_HEADER, file.name, 0, 8, "length of the JSON"))
            json_detail = f"dtype, shape, offsets of {len(header.tensors)} tensors"
            regions.append(Region(JSON_HEADER, JSON_HEADER, file.name, 8, header.data_offset - 8, json_detail))
            tensors = [
                Region(t.name, t.dtype, file.name, t.offset, t.n_bytes, _shape(t.shape), True, t.n_elements)
                for t in sorted(header.tensors.values(), key=lambda t: (t.offset, t.n_bytes))
            ]
            regions += _with_gaps(tensors, file.name, header.data_offset, size)
    return MapSource(path.name, "safetensors", files, regions)


def _with_gaps(tensors: list[Region], file: str, start: int, end: int, alignment: int = 1) -> list[Region]:
    """The tensors with a region for every gap: alignment padding before and between them, and after the last
    one up to the next multiple of `alignment` (gguf-py's writer pads there too); anything beyond that is
    unexplained (nothing, in a well-formed file)."""
    out, cursor = [], start
    for t in tensors:
        if t.offset > cursor:
            out.append(Region(PADDING, PADDING, file, cursor, t.offset - cursor, "alignment"))
        out.append(t)
        cursor = max(cursor, t.offset + t.n_bytes)
    if end > cursor and end % alignment == 0 and end - cursor < alignment:
        out.append(Region(PADDING, PADDING, file, cursor, end - cursor, "alignment"))
    elif end > cursor:
        out.append(Region(UNEXPLAINED, UNEXPLAINED, file, cursor, end - cursor, "after the last tensor"))
    return out


def _runs(items: list, key) -> list[tuple]:
    """Consecutive items with the same key(item), as (key, [items])."""
    runs: list[tuple] = []
    for item in items:
        k = key(item)
        if runs and runs[-1][0] == k:
            runs[-1][1].append(item)
        else:
            runs.append((k, [item]))
    return runs


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(d) for d in shape)


# -- 2. grouping and placing ----------------------------------------------------------------------------

# The part of a tensor's name that names its layer: everything up to the first number ("blk.3",
# "model.layers.12", "encoder.layer.0"). Tensors without one (embeddings, the final norm) are model-level.
LAYER_PREFIX = re.compile(r"^((?:[^.]+\.)*?\d+)\.")


def layer_of(tensor_name: str) -> str | None:
    match = LAYER_PREFIX.match(tensor_name)
    return match.group(1) if match else None


@dataclass
class Group:
    """Regions drawn together: a file's header, a run of model-level tensors, or one layer."""

    kind: str  # "header", "tensors" or "layer"
    key: str  # the layer's name prefix ("blk.3"); the file name for a header
    regions: list[Region]
    part: int = 1  # a layer whose tensors are not all together in the file is drawn in parts: 2, 3, ...

    @property
    def n_bytes(self) -> int:
        return sum(r.n_bytes for r in self.regions)


def group_regions(regions: list[Region]) -> list[Group]:
    """Regions in file order -> groups in file order. Header parts and padding join the group before them;
    whatever follows the last tensor gets a group of its own, so it is not mistaken for part of a layer."""
    groups: list[Group] = []
    parts: dict[str, int] = {}  # layer -> parts so far
    for r in regions:
        last = groups[-1] if groups else None
        same_file = last is not None and last.regions[-1].file == r.file
        if r.is_tensor:
            layer = layer_of(r.name)
            kind, key = ("layer", layer) if layer else ("tensors", "")
            if same_file and (last.kind, last.key) == (kind, key):
                last.regions.append(r)
            else:
                parts[key] = parts.get(key, 0) + 1
                groups.append(Group(kind, key, [r], parts[key]))
        elif r.kind == UNEXPLAINED:
            groups.append(Group("tensors", "", [r]))
        elif same_file and (last.kind == "header" or r.kind == PADDING):
            last.regions.append(r)
        else:
            groups.append(Group("header", r.file, [r]))
    return groups


@dataclass
class Box:
    """A rectangle on the map."""

    x: float
    y: float
    w: float
    h: float
    fill: str
    role: str  # "tensor", "part" (a non-tensor region), "overview", "swatch", "scale"
    tooltip: str = ""
    attrs: dict[str, str] = field(default_factory=dict)  # data-* attributes in the SVG, for programs and tests
    enlarged: bool = False  # drawn larger than to scale so that it can be seen: dashed outline
    stroke: str = "#ffffff"


@dataclass
class Label:
    x: float
    y: float  # the baseline
    text: str
    size: float = LABEL_SIZE
    bold: bool = False
    anchor: str = "start"  # "start", "middle" or "end"
    fill: str = INK


@dataclass
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    stroke: str = FAINT
    width: float = 1.0


@dataclass
class LegendEntry:
    kind: str
    colour: str
    n_bytes: int
    n_tensors: int  # 0 for a file part
    n_elements: int


@dataclass
class FileMap:
    """The picture as plain data; both renderers draw exactly these shapes."""

    title: str
    width: float
    height: float
    source: MapSource
    bytes_per_pixel: float  # per square pixel, in the detailed map
    legend: list[LegendEntry]
    boxes: list[Box] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)


def layout_map(source: MapSource) -> FileMap:
    total = max(source.total_bytes, 1)
    m = FileMap(
        title=f"{source.name}: {format_bytes(total)} ({total:,} bytes)",
        width=WIDTH,
        height=0,
        source=source,
        bytes_per_pixel=total / (CONTENT * DATA_HEIGHT),
        legend=_legend(source.regions),
    )
    groups = group_regions(source.regions)
    y = _title(m, source, groups)
    y = _legend_block(m, y)
    y = _overview(m, groups, y)
    for section in _runs(groups, lambda g: g.kind == "layer"):
        is_grid, members = section
        if is_grid:
            y = _grid(m, members, y)
        else:
            for g in members:
                y = _band(m, g, y)
    m.height = math.ceil(y + MARGIN)
    return m


def _title(m: FileMap, source: MapSource, groups: list[Group]) -> float:
    y = MARGIN + 20
    m.labels.append(Label(MARGIN, y, m.title, 20, bold=True))
    n_layers = len({g.key for g in groups if g.kind == "layer"})
    facts = [source.format, f"{source.n_tensors} tensors", f"{n_layers} layers"]
    if len(source.files) > 1:
        facts.append(f"{len(source.files)} files")
    y += 22
    m.labels.append(Label(MARGIN, y, " · ".join(facts), 13, fill=FAINT))
    y += 18
    how = (
        "Each rectangle is one part of the file, its area proportional to its bytes, in file order: left to right, "
        "top to bottom. Dashed outlines and 1-pixel slivers are too small to see at scale and drawn larger; "
        "labels give true sizes."
    )
    m.labels.append(Label(MARGIN, y, how, SMALL_SIZE, fill=FAINT))
    return y + 18


def _legend(regions: list[Region]) -> list[LegendEntry]:
    """Totals per storage type (tensors, biggest first), then per file part, in the order they appear."""
    by_kind: dict[str, LegendEntry] = {}
    for r in regions:
        e = by_kind.setdefault(r.kind, LegendEntry(r.kind, colour(r.kind), 0, 0, 0))
        e.n_bytes += r.n_bytes
        e.n_tensors += r.is_tensor
        e.n_elements += r.n_elements
    types = sorted((e for e in by_kind.values() if e.n_tensors), key=lambda e: -e.n_bytes)
    parts = [e for e in by_kind.values() if not e.n_tensors]
    return types + parts


def _legend_block(m: FileMap, y: float) -> float:
    column = 285
    per_row = CONTENT // column
    for heading, entries in (
        ("Tensors by storage type", [e for e in m.legend if e.n_tensors]),
        ("The rest of the file", [e for e in m.legend if not e.n_tensors]),
    ):
        m.labels.append(Label(MARGIN, y + 10, heading, LABEL_SIZE, bold=True))
        y += 18
        for i, e in enumerate(entries):
            x = MARGIN + (i % per_row) * column
            row_y = y + (i // per_row) * 20
            m.boxes.append(
                Box(
                    x,
                    row_y,
                    14,
                    14,
                    e.colour,
                    "swatch",
                    tooltip=f"{e.kind}: {e.n_bytes:,} bytes",
                    attrs={"data-kind": e.kind, "data-bytes": str(e.n_bytes), "data-tensors": str(e.n_tensors)},
                    stroke="#c8c8c8",
                )
            )
            if e.n_tensors:
                bits = 8 * e.n_bytes / max(e.n_elements, 1)
                tensors = f"{e.n_tensors} tensor" + ("s" if e.n_tensors > 1 else "")
                text = f"{e.kind}: {format_bytes(e.n_bytes)}, {tensors}, {bits:.2f} bits/weight"
            else:
                text = f"{e.kind}: {format_bytes(e.n_bytes)}"
            m.labels.append(Label(x + 20, row_y + 11, text, LABEL_SIZE))
        y += math.ceil(len(entries) / per_row) * 20 + 6
    return _scale_square(m, y)


def _scale_square(m: FileMap, y: float) -> float:
    """A square holding a round number of bytes at the map's scale, so areas can be read as sizes."""
    target = (36 * 36) * m.bytes_per_pixel  # bytes in a 36-pixel square
    n_bytes = _round_bytes(target)
    side = math.sqrt(n_bytes / m.bytes_per_pixel)
    m.boxes.append(Box(MARGIN, y, side, side, "#d9dde3", "scale", attrs={"data-bytes": str(n_bytes)}, stroke=FAINT))
    text = f"= {format_bytes(n_bytes)}: the area of this square, at the scale of the map below"
    m.labels.append(Label(MARGIN + side + 8, y + side / 2 + 4, text, LABEL_SIZE))
    return y + side + SECTION_GAP


def _round_bytes(n: float) -> int:
    """The 1, 2 or 5 x a power of 1024-based unit (B, KiB, MiB, GiB) nearest below n."""
    unit = next(u for u in (1 << 30, 1 << 20, 1 << 10, 1) if n >= u or u == 1)
    mantissa = n / unit
    step = max((s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500) if s <= mantissa), default=1)
    return step * unit


def _overview(m: FileMap, groups: list[Group], y: float) -> float:
    """The whole file as one bar, strictly to scale along the byte offset, with tick marks."""
    total = m.source.total_bytes
    per_px = total / CONTENT
    m.labels.append(Label(MARGIN, y + 10, "The whole file along its byte offset", LABEL_SIZE, bold=True))
    y += 16
    height = 22
    offset = 0  # across files
    for g in groups:
        x = MARGIN + offset / per_px
        w = g.n_bytes / per_px
        dominant = max(g.regions, key=lambda r: r.n_bytes)
        name = _group_name(g)
        m.boxes.append(
            Box(x, y, w, height, colour(dominant.kind), "overview", f"{name}: {format_bytes(g.n_bytes)}", stroke="")
        )
        if w > text_width(name, SMALL_SIZE) + 8:
            m.labels.append(Label(x + 4, y + 15, name, SMALL_SIZE, fill=text_colour(colour(dominant.kind))))
        offset += g.n_bytes
    # Layer boundaries as thin white lines, file boundaries as dark ones.
    offset, file = 0, m.source.regions[0].file if m.source.regions else ""
    for g in groups:
        if g.regions[0].file != file:
            file = g.regions[0].file
            x = MARGIN + offset / per_px
            m.lines.append(Line(x, y - 3, x, y + height + 3, INK, 2))
        elif g.kind == "layer" and offset:
            x = MARGIN + offset / per_px
            m.lines.append(Line(x, y, x, y + height, BACKGROUND, 0.6))
        offset += g.n_bytes
    return _ticks(m, total, y + height)


def _ticks(m: FileMap, total: int, y: float) -> float:
    step = _round_bytes(total / 8)
    per_px = total / CONTENT
    k = 0
    while k * step <= total:
        x = MARGIN + k * step / per_px
        m.lines.append(Line(x, y, x, y + 5))
        anchor = "start" if k == 0 else "middle"
        text = "0" if k == 0 else format_bytes(k * step)
        if x + text_width(text, SMALL_SIZE) / 2 <= MARGIN + CONTENT or k == 0:
            m.labels.append(Label(x, y + 16, text, SMALL_SIZE, anchor=anchor, fill=FAINT))
        k += 1
    return y + 16 + SECTION_GAP + 6


def _group_name(g: Group) -> str:
    if g.kind == "header":
        return "header"
    if g.kind == "layer":
        return _layer_caption(g.key)
    biggest = max(g.regions, key=lambda r: r.n_bytes)
    return _short_name(biggest.name, "")


def _layer_caption(key: str) -> str:
    """'model.layers.12' -> 'layers.12'; 'blk.3' stays."""
    parts = key.split(".")
    return ".".join(parts[-2:])


def _short_name(name: str, layer: str) -> str:
    short = name[len(layer) + 1 :] if layer and name.startswith(layer + ".") else name
    return short.removesuffix(".weight") or name


def _region_lines(r: Region) -> tuple[str, str]:
    """The two lines of a region's label in a band: its name, then its type and size."""
    if r.is_tensor:
        return _short_name(r.name, ""), f"{r.kind} · {format_bytes(r.n_bytes)}"
    return r.name, f"{format_bytes(r.n_bytes)} · {r.detail}" if r.detail else format_bytes(r.n_bytes)


def _tooltip(r: Region) -> str:
    what = f"{r.kind}, {r.detail}" if r.is_tensor else r.detail
    return f"{r.name}\n{what}\n{format_bytes(r.n_bytes)} ({r.n_bytes:,} bytes) at byte {r.offset:,} of {r.file}"


def _region_box(r: Region, x: float, y: float, w: float, h: float, bytes_per_pixel: float) -> Box:
    attrs = {
        "data-name": r.name,
        "data-kind": r.kind,
        "data-bytes": str(r.n_bytes),
        "data-offset": str(r.offset),
        "data-file": r.file,
    }
    enlarged = w * h > 1.5 * r.n_bytes / bytes_per_pixel + 4  # a few pixels of rounding are not "enlarged"
    return Box(x, y, w, h, colour(r.kind), "tensor" if r.is_tensor else "part", _tooltip(r), attrs, enlarged)


def _band(m: FileMap, g: Group, y: float) -> float:
    """A file header or a run of model-level tensors, in rows: a region big enough to fill the width at the
    minimum height gets a row to itself; smaller neighbours share one, wrapping as words do."""
    if g.kind == "header":
        text = f"Header: {format_bytes(g.n_bytes)} before the first tensor"
        if len(m.source.files) > 1:
            text = f"{g.key}, {format_bytes(dict(m.source.files)[g.key])}: its header, then its tensors"
        m.labels.append(Label(MARGIN, y + 10, text, LABEL_SIZE, bold=True))
        y += 16
    full_row = MIN_BAND_HEIGHT * CONTENT * m.bytes_per_pixel  # bytes that fill a row at the minimum height
    rows: list[list[Region]] = []
    used = CONTENT  # width taken in the last row of small regions; CONTENT: start a new one
    for r in g.regions:
        if r.n_bytes >= full_row:
            rows.append([r])
            used = CONTENT
            continue
        width = _label_width(r)
        if used + width > CONTENT:
            rows.append([])
            used = 0.0
        rows[-1].append(r)
        used += width
    for row in rows:
        y = _band_row(m, row, y)
    return y + SECTION_GAP - 6


def _label_width(r: Region) -> float:
    """The narrowest box that holds a region's two-line label."""
    name, size = _region_lines(r)
    return max(text_width(name, LABEL_SIZE, bold=True), text_width(size, SMALL_SIZE)) + 10


def _band_row(m: FileMap, regions: list[Region], y: float) -> float:
    """One row of a band: each region as wide as its bytes need at the row's height, or as its label needs; the
    row is as short as it can be (MIN_BAND_HEIGHT at least) while its regions fit in the width."""
    minimums = [_label_width(r) for r in regions]
    height = max(MIN_BAND_HEIGHT, sum(r.n_bytes for r in regions) / (m.bytes_per_pixel * CONTENT))
    for _ in range(50):  # the labels' widths do not shrink with height: grow it until the row fits
        widths = [max(r.n_bytes / (m.bytes_per_pixel * height), w) for r, w in zip(regions, minimums)]
        if sum(widths) <= CONTENT + 0.5:
            break
        height *= sum(widths) / CONTENT
    x = MARGIN
    for r, w in zip(regions, widths):
        box = _region_box(r, x, y, w, height, m.bytes_per_pixel)
        m.boxes.append(box)
        name, size = _region_lines(r)
        ink = text_colour(box.fill)
        m.labels.append(Label(x + 5, y + 15, name, LABEL_SIZE, bold=True, fill=ink))
        m.labels.append(Label(x + 5, y + 29, size, SMALL_SIZE, fill=ink))
        x += w
    return y + height + 6


def _grid(m: FileMap, groups: list[Group], y: float) -> float:
    """Layers as cells in rows of GRID_COLUMNS, each cell's tensors stacked top to bottom in file order."""
    names = [g.key for g in groups]
    heading = f"{len(set(names))} layers, one cell each, in file order"
    numbers = [int(k.rsplit(".", 1)[1]) for k in names]
    if numbers != sorted(numbers):
        heading += ", which sorts them as text (1, 10, 11, ..., 2)" if numbers == sorted(numbers, key=str) else ""
    m.labels.append(Label(MARGIN, y + 10, heading, LABEL_SIZE, bold=True))
    y += 18
    # Fewer layers than columns: wider cells, so that a small model's cells do not grow tall and thin.
    columns = min(GRID_COLUMNS, len(groups))
    cell_w = (CONTENT - (columns - 1) * GRID_GAP) / columns
    for start in range(0, len(groups), columns):
        row = groups[start : start + columns]
        row_height = 0.0
        for col, g in enumerate(row):
            x = MARGIN + col * (cell_w + GRID_GAP)
            caption = _layer_caption(g.key) + (f" (part {g.part})" if g.part > 1 else "")
            m.labels.append(Label(x, y + 11, caption, LABEL_SIZE, bold=True))
            m.labels.append(Label(x + cell_w, y + 11, format_bytes(g.n_bytes), SMALL_SIZE, anchor="end", fill=FAINT))
            row_height = max(row_height, _cell(m, g, x, y + 15, cell_w))
        y += 15 + row_height + GRID_GAP
    return y + SECTION_GAP - GRID_GAP


def _cell(m: FileMap, g: Group, x: float, y: float, width: float) -> float:
    # Each tensor at scale, or MIN_STRIP tall: the slivers add to the cell's height rather than take from the others.
    heights = [max(r.n_bytes / (m.bytes_per_pixel * width), MIN_STRIP) for r in g.regions]
    for r, h in zip(g.regions, heights):
        box = _region_box(r, x, y, width, h, m.bytes_per_pixel)
        m.boxes.append(box)
        size = SMALL_SIZE if h >= 12 else TINY_SIZE if h >= 8 else 0
        if size:
            name = _short_name(r.name, g.key)
            amount = format_bytes(r.n_bytes)
            text = _fitting(width - 8, size, f"{name} · {r.kind} · {amount}", f"{name} · {amount}", name)
            if text:
                m.labels.append(Label(x + 4, y + h / 2 + size * 0.35, text, size, fill=text_colour(box.fill)))
        y += h
    return sum(heights)


def _fitting(width: float, size: float, *candidates: str) -> str:
    """The first candidate text that fits in `width`, or ''."""
    return next((t for t in candidates if text_width(t, size) <= width), "")


# -- 3. drawing -----------------------------------------------------------------------------------------


def render_svg(m: FileMap) -> str:
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{m.width:g}" height="{m.height:g}" '
        f'viewBox="0 0 {m.width:g} {m.height:g}" font-family="{FONT_FAMILY}">',
        f"<title>{escape(m.title)}</title>",
        f'<rect width="100%" height="100%" fill="{BACKGROUND}"/>',
    ]
    for b in m.boxes:
        attrs = "".join(f" {k}={quoteattr(v)}" for k, v in b.attrs.items())
        outlined = min(b.w, b.h) >= MIN_OUTLINED
        stroke = f' stroke="{b.stroke}" stroke-width="0.6"' if b.stroke and min(b.w, b.h) >= 3 else ""
        if b.enlarged and outlined:
            stroke = f' stroke="{text_colour(b.fill)}" stroke-width="1" stroke-dasharray="3 2"'
        shape = (
            f'<rect class="{b.role}" x="{b.x:.2f}" y="{b.y:.2f}" width="{b.w:.2f}" height="{b.h:.2f}" '
            f'fill="{b.fill}"{stroke}{attrs}'
        )
        out.append(f"{shape}><title>{escape(b.tooltip)}</title></rect>" if b.tooltip else f"{shape}/>")
    for ln in m.lines:
        out.append(
            f'<line x1="{ln.x1:.2f}" y1="{ln.y1:.2f}" x2="{ln.x2:.2f}" y2="{ln.y2:.2f}" '
            f'stroke="{ln.stroke}" stroke-width="{ln.width:g}"/>'
        )
    for t in m.labels:
        weight = ' font-weight="bold"' if t.bold else ""
        anchor = f' text-anchor="{t.anchor}"' if t.anchor != "start" else ""
        out.append(
            f'<text x="{t.x:.2f}" y="{t.y:.2f}" font-size="{t.size:g}" fill="{t.fill}"{weight}{anchor}>'
            f"{escape(t.text)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_png(m: FileMap, path: Path) -> None:
    from PIL import Image, ImageDraw

    s = PNG_SCALE
    image = Image.new("RGB", (math.ceil(m.width * s), math.ceil(m.height * s)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for b in m.boxes:
        x0, y0, x1, y1 = b.x * s, b.y * s, (b.x + b.w) * s, (b.y + b.h) * s
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), fill=b.fill)
        if b.enlarged and min(b.w, b.h) >= MIN_OUTLINED:
            _dashed_rectangle(draw, (x0, y0, x1 - 1, y1 - 1), text_colour(b.fill))
        elif b.stroke and min(b.w, b.h) >= 3:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=b.stroke, width=1)
    for ln in m.lines:
        draw.line((ln.x1 * s, ln.y1 * s, ln.x2 * s, ln.y2 * s), fill=ln.stroke, width=max(1, round(ln.width * s)))
    anchors = {"start": "ls", "middle": "ms", "end": "rs"}
    for t in m.labels:
        draw.text((t.x * s, t.y * s), t.text, fill=t.fill, font=_font(t.size * s, t.bold), anchor=anchors[t.anchor])
    image.save(path, format="PNG", optimize=True)


def _dashed_rectangle(draw, box, fill: str, dash: float = 6, gap: float = 4) -> None:
    x0, y0, x1, y1 = box
    for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = math.dist(a, b)
        t = 0.0
        while t < length:
            u = min(t + dash, length)
            start = (a[0] + (b[0] - a[0]) * t / length, a[1] + (b[1] - a[1]) * t / length)
            end = (a[0] + (b[0] - a[0]) * u / length, a[1] + (b[1] - a[1]) * u / length)
            draw.line((start, end), fill=fill, width=1)
            t = u + gap


_FONTS: dict[tuple[float, bool], object] = {}


def _font(size: float, bold: bool):
    """DejaVu Sans, the font the layout's widths assume; Pillow's own font where it is not installed."""
    from PIL import ImageFont

    key = (size, bold)
    if key not in _FONTS:
        try:
            _FONTS[key] = ImageFont.truetype("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf", size)
        except OSError:
            _FONTS[key] = ImageFont.load_default(size)
    return _FONTS[key]


# -- the command ----------------------------------------------------------------------------------------


def write_map(model: ResolvedModel, path: str | Path) -> Path:
    """Draw the map of `model`'s file(s) into `path` (.svg or .png); returns the path written."""
    path = check_map_path(path)
    m = layout_map(file_regions(model))
    if path.suffix.lower() == ".svg":
        path.write_text(render_svg(m), encoding="utf-8")
    else:
        render_png(m, path)
    return path
