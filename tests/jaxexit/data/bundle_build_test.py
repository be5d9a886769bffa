"""Tests for jaxexit.data.bundle_build on small synthetic data dirs."""

import io
import lzma
import tarfile

from jaxexit.data import bundle_build, bundled


def _archive(path, split, names):
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(
    path, "w:gz", format=tarfile.PAX_FORMAT, pax_headers={"comment": "abc123"}
  ) as tar:
    for folder in [split] + sorted({n.split("/")[1] for n in names}):
      info = tarfile.TarInfo(folder if folder == split else f"{split}/{folder}")
      info.type = tarfile.DIRTYPE
      tar.addfile(info)
    for name in names:
      info = tarfile.TarInfo(name)
      info.size, info.mtime = len(name), 1554014139
      tar.addfile(info, io.BytesIO(name.encode()))


def test_cifar_keeps_the_first_members_of_each_class(tmp_path, monkeypatch):
  monkeypatch.setitem(bundled.CIFAR_PER_CLASS, "test", 2)
  names = [f"test/{c}/{i:04d}.jpg" for c in ("cat", "dog") for i in range(3)]
  _archive(
    tmp_path / "data" / "cifar10" / "cifar10_test_jpg.tar.gz", "test", names
  )
  out = bundle_build.build_cifar("test", tmp_path / "data", tmp_path / "out")
  with tarfile.open(out) as tar:
    assert tar.pax_headers["comment"] == "abc123"
    members = tar.getmembers()
    kept = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}
  assert [m.name for m in members if m.isdir()] == [
    "test",
    "test/cat",
    "test/dog",
  ]
  assert kept == {n: n.encode() for n in names if not n.endswith("2.jpg")}
  assert all(m.mtime == 1554014139 for m in members if m.isfile())
  assert out.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header time 0


def test_glue_is_compressed_losslessly(tmp_path):
  folder = tmp_path / "data" / "glue" / "SST-2"
  folder.mkdir(parents=True)
  texts = {
    "train.tsv": b'sentence\tlabel\na " b\t1\n',
    "dev.tsv": b"sentence\tlabel\nc\t0\n",
  }
  for name, data in texts.items():
    (folder / name).write_bytes(data)
  digests = bundle_build.build_glue("sst2", tmp_path / "data", tmp_path / "out")
  assert sorted(digests) == ["glue/SST-2/dev.tsv", "glue/SST-2/train.tsv"]
  for name, data in texts.items():
    packed = tmp_path / "out" / "glue" / "SST-2" / f"{name}.xz"
    assert lzma.decompress(packed.read_bytes()) == data
