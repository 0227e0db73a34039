import csv
import os
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgfeat.errors import ConfigError, SourceError
from imgfeat.sources import open_source, stable_id


def names(source):
    return sorted(Path(item.uri.split("#")[0]).name for item in source.list())


def read_all(source):
    items = source.list()
    return {item.uri: result for item, result in zip(items, source.read(items, 1 << 30))}


def test_folder_is_recursive_sorted_and_skips_hidden(blob_folder):
    (blob_folder / ".hidden.jpg").write_bytes(b"x")
    source = open_source(str(blob_folder))
    uris = [item.uri for item in source.list()]
    assert uris == sorted(uris)
    assert names(source) == sorted([f"img{i}.jpg" for i in range(6)] + ["deep.png"])
    assert all(item.id == stable_id(item.uri) for item in source.list())


def test_include_filter(blob_folder):
    assert names(open_source(str(blob_folder), include="*.png")) == ["deep.png"]


def test_ids_are_stable_across_listings(blob_folder):
    first = [(i.id, i.uri) for i in open_source(str(blob_folder)).list()]
    second = [(i.id, i.uri) for i in open_source(str(blob_folder)).list()]
    assert first == second and len({i for i, _ in first}) == len(first)


def test_glob(blob_folder):
    source = open_source(str(blob_folder / "**" / "*.png"))
    assert names(source) == ["deep.png"]
    assert names(open_source(str(blob_folder / "img[0-2].jpg"))) == ["img0.jpg", "img1.jpg", "img2.jpg"]


def test_file_url(blob_folder):
    assert len(open_source(f"file://{blob_folder}").list()) == 7


def test_text_list_with_relative_and_missing_paths(blob_folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{blob_folder}/img0.jpg\nblobs/img1.jpg\n\nblobs/missing.jpg\n")
    source = open_source(str(listing))
    results = read_all(source)
    assert len(results) == 3
    missing = results[str(tmp_path / "blobs" / "missing.jpg")]
    assert missing.content is None and missing.error.startswith("not-found:")
    assert results[str(blob_folder / "img1.jpg")].content[:2] == b"\xff\xd8"


def test_csv_list_finds_path_column(blob_folder, tmp_path):
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "image_path"])
        writer.writerows([["a", str(blob_folder / "img0.jpg")], ["b", str(blob_folder / "img2.jpg")]])
    assert names(open_source(str(listing))) == ["img0.jpg", "img2.jpg"]
    with pytest.raises(ConfigError, match="path column"):
        open_source(str(listing), path_column="nope")


def test_parquet_binary_column_with_ids(blob_folder, tmp_path):
    files = sorted(blob_folder.glob("*.jpg"))
    table = pa.table({"sku": [f"sku-{i}" for i in range(len(files))],
                      "image": [f.read_bytes() for f in files]})
    path = tmp_path / "images.parquet"
    pq.write_table(table, path, row_group_size=2)  # several row groups
    source = open_source(str(path), id_column="sku")
    items = source.list()
    assert [i.id for i in items] == [f"sku-{i}" for i in range(len(files))]
    results = source.read(items, 1 << 30)
    assert [r.content for r in results] == [f.read_bytes() for f in files]
    # without an id column the ids are stable hashes of file#row
    auto = open_source(str(path)).list()
    assert auto[3].uri.endswith("#row=3") and auto[3].id == stable_id(auto[3].uri)


def test_parquet_path_column_and_dataset_folder(blob_folder, tmp_path):
    folder = tmp_path / "table"
    folder.mkdir()
    files = sorted(str(f) for f in blob_folder.glob("*.jpg"))
    pq.write_table(pa.table({"path": files[:3]}), folder / "a.parquet")
    pq.write_table(pa.table({"path": files[3:]}), folder / "b.parquet")
    source = open_source(str(folder))
    assert sorted(i.uri for i in source.list()) == files


def test_memory_filesystem_folder_and_glob(blob_folder):
    fs = fsspec.filesystem("memory")
    for f in blob_folder.glob("*.jpg"):
        fs.pipe(f"/bucket/photos/{f.name}", f.read_bytes())
    fs.pipe("/bucket/photos/nested/x.png", (blob_folder / "sub" / "deep.png").read_bytes())
    source = open_source("memory://bucket/photos")
    results = read_all(source)
    assert len(results) == 7 and all(r.content for r in results.values())
    assert all(uri.startswith("memory://") for uri in results)
    assert len(open_source("memory://bucket/photos/*.jpg").list()) == 6
    fs.rm("/bucket", recursive=True)


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="matches no files"):
        open_source(str(tmp_path / "*.jpg"))


def test_unreachable_storage_is_a_clear_error():
    with pytest.raises(SourceError):
        open_source("nosuchprotocol://bucket/photos")


def test_dangling_symlink_and_size_cap_are_error_rows(tmp_path, blob_folder):
    os.symlink(tmp_path / "gone.jpg", blob_folder / "dangling.jpg")
    results = read_all(open_source(str(blob_folder)))
    assert results[str(blob_folder / "dangling.jpg")].error.startswith("not-found:")
    source = open_source(str(blob_folder / "img0.jpg"))
    assert source.read(source.list(), 10)[0].error.startswith("too-large:")


def test_csv_list_id_column_gives_the_ids_and_plain_lists_refuse_it(blob_folder, tmp_path):
    files = sorted(str(f) for f in blob_folder.glob("*.jpg"))
    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "path"])
        writer.writerows([f"sku-{i}", f] for i, f in enumerate(files))
    items = open_source(str(listing), id_column="sku").list()
    assert [i.id for i in items] == [f"sku-{i}" for i in range(len(files))]
    assert [i.uri for i in items] == files
    plain = tmp_path / "list.txt"
    plain.write_text("\n".join(files))
    with pytest.raises(ConfigError, match="id-column"):
        open_source(str(plain), id_column="sku")
    with pytest.raises(ConfigError, match="id-column"):
        open_source(str(blob_folder), id_column="sku")


def test_a_registered_source_kind_is_all_a_new_source_needs(tmp_path):
    """A source that is not a file at all: generated images, named gen://N."""
    import io

    import numpy as np
    from PIL import Image

    import imgfeat
    from imgfeat.sources import SOURCE_KINDS, Item, ListedSource, ReadResult, SourceKind, register_source

    class Generated(ListedSource):
        def read(self, items, max_bytes, retry=None):
            out = []
            for item in items:
                buf = io.BytesIO()
                Image.fromarray(np.full((40, 60, 3), int(item.ref), np.uint8)).save(buf, "PNG")
                out.append(ReadResult(item, content=buf.getvalue()))
            return out

    def open_generated(request):
        count = int(request.spec[len("gen://"):])
        return Generated([Item(f"g{i}", f"gen://{i}", i * 10) for i in range(count)], {"kind": "generated"})

    kind = register_source(SourceKind("generated", lambda r: r.spec.startswith("gen://"), open_generated,
                                      must_exist=False), before="glob")
    try:
        report = imgfeat.extract("gen://5", tmp_path / "out", detector="none", embedder="test-tiny",
                                 workers=0, progress=False)
        assert report.ok == 5
        frame = imgfeat.read_features(tmp_path / "out").to_pandas()
        assert sorted(frame["id"]) == [f"g{i}" for i in range(5)] and (frame["width"] == 60).all()
    finally:
        SOURCE_KINDS.remove(kind)
