"""Decode fuzzing (issue 10): seeded mutations (truncations, bit flips, header byte edits,
length-field edits, spliced chunks) of the sample photos re-encoded in every format Pillow
writes here. Every input gives a `Decoded` (an RGB uint8 image or an error reason of a known
kind) and never raises, within a time bound per file, also with warnings turned into errors.

    pytest tests/test_fuzz_decode.py -q -s               # 50,400 inputs; prints the table
    pytest tests/test_fuzz_decode.py -q -s -m "not slow"  # 8,400: 14 formats x 300, x2 warnings
"""

from __future__ import annotations

import faulthandler
import io
import random
import time
import warnings
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest
from PIL import Image

from imgfeat.config import DecodeConfig
from imgfeat.decode import Decoded, decode_image

from conftest import SAMPLES

KINDS = {"empty", "not-an-image", "corrupt", "unsupported", "too-large"}
# a lower pixel cap than the default keeps a header edit that declares a huge image cheap;
# the default cap is the same code path with a larger number
CONFIG = DecodeConfig(max_pixels=4_000_000, max_side=32)
SECONDS_PER_FILE = 2.0  # generous for slow CI machines; measured max here is ~10 ms

FORMATS = {  # name: (Pillow format, mode, save options)
    "jpeg": ("JPEG", "RGB", {"quality": 80}),
    "jpeg-progressive-gray": ("JPEG", "L", {"progressive": True}),
    "png": ("PNG", "RGB", {}),
    "png-palette-alpha": ("PNG", "P", {"transparency": 0}),
    "png-16bit": ("PNG", "I;16", {}),
    "gif": ("GIF", "P", {}),
    "tiff-lzw": ("TIFF", "RGB", {"compression": "tiff_lzw"}),
    "tiff-rgba": ("TIFF", "RGBA", {}),
    "webp": ("WEBP", "RGB", {"quality": 70}),
    "bmp": ("BMP", "RGB", {}),
    "ico": ("ICO", "RGBA", {"sizes": [(32, 32)]}),
    "dds": ("DDS", "RGB", {}),
    "tga": ("TGA", "RGB", {}),
    "pcx": ("PCX", "RGB", {}),
}


@lru_cache(maxsize=None)
def seed_file(name: str) -> bytes:
    """A sample photo, small, encoded as `name` says."""
    fmt, mode, options = FORMATS[name]
    photo = sorted(SAMPLES.glob("*.jpg"))[len(name) % 5]
    with Image.open(photo) as opened:
        image = opened.convert("RGB").resize((48, 36))
    if mode == "I;16":
        image = Image.fromarray((np.asarray(image.convert("L"), np.uint16) * 257))
    elif mode == "P":
        image = image.convert("P", palette=Image.ADAPTIVE, colors=64)
    elif mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three seeded edits of `data`."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not out:
            break
        how = rng.randrange(6)
        if how == 0:  # truncate
            del out[rng.randrange(len(out)):]
        elif how == 1:  # flip a few bits anywhere
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif how == 2:  # edit header bytes (magic, sizes, modes, offsets)
            for _ in range(rng.randint(1, 4)):
                out[rng.randrange(min(len(out), 64))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif how == 3:  # a length or size field made huge, zero or negative
            at = rng.randrange(min(len(out), 128))
            out[at:at + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
                                         b"\x00\x01\x00\x00", b"\x80\x00\x00\x00"))
        elif how == 4:  # splice: repeat or drop a chunk of the body
            start = rng.randrange(len(out))
            chunk = out[start:start + rng.randint(1, 256)]
            if rng.random() < 0.5:
                out[start:start] = chunk * rng.randint(1, 4)
            else:
                del out[start:start + len(chunk)]
        else:  # random bytes over a stretch of the body
            start = rng.randrange(len(out))
            length = rng.randint(1, 64)
            out[start:start + length] = bytes(rng.randrange(256) for _ in range(length))
    return bytes(out)


def fuzz(name: str, count: int, seed: int, as_errors: bool) -> tuple[Counter, float]:
    """Decode `count` mutations of one format; (outcomes by kind, slowest seconds)."""
    rng = random.Random(f"{name}:{seed}")
    original = seed_file(name)
    outcomes: Counter = Counter()
    slowest = 0.0
    faulthandler.dump_traceback_later(120, exit=True)  # a hang must fail the suite, not stall it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error" if as_errors else "ignore")
            for i in range(count):
                data = mutate(original, rng)
                start = time.perf_counter()
                decoded = decode_image(data, CONFIG)
                took = time.perf_counter() - start
                slowest = max(slowest, took)
                assert isinstance(decoded, Decoded)
                assert took < SECONDS_PER_FILE, f"{name} mutation {i} took {took:.2f} s"
                if decoded.error is None:
                    image = decoded.image
                    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
                    assert image.shape[0] >= 1 and image.shape[1] >= 1 and decoded.width >= 1
                    outcomes["ok"] += 1
                else:
                    assert decoded.image is None
                    kind = decoded.error.split(":", 1)[0]
                    assert kind in KINDS, decoded.error
                    outcomes[kind] += 1
    finally:
        faulthandler.cancel_dump_traceback_later()
    return outcomes, slowest


RESULTS: dict[str, tuple[Counter, float]] = {}


def test_seed_files_decode():
    for name in FORMATS:
        decoded = decode_image(seed_file(name), CONFIG)
        assert decoded.error is None, (name, decoded.error)


@pytest.mark.parametrize("as_errors", [False, True], ids=["warnings-ignored", "warnings-as-errors"])
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_mutated_files_never_raise(name, as_errors):
    outcomes, slowest = fuzz(name, 300, seed=0 if not as_errors else 1, as_errors=as_errors)
    RESULTS[f"{name}/{'errors' if as_errors else 'ignored'}"] = (outcomes, slowest)
    assert sum(outcomes.values()) == 300
    assert len(outcomes) >= 2  # the mutations reach both decodable and broken files


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_mutated_files_never_raise_many(name):
    outcomes, slowest = fuzz(name, 3000, seed=2, as_errors=False)
    RESULTS[f"{name}/slow"] = (outcomes, slowest)
    assert sum(outcomes.values()) == 3000


def test_print_fuzz_table():
    """The figures for docs/reliability.md (run with -s to see them)."""
    if not RESULTS:
        pytest.skip("run with the fuzz tests to get the table")
    total: Counter = Counter()
    print(f"\n{'format/warnings':36s} {'files':>6s} {'ok':>5s} {'errors by kind':40s} {'max ms':>7s}")
    for key, (outcomes, slowest) in sorted(RESULTS.items()):
        total.update(outcomes)
        errors = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()) if k != "ok")
        print(f"{key:36s} {sum(outcomes.values()):6d} {outcomes['ok']:5d} {errors:40s} {slowest * 1000:7.1f}")
    print(f"{'total':36s} {sum(total.values()):6d} {total['ok']:5d} "
          f"{', '.join(f'{k} {v}' for k, v in sorted(total.items()) if k != 'ok')}; 0 raised")
