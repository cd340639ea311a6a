from __future__ import annotations

import io
import os
import struct
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from aesop_loss._io import save_safetensors
from aesop_loss.resize import imresize, make_lr
from aesop_loss.train import data as data_mod
from aesop_loss.train.data import (
    CropDataset,
    DataError,
    ImageSet,
    RemoteArchive,
    fetch_archive,
    list_images,
    load_image,
    prepare_data,
)

from conftest import FIXTURES, IMAGES


@pytest.mark.parametrize(
    ("key", "src", "scale"),
    [
        ("random_down_x2", "random_chw", 1 / 2),
        ("random_down_x3", "random_chw", 1 / 3),
        ("random_down_x4", "random_chw", 1 / 4),
        ("astronaut_down_x2", "astronaut_crop_chw", 1 / 2),
        ("astronaut_down_x4", "astronaut_crop_chw", 1 / 4),
        ("random_up_x4", "random_chw", 4),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_imresize_matches_matlab(key, src, scale, dtype):
    ref = load_file(FIXTURES / "matlab_imresize.safetensors")
    x = ref[src][:, :9, :13] if key == "random_up_x4" else ref[src]
    out = imresize(x.to(dtype), scale)
    assert out.shape == ref[key].shape
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    assert float((out.double() - ref[key]).abs().max()) <= tol


def test_imresize_batched_and_differentiable():
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = imresize(x, 0.25)
    assert out.shape == (2, 3, 4, 4)
    out.sum().backward()
    assert x.grad is not None
    assert torch.allclose(out[1], imresize(x[1].detach(), 0.25))


def test_astronaut_fixture_crop_is_the_shared_image():
    img = load_image(IMAGES / "astronaut.png").double() / 255
    ref = load_file(FIXTURES / "matlab_imresize.safetensors")["astronaut_crop_chw"]
    assert torch.allclose(img[:, 100:196, 150:278], ref)


def test_crop_lr_equals_the_crop_of_the_full_image_lr():
    # each LR crop is cut from the MATLAB-bicubic LR of the whole image, borders included
    img = load_image(IMAGES / "astronaut.png")
    full = (make_lr(img.double() / 255, 4) * 255).round().to(torch.uint8)
    ds = CropDataset(ImageSet([IMAGES / "astronaut.png"]), crop=64, scale=4, seed=0, augment=False,
                     crops_per_image=6)  # fmt: skip
    hrs, lrs = ds[0]
    corners = img.unfold(1, 8, 4).unfold(2, 8, 4)  # (3, rows, cols, 8, 8): 4-aligned 8x8 corners
    for hr, lr in zip(hrs, lrs, strict=True):
        candidates = (corners == hr[:, None, None, :8, :8]).all(-1).all(-1).all(0).nonzero().tolist()
        (y, x), *_ = [
            (y, x) for y, x in candidates if torch.equal(img[:, 4 * y : 4 * y + 64, 4 * x : 4 * x + 64], hr)
        ]
        assert torch.equal(lr, full[:, y : y + 16, x : x + 16])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16", "CMYK"])
def test_load_image_any_mode(tmp_path, mode):
    img = Image.open(IMAGES / "chelsea.png")
    img = (
        img.convert("L").convert(mode) if mode == "I;16" else img.convert(mode)
    )  # Pillow < 9.1: no RGB -> I;16
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    out = load_image(path)
    assert out.shape == (3, 300, 451)
    assert out.dtype == torch.uint8


def test_jpeg_and_webp(tmp_path):
    assert load_image(IMAGES / "rocket.jpg").shape == (3, 427, 640)
    Image.open(IMAGES / "coffee.png").save(tmp_path / "c.webp")
    assert load_image(tmp_path / "c.webp").shape == (3, 400, 600)


def test_crops_are_aligned_deterministic_and_augmented():
    images = ImageSet(list_images(IMAGES))
    ds = CropDataset(images, crop=32, scale=4, seed=3, crops_per_image=2)
    hr, lr = ds[5]
    assert hr.shape == (2, 3, 32, 32)
    assert lr.shape == (2, 3, 8, 8)
    again = CropDataset(images, crop=32, scale=4, seed=3, crops_per_image=2)[5]
    assert torch.equal(hr, again[0])
    assert torch.equal(lr, again[1])
    # LR is the MATLAB bicubic of HR (up to the 8-bit rounding and border context)
    inner = imresize(hr.double() / 255, 0.25)[..., 1:-1, 1:-1]
    assert float((inner - lr.double()[..., 1:-1, 1:-1] / 255).abs().max()) < 0.02
    # every image is visited once per epoch
    assert sorted(ds.image_index(g) for g in range(len(ds))) == list(range(len(ds)))


def test_color_jitter_scales_hr_and_lr_channels_alike():
    images = ImageSet([p for p in list_images(IMAGES) if p.name in ("coffee.png", "astronaut.png")])
    plain = CropDataset(images, crop=32, scale=4, seed=1)
    jittered = CropDataset(images, crop=32, scale=4, seed=1, color_jitter=0.25)
    ratios = []
    for g in range(12):
        (hr0, lr0), (hr1, lr1) = plain[g], jittered[g]
        # the same crop, each channel scaled by one gain in HR and LR (up to rounding and clipping)
        keep0 = (hr0 > 20) & (hr0 < 200)
        gain = (hr1.float()[keep0].sum() / hr0.float()[keep0].sum()).item()
        ratios.append(gain)
        for c in range(3):
            k_hr, k_lr = keep0[0, c], (lr0[0, c] > 20) & (lr0[0, c] < 200)
            g_hr = hr1[0, c].float()[k_hr].sum() / hr0[0, c].float()[k_hr].sum()
            g_lr = lr1[0, c].float()[k_lr].sum() / lr0[0, c].float()[k_lr].sum()
            assert 0.74 <= g_hr <= 1.26
            assert abs(float(g_hr - g_lr)) < 0.01
    assert max(ratios) - min(ratios) > 0.05  # the gains vary from crop to crop
    again = CropDataset(images, crop=32, scale=4, seed=1, color_jitter=0.25)[7]
    assert torch.equal(again[0], jittered[7][0])  # deterministic per (seed, sample)
    assert torch.equal(CropDataset(images, crop=32, scale=4, seed=1, color_jitter=0.0)[3][0], plain[3][0])


def _png(pixels: torch.Tensor, path) -> None:
    """Save a (3, H, W) uint8 tensor as a PNG (without NumPy, which the package does not install)."""
    hwc = pixels.permute(1, 2, 0).contiguous()
    Image.frombytes("RGB", (hwc.shape[1], hwc.shape[0]), bytes(hwc.flatten().tolist())).save(path)


def test_paired_lr_folder(tmp_path):
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    img = load_image(IMAGES / "coffee.png")[:, :64, :64].contiguous()
    _png(img, hr_dir / "0001.png")
    lr = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)  # paired LR is used as given
    _png(lr, lr_dir / "0001x4.png")
    images = prepare_data(f"{hr_dir}:{lr_dir}", scale=4)
    assert images.lr == [lr_dir / "0001x4.png"]
    hr_c, lr_c = CropDataset(images, crop=64, scale=4, seed=0, augment=False)[0]
    assert torch.equal(hr_c[0], img)
    assert torch.equal(lr_c[0], lr)


def test_bad_files_are_skipped_with_one_warning_each(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "tiny.png").write_bytes((IMAGES / "brick.png").read_bytes())
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    with pytest.warns(UserWarning, match="skipping") as record:
        ds = CropDataset(ImageSet(list_images(tmp_path)), crop=32, scale=4, seed=0)
    messages = [str(w.message) for w in record]
    assert any("notes.png: not a readable image" in m for m in messages)
    assert any("small.png: 8x8 is smaller than the 32px crop" in m for m in messages)
    assert len(ds) == 1


@pytest.mark.parametrize("disk_cache_bytes", [0, None], ids=["ram", "disk-cache"])
def test_truncated_image_is_skipped_when_reached_and_other_samples_stay(tmp_path, disk_cache_bytes):
    data = (IMAGES / "gravel.png").read_bytes()
    good = tmp_path / "good"
    good.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (good / name).write_bytes((IMAGES / "grass.png").read_bytes() if name != "a.png" else data)
    (good / "c.png").write_bytes((IMAGES / "brick.png").read_bytes())
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (bad / name).write_bytes((good / name).read_bytes())
    (bad / "a.png").write_bytes(data[: len(data) // 3])  # the header is fine, the pixels are not

    def dataset(folder):
        cache = tmp_path / f"cache-{folder.name}"
        images = ImageSet(list_images(folder))
        return CropDataset(
            images, crop=32, scale=4, seed=0, cache_dir=cache, disk_cache_bytes=disk_cache_bytes
        )

    reference = dataset(good)
    ds = dataset(bad)  # start-up reads headers only: the damage is not seen yet
    assert ds.hr == [bad / "a.png", bad / "b.png", bad / "c.png"]
    with pytest.warns(UserWarning, match=r"a\.png: cannot be decoded \(image file is truncated") as seen:
        samples = [ds[g] for g in range(9)]
    assert len(seen) == 1  # once per process, not once per sample
    for g, (hr, _) in enumerate(samples):
        if ds.image_index(g) != 0:  # samples of the other images are what they would have been
            assert torch.equal(hr, reference[g][0])
        else:  # the bad image's samples read the next image in the list, with their own crop
            assert hr.shape == (1, 3, 32, 32)
    if disk_cache_bytes is None:  # the broken file never reaches the cache
        assert len(list((tmp_path / "cache-bad").glob("*.safetensors"))) == 2


def test_only_truncated_images_is_one_error(tmp_path):
    data = (IMAGES / "gravel.png").read_bytes()
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    ds = CropDataset(ImageSet(list_images(tmp_path)), crop=32, scale=4, seed=0)
    with (
        pytest.warns(UserWarning, match="cannot be decoded"),
        pytest.raises(DataError, match=r"none of the 2 images could be decoded"),
    ):
        ds[0]


def test_decompression_bomb_is_skipped_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 64x64 image now counts as a bomb
    Image.new("RGB", (64, 64), "gray").save(tmp_path / "bomb.png")
    Image.new("RGB", (20, 20), "gray").save(tmp_path / "fine.png")
    with pytest.warns(UserWarning, match=r"bomb\.png: not a readable image \(DecompressionBombError\)"):
        ds = CropDataset(ImageSet(list_images(tmp_path)), crop=16, scale=4, seed=0)
    assert ds.hr == [tmp_path / "fine.png"]


def test_pair_with_a_wrong_lr_size_is_skipped(tmp_path):
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    for name, lr_side in (("good", 16), ("bad", 20)):
        Image.new("RGB", (64, 64), "gray").save(hr_dir / f"{name}.png")
        Image.new("RGB", (lr_side, lr_side), "gray").save(lr_dir / f"{name}.png")
    images = prepare_data(f"{hr_dir}:{lr_dir}", scale=4)
    with pytest.warns(UserWarning, match=r"bad\.png: its LR .*bad\.png is 20x20, not 16x16"):
        ds = CropDataset(images, crop=32, scale=4, seed=0)
    assert ds.hr == [hr_dir / "good.png"]
    assert ds[0][1].shape == (1, 3, 8, 8)


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("F", [0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),  # float TIFF in [0, 1]
        ("I;16", [0, 257, 32768, 65535], [0, 1, 128, 255]),  # 16-bit PNG
        ("I", [0, 257, 32768, 65535], [0, 1, 128, 255]),  # 16-bit data in a 32-bit TIFF
        ("I", [0, 2**30, 2**31 - 1, 0], [0, 128, 255, 0]),  # 32-bit data: not all white
    ],
    ids=["float", "16-bit", "32-bit-holding-16", "32-bit"],
)
def test_float_and_16_bit_images_keep_their_values(tmp_path, mode, values, expected):
    if mode == "I;16":  # from its bytes: Pillow 9.0's putdata mangles I;16 values
        img = Image.frombytes(mode, (4, 1), struct.pack("<4H", *values))
    else:
        img = Image.new(mode, (4, 1))
        img.putdata(values)
    path = tmp_path / ("x.tif" if mode in ("F", "I") else "x.png")
    img.save(path)
    out = load_image(path)
    assert out.shape == (3, 1, 4)
    assert out[0, 0].tolist() == expected
    assert torch.equal(out[0], out[2])


def test_decoded_disk_cache(tmp_path):
    images = ImageSet(list_images(IMAGES)[:2])
    ds = CropDataset(images, crop=32, scale=4, seed=0, cache_dir=tmp_path, ram_cache_bytes=0)
    assert list(tmp_path.glob("*.safetensors")) == []  # nothing decoded at start-up
    first = ds[0]
    assert len(list(tmp_path.glob("*.safetensors"))) == 1  # the image that sample read
    again = CropDataset(images, crop=32, scale=4, seed=0, cache_dir=tmp_path, ram_cache_bytes=0)
    assert torch.equal(again[0][0], first[0])


def _folder_of_pngs(folder, n: int, size: tuple[int, int] = (64, 48)):
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", size, (i % 256, (7 * i) % 256, 50)).save(folder / f"{i:05d}.png")
    return ImageSet(list_images(folder))


def test_start_up_reads_headers_only_and_each_sample_decodes_one_image(tmp_path, monkeypatch):
    images = _folder_of_pngs(tmp_path / "data", 300)
    decoded = []
    real = data_mod.load_image
    monkeypatch.setattr(data_mod, "load_image", lambda p: decoded.append(p) or real(p))
    ds = CropDataset(images, crop=32, scale=4, seed=0, crops_per_image=4)
    assert decoded == []  # start-up reads headers, not pixels
    assert len(ds) == 300
    hr, _ = ds[5]
    assert hr.shape == (4, 3, 32, 32)  # several crops per decode
    assert decoded == [ds.hr[ds.image_index(5)]]
    assert torch.equal(ds[5][0], hr)
    assert len(decoded) == 1  # the second read came from the RAM cache


def test_ram_cache_is_bounded_and_shared_by_the_workers(tmp_path, monkeypatch):
    images = _folder_of_pngs(tmp_path / "data", 20)  # 64x48: 9,216 bytes decoded each
    ds = CropDataset(images, crop=32, scale=4, seed=0, ram_cache_bytes=3 * 9216)
    for g in range(20):
        ds[g]
        assert ds._ram is not None
        assert ds._ram.used <= 3 * 9216
    assert len(ds._ram.items) == 3
    monkeypatch.setattr(data_mod, "get_worker_info", lambda: type("Info", (), {"num_workers": 3})())
    worker = CropDataset(images, crop=32, scale=4, seed=0, ram_cache_bytes=3 * 9216)
    worker[0]
    assert worker._ram is not None
    assert worker._ram.budget == 9216  # a third of the process's budget in each of 3 workers


def test_disk_cache_is_capped_used_unasked_only_for_small_sets_and_pruned(tmp_path, monkeypatch):
    images = _folder_of_pngs(tmp_path / "data", 10)  # 9,216 bytes each decoded
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / ("0" * 16 + ".safetensors")  # an entry of this cache for another set
    save_safetensors(
        {"pixels": torch.zeros(3, 4, 4, dtype=torch.uint8)}, stale, metadata=data_mod._CACHE_MARK
    )
    users = cache / "notes.txt"
    users.write_text("not ours")
    lookalike = cache / ("1" * 16 + ".safetensors")  # named like an entry, but without the cache's mark
    save_safetensors({"w": torch.zeros(1)}, lookalike)
    lookalike_bytes = lookalike.read_bytes()
    ds = CropDataset(images, crop=32, scale=4, seed=0, cache_dir=cache, ram_cache_bytes=0,
                     disk_cache_bytes=4 * 9216)  # fmt: skip
    assert not stale.exists()  # an entry of this cache that the set does not use
    assert users.read_text() == "not ours"  # any other file is left alone
    assert lookalike.read_bytes() == lookalike_bytes
    for g in range(40):
        ds[g]
    entries = [e for e in cache.glob("*.safetensors") if e != lookalike]
    assert len(entries) == 4  # the cap: the first four images of the list
    assert sum(e.stat().st_size for e in entries) <= 4 * 9216 + 4 * 256  # pixels plus headers
    off = CropDataset(images, crop=32, scale=4, seed=0, cache_dir=tmp_path / "off", disk_cache_bytes=0)
    off[0]
    assert not (tmp_path / "off").exists()
    auto = CropDataset(images, crop=32, scale=4, seed=0, cache_dir=tmp_path / "auto")  # 92 kB: fits
    auto[0]
    assert len(list((tmp_path / "auto").glob("*.safetensors"))) == 1
    monkeypatch.setattr(data_mod, "DISK_CACHE_AUTO_BYTES", 9216)  # the set is now over the automatic cap
    big = CropDataset(images, crop=32, scale=4, seed=0, cache_dir=tmp_path / "big")
    big[0]
    assert not (tmp_path / "big").exists()  # not cached unasked


@pytest.mark.parametrize(
    ("data", "needle"),
    [("/no/such/folder", "neither a dataset name"), ("EMPTY", "holds no images")],
)
def test_missing_or_empty_data(tmp_path, data, needle):
    if data == "EMPTY":
        data = str(tmp_path)
    with pytest.raises(DataError, match=needle):
        prepare_data(data, scale=4)


# --- downloads against a loopback server -------------------------------------------------------------


def _zip_of_images(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            img = io.BytesIO()
            Image.new("RGB", (40, 40), (i * 40, 0, 0)).save(img, "PNG")
            zf.writestr(f"Set_HR/{i:04d}.png", img.getvalue())
    return buf.getvalue()


class _Server:
    def __init__(self, files: dict[str, bytes], cut_first_at: int | None = None) -> None:
        self.files, self.cut, self.requests = files, cut_first_at, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[1]
                outer.requests.append((name, self.headers.get("Range")))
                if name not in outer.files:
                    self.send_error(404)
                    return
                body = outer.files[name]
                start = (
                    int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                )
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if outer.cut is not None:
                    self.wfile.write(body[start : outer.cut])
                    outer.cut = None
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_resumes_verifies_and_extracts_once(tmp_path, monkeypatch):
    archive = _zip_of_images(3)
    server = _Server({"Set_HR.zip": archive}, cut_first_at=len(archive) // 2)
    monkeypatch.setenv(data_mod.MIRROR_ENV, server.url)
    item = RemoteArchive("https://example.org/data/Set_HR.zip", "Set_HR", 3)
    try:
        with pytest.raises(DataError, match="partial file kept"):
            fetch_archive(item, tmp_path)
        part = tmp_path / "archives" / "Set_HR.zip.part"
        assert 0 < part.stat().st_size < len(archive)
        folder = fetch_archive(item, tmp_path)  # resumes with a Range request
        assert server.requests[-1] == ("Set_HR.zip", f"bytes={len(archive) // 2}-")
        assert len(list_images(folder)) == 3
        n = len(server.requests)
        assert fetch_archive(item, tmp_path) == folder  # extracted once, reused
        assert len(server.requests) == n
        with pytest.raises(DataError, match="expected 5 images"):
            fetch_archive(
                RemoteArchive("https://example.org/data/Set_HR.zip", "Set_HR", 5), tmp_path / "again"
            )
        with pytest.raises(DataError, match=r"download of .* failed"):
            fetch_archive(RemoteArchive("https://example.org/x/Nope.zip", "Nope", 1), tmp_path)
    finally:
        server.close()


def test_named_dataset_through_mirror(tmp_path, monkeypatch):
    hr_zip, lr_zip, val_zip = _zip_of_images(2), io.BytesIO(), _zip_of_images(1)
    with zipfile.ZipFile(lr_zip, "w") as zf:
        for i in range(2):
            img = io.BytesIO()
            Image.new("RGB", (10, 10)).save(img, "PNG")
            zf.writestr(f"LR/X4/{i:04d}x4.png", img.getvalue())
    server = _Server({"hr.zip": hr_zip, "lr.zip": lr_zip.getvalue(), "val.zip": val_zip})
    monkeypatch.setenv(data_mod.MIRROR_ENV, server.url)
    monkeypatch.setitem(
        data_mod.DATASETS,
        "DIV2K",
        {
            "hr": RemoteArchive("https://x/hr.zip", "Set_HR", 2),
            "lr_x4": RemoteArchive("https://x/lr.zip", "LR/X4", 2),
            "val": RemoteArchive("https://x/val.zip", "Set_HR", 1),
        },
    )
    try:
        images = prepare_data("div2k", scale=4, data_dir=tmp_path)
        assert len(images.hr) == 2
        assert images.lr is not None
        assert [p.name for p in images.lr] == ["0000x4.png", "0001x4.png"]
        assert len(data_mod.prepare_validation(None, "DIV2K", data_dir=tmp_path / "v")) == 1
        assert len(data_mod.prepare_validation("DIV2K", "./photos", data_dir=tmp_path / "v")) == 1
        assert data_mod.prepare_validation(None, "./photos", data_dir=tmp_path) == []
        assert data_mod.prepare_validation("none", "DIV2K", data_dir=tmp_path) == []
    finally:
        server.close()


def test_corrupt_archive_is_deleted(tmp_path, monkeypatch):
    server = _Server({"bad.zip": b"PK\x03\x04 this is not a zip"})
    monkeypatch.setenv(data_mod.MIRROR_ENV, server.url)
    try:
        with pytest.raises(DataError, match="not a valid archive"):
            fetch_archive(RemoteArchive("https://x/bad.zip", "bad", 1), tmp_path)
        assert not (tmp_path / "archives" / "bad.zip").exists()
    finally:
        server.close()


class _SignalHandlers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> tuple[bool, bool]:
        import signal

        return signal.getsignal(signal.SIGINT) is signal.SIG_IGN, signal.getsignal(
            signal.SIGTERM
        ) is signal.SIG_IGN


def test_workers_leave_stop_signals_to_the_training_process():
    from aesop_loss.train import ignore_stop_signals

    loader = torch.utils.data.DataLoader(
        _SignalHandlers(), batch_size=None, num_workers=1, worker_init_fn=ignore_stop_signals
    )
    assert [tuple(flags) for flags in loader] == [(True, True)]  # both ignored inside the worker


@pytest.mark.parametrize("level", [0.5, 128.5, 254.5])  # halves whose even neighbour is below
def test_make_lr_rounds_halves_away_from_zero_like_matlab(level):
    hr = torch.full((3, 16, 16), level / 255, dtype=torch.float64)  # every LR value is exactly level
    assert (imresize(hr * 255, 1 / 2) == level).all()
    lr = make_lr(hr, 2) * 255
    assert (lr == level + 0.5).all()  # MATLAB's uint8(): 128.5 -> 129
    assert torch.tensor(level).round() == level - 0.5  # torch.round: half to even, 128.5 -> 128
    photo = torch.rand(3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = imresize(photo * 255, 1 / 2).clamp(0, 255)
    assert torch.equal(make_lr(photo, 2) * 255, torch.floor(exact + 0.5))


def test_wide_images_convert_in_strips_with_the_same_values():
    from aesop_loss.train.data import _wide_to_uint8

    img = Image.new("I;16", (37, 53))
    img.putdata([(i * 977) % 65536 for i in range(37 * 53)])
    assert torch.equal(_wide_to_uint8(img, strip=7), _wide_to_uint8(img, strip=10_000))


def test_a_replaced_image_is_decoded_again_not_served_from_the_cache(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (40, 40), (10, 10, 10)).save(folder / "a.png")
    images = ImageSet(list_images(folder))
    cache = tmp_path / "cache"
    first = CropDataset(images, crop=32, scale=4, seed=0, cache_dir=cache, ram_cache_bytes=0)
    assert int(first[0][0].max()) == 10
    Image.new("RGB", (40, 40), (200, 200, 200)).save(folder / "a.png")  # same name, new pixels
    again = CropDataset(images, crop=32, scale=4, seed=0, cache_dir=cache, ram_cache_bytes=0)
    assert int(again[0][0].min()) == 200


def test_a_big_16_bit_image_decodes_without_a_blow_up(tmp_path):
    import subprocess
    import sys

    side = 3000  # 9 M pixels: 18 MB as 16-bit, 27 MB as the 8-bit RGB result
    img = Image.frombytes("I;16", (side, side), bytes(2 * side * side))
    img.save(tmp_path / "big.png")
    code = (
        "import resource, sys\n"
        "from aesop_loss.train import load_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"x = load_image({str(tmp_path / 'big.png')!r})\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / x[0].numel())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bytes_per_pixel = float(proc.stdout.split()[-1])
    assert bytes_per_pixel < 15  # the result (3), Pillow's own pixels (2-4), a strip: ~9-12; was ~27


# --- the fourth reliability pass: images that change under a run, links, FIFOs, the cache ---------


def _two_image_set(folder, size=(64, 48)):
    folder.mkdir()
    for name, level in (("a.png", 10), ("b.png", 200)):
        Image.new("RGB", size, (level, level, level)).save(folder / name)
    return ImageSet(list_images(folder))


@pytest.mark.parametrize("new_size", [(96, 72), (40, 40)], ids=["larger", "smaller"])
def test_an_image_replaced_by_another_size_mid_run_is_skipped_not_misaligned(tmp_path, new_size):
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    _two_image_set(hr_dir)
    lr_dir.mkdir()
    for name in ("a.png", "b.png"):  # paired data: HR 64x48, LR 16x12
        Image.open(hr_dir / name).resize((16, 12)).save(lr_dir / name)
    images = ImageSet(list_images(hr_dir), list_images(lr_dir))
    ds = CropDataset(images, crop=32, scale=4, seed=0, ram_cache_bytes=0, augment=False)
    g = next(g for g in range(20) if ds.image_index(g) == 0)  # a sample that reads a.png
    Image.new("RGB", new_size, (90, 90, 90)).save(hr_dir / "a.png")  # replaced during the run
    with pytest.warns(UserWarning, match=r"a\.png: cannot be decoded \(it is now \d+x\d+, not the 64x48"):
        hr, lr = ds[g]  # was: larger -> crops of the new HR against the old LR; smaller -> RuntimeError
    assert int(hr.float().mean()) == 200
    assert int(lr.float().mean()) == 200


def test_linked_folders_are_followed_once_and_a_link_loop_ends(tmp_path):
    real = tmp_path / "DIV2K"
    real.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(real / f"{i}.png")
    other = tmp_path / "Flickr2K"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "f.png")
    df2k = tmp_path / "DF2K"  # a DF2K built from links only
    df2k.mkdir()
    (df2k / "DIV2K").symlink_to(real, target_is_directory=True)
    (df2k / "Flickr2K").symlink_to(other, target_is_directory=True)
    (real / "loop").symlink_to(df2k, target_is_directory=True)  # a cycle back up
    files = list_images(df2k)  # was: "holds no images"
    assert sorted(p.name for p in files) == ["0.png", "1.png", "2.png", "f.png"]


def test_an_image_replaced_by_a_fifo_is_skipped_without_hanging(tmp_path):
    images = _two_image_set(tmp_path / "data")
    ds = CropDataset(images, crop=32, scale=4, seed=0, ram_cache_bytes=0)
    (tmp_path / "data" / "a.png").unlink()
    os.mkfifo(tmp_path / "data" / "a.png")  # nobody ever writes to it
    g = next(g for g in range(20) if ds.image_index(g) == 0)
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(_catch_warnings(ds.__getitem__, g)), daemon=True)
    reader.start()
    reader.join(20)
    assert not reader.is_alive(), "reading a FIFO in an image's place blocked"  # was: open() forever
    (hr, _), seen = result[0]  # type: ignore[misc]
    assert int(hr.float().mean()) == 200
    assert any("not a regular file" in str(w.message) for w in seen)
    with pytest.raises(OSError, match="not a regular file"):
        load_image(tmp_path / "data" / "a.png")


def _catch_warnings(fn, *args):
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        return fn(*args), seen


def test_the_disk_cache_keeps_its_cap_after_replacements_and_owns_only_its_folder(tmp_path):
    images = _folder_of_pngs(tmp_path / "data", 4)  # 9,216 bytes each decoded
    cache = tmp_path / "cache"
    cap = 2 * 9216
    ds = CropDataset(
        images, crop=32, scale=4, seed=0, cache_dir=cache, ram_cache_bytes=0, disk_cache_bytes=cap
    )
    for g in range(8):
        ds[g]
    for path in images.hr:  # every image replaced by another of the same size, several times
        for level in (1, 2, 3):
            Image.new("RGB", (64, 48), (level, 0, 0)).save(path)
            os.utime(path, ns=(level * 10**9, level * 10**9))
            for g in range(8):
                ds[g]
    entries = list(cache.glob("*.safetensors"))
    assert len(entries) == 2  # was: one more entry per replacement, past the cap
    assert sum(e.stat().st_size for e in entries) <= cap + 2 * 256
    assert int(ds[next(g for g in range(20) if ds.image_index(g) == 0)][0][0, 0].float().mean()) == 3


def test_a_killed_runs_cache_temps_are_removed_and_a_linked_cache_is_not_used(tmp_path):
    images = _folder_of_pngs(tmp_path / "data", 2)
    cache = tmp_path / "cache"
    cache.mkdir()
    old = cache / ".0123456789abcdef.safetensors.ab12cd34.tmp"  # atomic_path's name for a killed write
    fresh = cache / ".fedcba9876543210.safetensors.zz99yy88.tmp"  # maybe another process's, writing now
    for tmp in (old, fresh):
        tmp.write_bytes(b"half")
    os.utime(old, (0, 0))
    mine = cache / "notes.tmp"
    mine.write_text("a user's")
    CropDataset(images, crop=32, scale=4, seed=0, cache_dir=cache)
    assert not old.exists()  # was: never removed
    assert fresh.exists()
    assert mine.read_text() == "a user's"
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / ("2" * 16 + ".safetensors")).write_bytes(b"someone's")
    linked = tmp_path / "linked"
    linked.symlink_to(target, target_is_directory=True)
    with pytest.warns(UserWarning, match="is a symbolic link"):
        ds = CropDataset(images, crop=32, scale=4, seed=0, cache_dir=linked)
    ds[0]
    assert [p.name for p in target.iterdir()] == ["2" * 16 + ".safetensors"]  # was: written into, pruned


def test_many_unusable_images_are_summarised(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(500):
        Image.new("RGB", (8, 8)).save(folder / f"{i:04d}.png")  # all smaller than the crop
    Image.new("RGB", (64, 64)).save(folder / "ok.png")
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        CropDataset(ImageSet(list_images(folder)), crop=32, scale=4, seed=0)
    messages = [str(w.message) for w in seen]
    assert len(messages) == data_mod._SKIPS_SHOWN + 1  # was: one per file (two lines each)
    assert messages[-1] == "skipping 490 more images: 490 smaller than the crop."


def test_cache_entries_are_trusted_by_the_files_stamp_and_checked_for_shape(tmp_path):
    # Decided (README, Safety): an entry is the file's when its stamp (size, mtime) matches; a
    # same-size edit whose mtime is restored is served from the cache (delete .decoded/ after one).
    images = _two_image_set(tmp_path / "data")
    cache = tmp_path / "cache"
    ds = CropDataset(images, crop=32, scale=4, seed=0, cache_dir=cache, ram_cache_bytes=0)
    ga = next(g for g in range(20) if ds.image_index(g) == 0)
    assert int(ds[ga][0].float().mean()) == 10
    a = tmp_path / "data" / "a.png"
    entry = ds._cache_file(a)
    stamp = data_mod._stamp(a)
    planted = [  # marked entries that are not a.png's pixels: decoded again
        ({"pixels": torch.zeros(3, 8, 8, dtype=torch.uint8)}, {**data_mod._CACHE_MARK, "source": stamp}),
        ({"pixels": torch.zeros(3, 48, 64, dtype=torch.uint8)}, data_mod._CACHE_MARK),  # no stamp
    ]
    for tensors, meta in planted:
        save_safetensors(tensors, entry, metadata=meta)
        assert int(CropDataset(images, crop=32, scale=4, seed=0, cache_dir=cache, ram_cache_bytes=0)[ga][0]
                   .float().mean()) == 10  # fmt: skip
    st = a.stat()
    Image.new("RGB", (64, 48), (11, 11, 11)).save(a)  # the same size on disk, other pixels
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    if a.stat().st_size == st.st_size:  # the stale entry is served: the documented limit
        again = CropDataset(images, crop=32, scale=4, seed=0, cache_dir=cache, ram_cache_bytes=0)
        assert int(again[ga][0].float().mean()) == 10
