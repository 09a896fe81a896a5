"""The activation stores: one written spec (docs/activation-store.md), one writer, one reader.

A run's ``acts.zarr`` (a forward pass over every clip) and ``grads.zarr`` (forward and backward
over a class-balanced training subset) are Zarr v3 groups. This module and
``workflow_scripts.ragged`` are the only code that knows their array names: the capture passes
hand the writer quantities by meaning (``("lora", block, module, "a_out")``), and analyses ask
the reader for them the same way.

Layout (``{layer}`` 0..L is a residual-stream position: 0 the embedding output, l the output of
``encoder.layers[l-1]``; ``{block}`` 0..L-1 is ``encoder.layers[block]``):

* utterance-level arrays at the root, first axis ``utterance`` (open them with
  ``xarray.open_zarr(path)``: named dimensions, utterance ids as the index);
* frame-level arrays under ``frames/`` and ``lora/``: ragged, rows of the items listed in
  ``frames/utterance``, item i's rows ``frames/offsets[i]:frames/offsets[i+1]``.

:data:`SPEC` lists every array; ``tests/test_capture_store.py`` checks that docs/activation-store.md
lists the same ones and that a written store obeys them (:func:`validate_store`).
"""

from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workflow_scripts.atomic import atomic_path
from workflow_scripts.errors import InputError
from workflow_scripts.ragged import ArrayAppender, RaggedArrays, chunk_rows_for, item_rows

SPEC_VERSION = 1
KINDS = ("acts", "grads")
FRAME_DTYPES = ("float16", "float32")
#: The layer-contribution statistics (paper 3.1): x the block's residual input, a its attention
#: output, m its MLP output; each is summed over the clip's frames (divide by ``frames``).
CONTRIBUTION_STATISTICS = ("attn_ratio", "mlp_ratio", "layer_ratio", "attn_cos", "mlp_cos", "layer_cos")
POOLED = ("resid", "normed", "attn", "mlp")
STRING = np.dtypes.StringDType()  # Zarr's variable-length UTF-8 (fixed-width numpy strings have no v3 spec)
LORA_QUANTITIES = {"acts": ("a_out", "b_out"), "grads": ("a_out", "b_out", "a_grad", "b_grad")}


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store: ``path`` may hold ``{layer}``, ``{block}``, ``{module}``; ``dtype``
    ``frame`` means the store's ``frame_dtype`` attribute, ``string`` a variable-length string."""

    path: str
    kinds: tuple[str, ...]
    dims: tuple[str, ...]
    dtype: str
    meaning: str


SPEC = (
    # utterance-level, at the root
    ArraySpec("utterance", KINDS, ("utterance",), "string", "utterance id (the index)"),
    ArraySpec("layer", KINDS, ("layer",), "int64", "residual-stream position 0..L"),
    ArraySpec("block", KINDS, ("block",), "int64", "encoder block 0..L-1"),
    ArraySpec("class", KINDS, ("class",), "string", "class names, in label-index order"),
    ArraySpec("statistic", ("acts",), ("statistic",), "string", "names of the contribution statistics"),
    ArraySpec("speaker", KINDS, ("utterance",), "string", "speaker"),
    ArraySpec("split", KINDS, ("utterance",), "string", "train, val or test in the run's fold"),
    ArraySpec("label", KINDS, ("utterance",), "int64", "true class index"),
    ArraySpec("prediction", KINDS, ("utterance",), "int64", "argmax of logits"),
    ArraySpec("logits", KINDS, ("utterance", "class"), "float32", "the classifier's logits"),
    ArraySpec("loss", ("grads",), ("utterance",), "float32", "cross-entropy on the true label"),
    ArraySpec("n_frames", KINDS, ("utterance",), "int64",
              "encoder frames pooled over: the clip's real frames (1500 under legacy)"),
    ArraySpec("resid", ("acts",), ("utterance", "layer", "hidden"), "float32",
              "mean of the residual stream over the frames"),
    ArraySpec("normed", ("acts",), ("utterance", "layer", "hidden"), "float32",
              "mean of the final encoder LayerNorm applied to each frame of the residual stream"),
    ArraySpec("attn", ("acts",), ("utterance", "block", "hidden"), "float32",
              "mean of the block's self-attention output (before the residual add)"),
    ArraySpec("mlp", ("acts",), ("utterance", "block", "hidden"), "float32",
              "mean of the block's MLP output (fc2, before the residual add)"),
    ArraySpec("contribution", ("acts",), ("utterance", "block", "statistic"), "float64",
              "per-frame ratios and cosines, summed over the frames"),
    # frame-level, ragged
    ArraySpec("frames/utterance", KINDS, ("item",), "string", "the utterances with frame-level rows, in row order"),
    ArraySpec("frames/offsets", KINDS, ("item_edge",), "int64", "item i is rows offsets[i]:offsets[i+1]"),
    ArraySpec("frames/resid/{layer}", KINDS, ("frame", "hidden"), "frame", "the residual stream"),
    ArraySpec("lora/{block}/{module}/a_out", KINDS, ("frame", "rank"), "frame", "U = A x (x the module's input)"),
    ArraySpec("lora/{block}/{module}/b_out", KINDS, ("frame", "out"), "frame", "V = B U, unscaled"),
    ArraySpec("lora/{block}/{module}/a_grad", ("grads",), ("frame", "rank"), "float32", "d loss / d U"),
    ArraySpec("lora/{block}/{module}/b_grad", ("grads",), ("frame", "out"), "float32", "d loss / d V"),
)

#: Attributes every store carries (a run's identity, the model's shape and the capture settings).
REQUIRED_ATTRIBUTES = (
    "spec_version", "kind", "run", "dataset", "protocol", "model", "method", "targets", "rank", "alpha",
    "seed", "fold", "legacy", "n_layers", "d_model", "modules", "frame_dtype", "resid_layers",
    "lora_b_blocks", "config_hash", "provenance",
)


def spec_for(kind: str) -> list[ArraySpec]:
    return [spec for spec in SPEC if kind in spec.kinds]


def _spec(path: str) -> ArraySpec:
    return next(spec for spec in SPEC if spec.path == path)


def resid_frames_path(layer: int) -> str:
    return f"frames/resid/{layer}"


def lora_path(block: int, module: str, quantity: str) -> str:
    return f"lora/{block}/{module}/{quantity}"


@dataclass(frozen=True)
class StoreShape:
    """What fixes a store's arrays: the model's depth and width, the classes, the adapted modules
    (``(block, module) -> (rank, out_features)``) and which frame-level arrays to keep."""

    kind: str
    n_layers: int
    d_model: int
    classes: tuple[str, ...]
    modules: dict
    resid_layers: tuple[int, ...]
    lora_b_blocks: tuple[int, ...]
    frame_dtype: str

    def frame_arrays(self) -> dict[tuple, tuple[str, tuple[int, ...], str, tuple[str, ...]]]:
        """Frame-level quantities: key -> (path, row shape, dtype, dims). Keys are
        ``("resid", layer)`` and ``("lora", block, module, quantity)``."""
        arrays = {}
        for layer in self.resid_layers:
            arrays[("resid", layer)] = (resid_frames_path(layer), (self.d_model,), _spec("frames/resid/{layer}"))
        for (block, module), (rank, out_features) in sorted(self.modules.items()):
            for quantity in LORA_QUANTITIES[self.kind]:
                if quantity.startswith("b_") and block not in self.lora_b_blocks:
                    continue
                width = rank if quantity.startswith("a_") else out_features
                arrays[("lora", block, module, quantity)] = (
                    lora_path(block, module, quantity), (width,), _spec(f"lora/{{block}}/{{module}}/{quantity}"))
        return {key: (path, row_shape, self.frame_dtype if spec.dtype == "frame" else spec.dtype, spec.dims)
                for key, (path, row_shape, spec) in arrays.items()}


class CaptureStoreWriter:
    """Stream a capture into a new store; it appears at ``path`` only when the ``with`` succeeds.

    Per batch, :meth:`append_utterances` takes the utterance-level arrays (keys as in :data:`SPEC`)
    and :meth:`append_frames` one utterance's frame-level rows (keys as in
    :meth:`StoreShape.frame_arrays`).
    """

    def __init__(self, path: str | Path, shape: StoreShape, attrs: dict):
        if shape.kind not in KINDS:
            raise ValueError(f"unknown store kind {shape.kind!r}")
        if shape.frame_dtype not in FRAME_DTYPES:
            raise InputError(f"capture.frame_dtype: {shape.frame_dtype!r} is not one of {list(FRAME_DTYPES)}")
        self.path, self.shape = Path(path), shape
        self.attrs = {
            **attrs, "spec_version": SPEC_VERSION, "kind": shape.kind, "n_layers": shape.n_layers,
            "d_model": shape.d_model, "modules": sorted({module for _, module in shape.modules}),
            "frame_dtype": shape.frame_dtype, "resid_layers": list(shape.resid_layers),
            "lora_b_blocks": list(shape.lora_b_blocks),
        }
        self.frame_items: list[str] = []

    def __enter__(self) -> "CaptureStoreWriter":
        import zarr

        self._atomic = atomic_path(self.path, directory=True)
        self._group = zarr.open_group(str(self._atomic.__enter__()), mode="w", zarr_format=3)
        try:
            self._create_arrays()
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        return self

    def _create_arrays(self) -> None:
        shape, group = self.shape, self._group
        widths = {"layer": shape.n_layers + 1, "block": shape.n_layers, "hidden": shape.d_model,
                  "class": len(shape.classes), "statistic": len(CONTRIBUTION_STATISTICS)}
        coordinates = {
            "layer": np.arange(shape.n_layers + 1), "block": np.arange(shape.n_layers),
            "class": np.array(shape.classes, dtype=STRING), "statistic": np.array(CONTRIBUTION_STATISTICS, dtype=STRING),
        }
        self._utterance: dict[str, ArrayAppender] = {}
        for spec in spec_for(shape.kind):
            if "/" in spec.path:
                continue
            if spec.path in coordinates:
                group.create_array(spec.path, data=coordinates[spec.path], dimension_names=list(spec.dims))
                continue
            row_shape = tuple(widths[dim] for dim in spec.dims[1:])
            dtype = STRING if spec.dtype == "string" else spec.dtype
            self._utterance[spec.path] = ArrayAppender(
                group, spec.path, row_shape, dtype,
                chunk_rows_for(row_shape, "float32", most=4096), spec.dims)
        self._frames = RaggedArrays(group)
        for path, row_shape, dtype, dims in shape.frame_arrays().values():
            # Uncompressed: Whisper's activations and gradients compress by 4-11 % (zstd, measured
            # on Whisper-base), which cost a third of the write time; chunks of zeros (lora_init's
            # B side) are not written at all either way.
            self._frames.add(path, row_shape, dtype, dimension_names=dims, compressed=False)

    def append_utterances(self, arrays: dict[str, np.ndarray]) -> None:
        """One batch of utterance-level rows: every root array of the store's kind."""
        if arrays.keys() != self._utterance.keys():
            raise ValueError(f"a batch needs {sorted(self._utterance)}, got {sorted(arrays)}")
        for name, rows in arrays.items():
            self._utterance[name].append(rows)

    def append_frames(self, utt_id: str, rows: dict[tuple, np.ndarray]) -> None:
        """One utterance's frame-level rows, by :meth:`StoreShape.frame_arrays` key."""
        paths = self.shape.frame_arrays()
        if rows.keys() != paths.keys():
            raise ValueError(f"{utt_id}: frame rows needed for {sorted(paths, key=str)}, got {sorted(rows, key=str)}")
        self._frames.append({paths[key][0]: value for key, value in rows.items()}, utt_id)
        self.frame_items.append(utt_id)

    def __exit__(self, kind, error, trace) -> bool:
        if kind is None:
            try:
                self._finish()
            except BaseException:
                self._atomic.__exit__(*sys.exc_info())  # removes the temporary folder
                raise
        return self._atomic.__exit__(kind, error, trace)

    def _finish(self) -> None:
        import zarr

        for appender in self._utterance.values():
            appender.close()
        self._frames.close("frames/offsets")
        items = np.array(self.frame_items, dtype=STRING)
        self._group.create_array("frames/utterance", data=items, chunks=(max(len(items), 1),),
                                 dimension_names=["item"])
        self._group.attrs.update(self.attrs)
        with warnings.catch_warnings():
            # Consolidated metadata is not (yet) in the Zarr v3 spec; xarray and zarr-python read it,
            # and it lets xarray.open_zarr open a store without a warning.
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(self._group.store)


class CaptureStore:
    """Read a store written by :class:`CaptureStoreWriter` (``kind`` checks which one it is, and
    ``run`` that it is that run's: a store of another run, model or dataset is refused)."""

    def __init__(self, path: str | Path, kind: str | None = None, run: str | None = None):
        import zarr

        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise InputError(f"{self.path} is not an activation store (no zarr.json): run the capture rules")
        self.group = zarr.open_group(str(self.path), mode="r")
        self.attrs = dict(self.group.attrs)
        if self.attrs.get("spec_version") != SPEC_VERSION:
            raise InputError(f"{self.path}: store spec version {self.attrs.get('spec_version')}, this code reads "
                             f"{SPEC_VERSION}; rerun the capture rules")
        if kind is not None and self.attrs["kind"] != kind:
            raise InputError(f"{self.path} is a {self.attrs['kind']} store, not {kind}")
        if run is not None and self.attrs["run"] != run:
            raise InputError(f"{self.path} holds run {self.attrs['run']}, not {run}")
        self.kind = self.attrs["kind"]
        self.n_layers = int(self.attrs["n_layers"])
        self.utt_ids = self.group["utterance"][:].tolist()
        self.classes = self.group["class"][:].tolist()
        self.frame_items = self.group["frames/utterance"][:].tolist()
        self.frame_offsets = self.group["frames/offsets"][:]

    def __len__(self) -> int:
        return len(self.utt_ids)

    def utterances(self):
        """A DataFrame of the utterance-level scalars (utt_id, speaker, split, label, ...)."""
        import pandas as pd

        names = ["speaker", "split", "label", "prediction", "n_frames"] + (["loss"] if self.kind == "grads" else [])
        table = {"utt_id": self.utt_ids}
        for name in names:
            values = self.group[name][:]
            table[name] = values.astype(object) if values.dtype.kind in "OTU" else values
        return pd.DataFrame(table)

    def logits(self) -> np.ndarray:
        return self.group["logits"][:]

    def pooled(self, quantity: str) -> np.ndarray:
        """``resid``/``normed`` ``[utterance, layer 0..L, hidden]``, ``attn``/``mlp`` ``[utterance, block, hidden]``."""
        if quantity not in POOLED:
            raise KeyError(f"pooled quantity {quantity!r}: choose from {list(POOLED)}")
        return self.group[quantity][:]

    def contribution(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(sums [utterance, block, statistic], n_frames [utterance], statistic names)``."""
        return self.group["contribution"][:], self.group["n_frames"][:], list(CONTRIBUTION_STATISTICS)

    def dataset(self):
        """The utterance-level arrays as an ``xarray.Dataset`` (dask-backed, named dimensions)."""
        import xarray

        return xarray.open_zarr(str(self.path))

    def adapted(self) -> list[tuple[int, str]]:
        """``(block, module)`` of every adapted module with frame-level arrays."""
        if "lora" not in self.group:
            return []
        return sorted((int(block), module) for block, group in self.group["lora"].groups()
                      for module, _ in group.groups())

    def frame_array(self, key: tuple):
        """The Zarr array of a frame-level quantity: ``("resid", layer)`` or
        ``("lora", block, module, quantity)``; rows follow :attr:`frame_offsets`."""
        path = resid_frames_path(key[1]) if key[0] == "resid" else lora_path(*key[1:])
        if path not in self.group:
            raise KeyError(f"{self.path} has no {path} (frame-level layers kept: {self.attrs['resid_layers']}, "
                           f"B outputs at blocks {self.attrs['lora_b_blocks']})")
        return self.group[path]

    def frames(self, key: tuple, item: int | None = None) -> np.ndarray:
        """Every row of a frame-level quantity, or item ``item``'s rows."""
        array = self.frame_array(key)
        return array[:] if item is None else item_rows(array, self.frame_offsets, item)


def validate_store(path: str | Path) -> list[str]:
    """Where the store at ``path`` departs from :data:`SPEC`; an empty list if nowhere."""
    with warnings.catch_warnings():
        # Snakemake marks a directory output with a .snakemake_timestamp file; Zarr would warn about it.
        warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp is not recognized")
        return _departures(path)


def _departures(path: str | Path) -> list[str]:
    import zarr

    group = zarr.open_group(str(path), mode="r", use_consolidated=False)  # what is on disk
    attrs = dict(group.attrs)
    problems = [f"attribute {name} is missing" for name in REQUIRED_ATTRIBUTES if name not in attrs]
    kind = attrs.get("kind")
    if kind not in KINDS:
        return problems + [f"kind {kind!r} is not one of {KINDS}"]
    found = {name: array for name, array in group.arrays()}
    found.update({f"frames/{name}": array for name, array in group["frames"].arrays()} if "frames" in group else {})
    if "frames" in group and "resid" in group["frames"]:
        found.update({f"frames/resid/{n}": a for n, a in group["frames/resid"].arrays()})
    for block, block_group in (group["lora"].groups() if "lora" in group else []):
        for module, module_group in block_group.groups():
            found.update({f"lora/{block}/{module}/{n}": a for n, a in module_group.arrays()})
    n_frames = None
    for name, array in found.items():
        template = re.sub(r"^lora/\d+/[A-Za-z0-9_]+/", "lora/{block}/{module}/", re.sub(r"^frames/resid/\d+$",
                                                                                         "frames/resid/{layer}", name))
        matches = [spec for spec in spec_for(kind) if spec.path == template]
        if not matches:
            problems.append(f"{name} is not in the spec of a {kind} store")
            continue
        spec = matches[0]
        dims = tuple(array.metadata.dimension_names or ())
        if dims != spec.dims:
            problems.append(f"{name}: dimensions {dims}, spec {spec.dims}")
        want = attrs.get("frame_dtype") if spec.dtype == "frame" else spec.dtype
        kind_ok = array.dtype.kind in "OTU" if want == "string" else array.dtype == np.dtype(want)
        if not kind_ok:
            problems.append(f"{name}: dtype {array.dtype}, spec {want}")
        if dims and dims[0] == "frame":
            n_frames = array.shape[0] if n_frames is None else n_frames
            if array.shape[0] != n_frames:
                problems.append(f"{name}: {array.shape[0]} rows, other frame-level arrays have {n_frames}")
    for spec in spec_for(kind):
        if "{" not in spec.path and spec.path not in found:
            problems.append(f"{spec.path} is missing")
    if "frames/offsets" in found and n_frames is not None and int(found["frames/offsets"][-1]) != n_frames:
        problems.append(f"frames/offsets ends at {int(found['frames/offsets'][-1])}, the frame arrays have {n_frames} rows")
    return problems
