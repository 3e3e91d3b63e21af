"""Hostile uploads, generated in code: what the open internet will send the service.

Each ``HostileCase`` builds one raw HTTP request (method, path, body bytes, content
type) and states the contract answer: the status and a phrase the JSON error message
must contain. Building raw bytes (not going through a client library's multipart
encoder) lets the corpus send what libraries refuse to: repeated fields, non-UTF-8
names, NUL bytes in file names, broken boundaries.

The same cases run in-process (Flask test client) and against a real gunicorn server.
"""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from .dicom_factory import new_dataset

PREDICT = "/api/v1/predict"
BOUNDARY = "hostile-boundary-7f3a"
# What the servers in these tests are configured with (the shipped defaults).
MAX_BODY = 20 * 1024 * 1024


@dataclass(frozen=True)
class HostileRequest:
    body: bytes
    content_type: str | None
    method: str = "POST"
    path: str = PREDICT


@dataclass(frozen=True)
class HostileCase:
    kind: str
    build: Callable[[], HostileRequest]
    status: int
    message: str = ""  # phrase the error message must contain (case-insensitive)
    warning: str = ""  # for accepted oddities: phrase one warning must contain
    tags: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return self.kind


# ---------------------------------------------------------------- request builders

def multipart(parts: list[tuple], boundary: str = BOUNDARY) -> tuple[bytes, str]:
    """Encode ``(name, filename_or_None, content[, content_type])`` parts byte by byte."""
    out = io.BytesIO()
    for part in parts:
        name, filename, content = part[:3]
        ctype = part[3] if len(part) > 3 else b"application/octet-stream"
        out.write(b"--" + boundary.encode() + b"\r\n")
        disposition = b'Content-Disposition: form-data; name="' + _b(name) + b'"'
        if filename is not None:
            disposition += b'; filename="' + _b(filename) + b'"'
            out.write(disposition + b"\r\nContent-Type: " + _b(ctype) + b"\r\n\r\n")
        else:
            out.write(disposition + b"\r\n\r\n")
        out.write(_b(content) + b"\r\n")
    out.write(b"--" + boundary.encode() + b"--\r\n")
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _b(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def upload(data: bytes, filename="scan.png", modality="ct", model="vgg16",
           ctype=b"image/png") -> HostileRequest:
    """A well-formed predict request carrying ``data`` as the image."""
    parts = [("image", filename, data, ctype)]
    if modality is not None:
        parts.append(("modality", None, modality))
    if model is not None:
        parts.append(("model", None, model))
    return HostileRequest(*multipart(parts))


# ---------------------------------------------------------------- file builders

def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(size=(48, 40), mode="RGB", seed=0) -> Image.Image:
    """A random image, ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def valid_png(size=(48, 40)) -> bytes:
    return encode(noise(size), "PNG")


def valid_jpeg(size=(48, 40)) -> bytes:
    return encode(noise(size), "JPEG", quality=90)


def truncated(data: bytes) -> bytes:
    """Headers intact, pixel data cut short: fails only once decoding starts."""
    return data[: len(data) * 2 // 3]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_ihdr(width: int, height: int, bit_depth=8, colour_type=0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type,
                                          0, 0, 0))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size and carries no pixel data at all."""
    return PNG_SIGNATURE + png_ihdr(width, height) + png_chunk(b"IEND", b"")


@functools.lru_cache(maxsize=1)
def png_decompression_bomb(side: int = 30_000) -> bytes:
    """A real, complete 1-bit PNG of ``side`` x ``side`` black pixels in ~100 KB."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (PNG_SIGNATURE + png_ihdr(side, side, bit_depth=1) + png_chunk(b"IDAT", body)
            + png_chunk(b"IEND", b""))


def png_text_bomb() -> bytes:
    """A small valid image with a compressed text chunk that inflates to 64 MB."""
    text = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 << 20), 9))
    png = valid_png()
    return png[:33] + text + png[33:]  # right after IHDR


def png_bad_crc() -> bytes:
    data = bytearray(valid_png())
    data[29] ^= 0xFF  # IHDR's CRC
    return bytes(data)


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is patched to claim another size."""
    data = bytearray(valid_jpeg((16, 16)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(encode(noise((8, 8)), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def tiff_header(width: int, height: int) -> bytes:
    """A minimal little-endian TIFF: one 8-bit grey strip of whatever size is claimed."""
    pixels_offset = 8 + 2 + 8 * 12 + 4
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, pixels_offset), (278, 4, max(height, 1)), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        ifd += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3
                                                     else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + b"\x80" * 16


def jpeg_corrupt_exif() -> bytes:
    return encode(noise(), "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f garbage")


def jpeg_odd_orientation() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 9  # orientations run 1..8
    return encode(noise(), "JPEG", exif=exif.tobytes())


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("scan.png", valid_png())
    return buffer.getvalue()


SVG_WITH_SCRIPT = (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                   b'<script>alert(document.cookie)</script><rect width="64" height="64"/></svg>')
HTML_WITH_SCRIPT = b"<!doctype html><html><body><script>alert('x')</script></body></html>"


# ---------------------------------------------------------------- DICOM builders

def dicom_bytes(rows=16, columns=16, *, pixels: bytes | None = None, with_pixels=True,
                modality="CT", transfer_syntax=None, frames: int | None = None,
                bits_allocated=16, patient_name="Hostile^Test") -> bytes:
    """A small CT DICOM file (pydicom), with knobs to break it."""
    ds = new_dataset(modality, transfer_syntax)
    ds.PatientName = patient_name
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if frames is not None:
        ds.NumberOfFrames = frames
    if with_pixels:
        if pixels is None:
            rng = np.random.default_rng(1)
            pixels = rng.integers(0, 2000, (rows, columns), dtype=np.uint16).tobytes()
        ds.PixelData = pixels
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_header_then_garbage() -> bytes:
    rng = np.random.default_rng(7)
    return b"\x00" * 128 + b"DICM" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()


def dicom_unsupported_compression() -> bytes:
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    return dicom_bytes(pixels=encapsulate([b"\x00\x00\x01\xb3" + b"\x55" * 64]),
                       transfer_syntax=MPEG2MPML)


# ---------------------------------------------------------------- the corpus

def _raw(body: bytes, content_type: str | None, method="POST", path=PREDICT):
    return lambda: HostileRequest(body, content_type, method, path)


def _fields(*parts):
    return lambda: HostileRequest(*multipart(list(parts)))


NOT_IMAGE = "not a readable image"
CORRUPT = "truncated or corrupt"
TOO_MANY_PIXELS = "more than the limit"

CASES: list[HostileCase] = [
    # Files that are not images, or not any more.
    HostileCase("empty_file", lambda: upload(b""), 422, "empty"),
    HostileCase("text_with_png_extension", lambda: upload(b"hello, I am text\n" * 20), 415,
                NOT_IMAGE),
    HostileCase("truncated_png", lambda: upload(truncated(valid_png())), 415, CORRUPT),
    HostileCase("truncated_jpeg", lambda: upload(truncated(valid_jpeg()), "scan.jpg"), 415,
                CORRUPT),
    HostileCase("png_signature_only", lambda: upload(PNG_SIGNATURE), 415, NOT_IMAGE),
    HostileCase("png_bad_crc", lambda: upload(png_bad_crc()), 415, NOT_IMAGE),
    HostileCase("svg_with_script",
                lambda: upload(SVG_WITH_SCRIPT, "scan.svg", ctype=b"image/svg+xml"), 415,
                NOT_IMAGE),
    HostileCase("html_with_script_as_png", lambda: upload(HTML_WITH_SCRIPT), 415, NOT_IMAGE),
    HostileCase("polyglot_html_then_png", lambda: upload(HTML_WITH_SCRIPT + valid_png()), 415,
                NOT_IMAGE),
    HostileCase("gif_not_accepted", lambda: upload(encode(noise(mode="P"), "GIF"), "scan.gif"),
                415, NOT_IMAGE),
    HostileCase("webp_not_accepted", lambda: upload(encode(noise(), "WEBP"), "scan.webp"), 415,
                NOT_IMAGE),
    HostileCase("pdf_document", lambda: upload(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
                                               "scan.pdf"), 415, NOT_IMAGE),
    HostileCase("zip_archive", lambda: upload(zip_bytes(), "scan.zip"), 415, NOT_IMAGE),
    HostileCase("elf_executable", lambda: upload(b"\x7fELF\x02\x01\x01" + b"\x00" * 500,
                                                 "scan.png"), 415, NOT_IMAGE),
    HostileCase("png_text_chunk_bomb", lambda: upload(png_text_bomb()), 415, NOT_IMAGE),
    # Sizes: bombs, over the pixel limit, no pixels, one pixel.
    HostileCase("png_decompression_bomb", lambda: upload(png_decompression_bomb()), 422,
                TOO_MANY_PIXELS),
    HostileCase("png_header_over_pixel_limit", lambda: upload(png_header_only(100_000, 100_000)),
                422, TOO_MANY_PIXELS),
    HostileCase("jpeg_over_pixel_limit", lambda: upload(jpeg_with_size(65_000, 65_000), "a.jpg"),
                422, TOO_MANY_PIXELS),
    HostileCase("bmp_over_pixel_limit", lambda: upload(bmp_with_size(100_000, 100_000), "a.bmp"),
                422, TOO_MANY_PIXELS),
    HostileCase("tiff_over_pixel_limit", lambda: upload(tiff_header(60_000, 60_000), "a.tif"),
                422, TOO_MANY_PIXELS),
    # Decoders refuse zero-sized images outright: not a readable image.
    HostileCase("png_zero_pixels", lambda: upload(png_header_only(0, 0)), 415, NOT_IMAGE),
    HostileCase("tiff_zero_width", lambda: upload(tiff_header(0, 16), "a.tif"), 415, NOT_IMAGE),
    HostileCase("jpeg_zero_height", lambda: upload(jpeg_with_size(16, 0), "a.jpg"), 415,
                NOT_IMAGE),
    HostileCase("png_one_pixel", lambda: upload(valid_png((1, 1))), 200, warning="1 x 1"),
    HostileCase("png_one_by_many", lambda: upload(valid_png((1, 4000))), 200, warning="1 x 4000"),
    # Valid images in odd clothing: accepted, never a crash.
    HostileCase("polyglot_png_then_zip", lambda: upload(valid_png() + zip_bytes()), 200),
    HostileCase("jpeg_corrupt_exif", lambda: upload(jpeg_corrupt_exif(), "a.jpg"), 200),
    HostileCase("jpeg_orientation_out_of_range",
                lambda: upload(jpeg_odd_orientation(), "a.jpg"), 200),
    HostileCase("jpeg_cmyk", lambda: upload(encode(noise(mode="CMYK"), "JPEG"), "a.jpg"), 200),
    HostileCase("png_16_bit", lambda: upload(encode(Image.fromarray(
        np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 30), "PNG")), 200),
    HostileCase("tiff_float", lambda: upload(encode(Image.fromarray(
        np.linspace(-1e30, 1e30, 48 * 40, dtype=np.float32).reshape(40, 48)), "TIFF"), "a.tif"),
        200),
    HostileCase("png_named_dcm", lambda: upload(valid_png(), "scan.dcm"), 200),
    # File names.
    HostileCase("filename_path_traversal", lambda: upload(valid_png(), "../../../../etc/passwd"),
                200),
    HostileCase("filename_nul_byte", lambda: upload(valid_png(), b"scan\x00.png/../x"), 200),
    # RFC 7578 file names are UTF-8: the parser drops the malformed part, so no image.
    HostileCase("filename_not_utf8", lambda: upload(valid_png(), b"\xff\xfe\xc3(.png"), 400,
                "'image'"),
    HostileCase("filename_10k_chars", lambda: upload(valid_png(), "a" * 10_000 + ".png"), 200),
    HostileCase("filename_windows_path", lambda: upload(valid_png(), "C:\\Windows\\win.ini"), 200),
    # Bodies and fields.
    HostileCase("body_100_mb", lambda: upload(b"\x00" * (100 << 20), "big.png"), 413,
                "larger than", tags=("big",)),
    HostileCase("body_just_over_limit", lambda: upload(b"\x00" * (MAX_BODY + 1), "big.png"), 413,
                "larger than", tags=("big",)),
    HostileCase("too_many_form_parts", _fields(*[(f"f{i}", None, "x") for i in range(2000)]), 413,
                "larger than"),
    HostileCase("missing_image_field", _fields(("modality", None, "ct")), 400, "'image'"),
    HostileCase("image_sent_as_text_field", _fields(("image", None, "iVBORw0KGgo="),
                                                    ("modality", None, "ct")), 400, "'image'"),
    HostileCase("missing_modality", lambda: upload(valid_png(), modality=None), 400, "modality"),
    HostileCase("repeated_image_field", _fields(("image", "a.png", valid_png()),
                                                ("image", "b.png", valid_png()),
                                                ("modality", None, "ct")), 400, "more than once"),
    HostileCase("repeated_modality", _fields(("image", "a.png", valid_png()),
                                             ("modality", None, "ct"),
                                             ("modality", None, "xray")), 400, "more than once"),
    HostileCase("modality_not_utf8", lambda: upload(valid_png(), modality=b"\xff\xfe\xc3("), 400,
                "unknown modality"),
    HostileCase("unknown_modality", lambda: upload(valid_png(), modality="mri"), 400,
                "unknown modality"),
    HostileCase("modality_100k_chars", lambda: upload(valid_png(), modality="x" * 100_000), 400,
                "unknown modality"),
    HostileCase("unknown_model", lambda: upload(valid_png(), model="alexnet"), 400,
                "unknown model"),
    HostileCase("model_not_installed", lambda: upload(valid_png(), model="resnet50"), 503,
                "resnet50/ResNet50_CT_model.h5"),
    HostileCase("json_body", _raw(b'{"image": "AAAA", "modality": "ct"}', "application/json"),
                400, "'image'"),
    HostileCase("urlencoded_body", _raw(b"image=AAAA&modality=ct",
                                        "application/x-www-form-urlencoded"), 400, "'image'"),
    HostileCase("multipart_without_boundary", _raw(b"--x\r\n\r\n", "multipart/form-data"), 400,
                "'image'"),
    HostileCase("multipart_truncated", lambda: HostileRequest(
        upload(valid_png()).body[:200], f"multipart/form-data; boundary={BOUNDARY}"), 400,
        "'image'"),
    HostileCase("get_on_predict", _raw(b"", None, method="GET"), 405, "method"),
    # DICOM.
    HostileCase("dicom_valid_ct", lambda: upload(dicom_bytes(), "slice.dcm",
                                                 ctype=b"application/dicom"), 200),
    HostileCase("dicom_without_pixel_data", lambda: upload(dicom_bytes(with_pixels=False),
                                                           "slice.dcm"), 422, "no pixel data"),
    HostileCase("dicom_header_then_garbage", lambda: upload(dicom_header_then_garbage(),
                                                            "slice.dcm"), 415, "dicom"),
    HostileCase("dicom_truncated_pixel_data", lambda: upload(dicom_bytes(pixels=b"\x01" * 100),
                                                             "slice.dcm"), 415, "dicom"),
    HostileCase("dicom_over_pixel_limit", lambda: upload(dicom_bytes(60_000, 60_000,
                                                                     pixels=b"\x00" * 64),
                                                         "slice.dcm"), 422, TOO_MANY_PIXELS),
    HostileCase("dicom_zero_rows", lambda: upload(dicom_bytes(0, 16, pixels=b""), "slice.dcm"),
                422, "no pixels"),
    HostileCase("dicom_too_many_frames", lambda: upload(dicom_bytes(512, 512, frames=100_000,
                                                                    pixels=b"\x00" * 64),
                                                        "slice.dcm"), 422, "frames"),
    HostileCase("dicom_unsupported_compression", lambda: upload(dicom_unsupported_compression(),
                                                                "slice.dcm"), 415, "dicom"),
    HostileCase("dicom_odd_bits_allocated", lambda: upload(dicom_bytes(bits_allocated=7,
                                                                       pixels=b"\x01" * 256),
                                                           "slice.dcm"), 415, "dicom"),
    HostileCase("dicom_preamble_only", lambda: upload(b"\x00" * 128 + b"DICM", "slice.dcm"), 415,
                "dicom"),
]

assert len({case.kind for case in CASES}) == len(CASES), "hostile kinds must be unique"
