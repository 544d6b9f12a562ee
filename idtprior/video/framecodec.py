"""Per-frame JPEG for the decoded frames: a Zarr v3 array-to-bytes codec (``decode.codec: jpeg``).

A stored chunk of ``(T, H, W, 3)`` uint8 RGB frames becomes one JPEG per frame, so a clip read decodes only the frames
of the chunks it touches and the store is several times smaller than zstd's lossless bytes (``benchmarks/
frame_codec.py`` measures both on real video). The chunk's bytes::

    b"IDTJ" | uint32 T | T x uint32 byte length | the T JPEG files, in frame order

(little-endian). JPEG is lossy: the frames read back are the JPEG decoder's, not the decoded video's; the quality is part
of the decode stage's key. Encoding and decoding are OpenCV's (libjpeg-turbo), 4:2:0 chroma, baseline.
"""

import struct
from dataclasses import dataclass

import cv2
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

NAME = "idtprior.jpeg_frames"
MAGIC = b"IDTJ"


def encode_frames(frames: np.ndarray, quality: int) -> bytes:
    """``(T, H, W, 3)`` uint8 RGB frames as the chunk format above."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"jpeg frames: expected (T, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
    parts = []
    for t, frame in enumerate(frames):
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise ValueError(f"jpeg frames: OpenCV could not encode frame {t} of shape {frame.shape}")
        parts.append(buf.tobytes())
    header = MAGIC + struct.pack(f"<I{len(parts)}I", len(parts), *(len(p) for p in parts))
    return header + b"".join(parts)


def decode_frames(data: bytes | memoryview | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The ``(T, H, W, 3)`` uint8 RGB frames of one chunk's bytes; ``shape`` is the chunk's."""
    raw = np.frombuffer(data, np.uint8)
    if raw[:4].tobytes() != MAGIC:
        raise ValueError(f"jpeg frames: a chunk of {raw.size} bytes does not start with {MAGIC!r}")
    # ndarray has the buffer protocol; NumPy's stubs declare __buffer__ only for Python >= 3.12
    (count,) = struct.unpack_from("<I", raw, 4)  # type: ignore[arg-type]
    if count != shape[0]:
        raise ValueError(f"jpeg frames: the chunk holds {count} frames, its array's chunks {shape[0]}")
    lengths = np.frombuffer(raw, "<u4", count, 8)
    out = np.empty(shape, np.uint8)
    pos = 8 + 4 * count
    for t, n in enumerate(lengths):
        img = cv2.imdecode(raw[pos:pos + int(n)], cv2.IMREAD_COLOR)
        if img is None or img.shape != shape[1:]:
            got = None if img is None else img.shape
            raise ValueError(f"jpeg frames: frame {t} of the chunk decodes to {got}, expected {shape[1:]}")
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out[t])
        pos += int(n)
    return out


@dataclass(frozen=True)
class JpegFrames(ArrayBytesCodec):
    """The Zarr codec: ``create_array(..., serializer=JpegFrames(quality=90))`` on (T, H, W, 3) uint8 chunks."""

    is_fixed_size = False
    quality: int = 90

    def __post_init__(self):
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"jpeg frames: quality must be in [1, 100], got {self.quality!r}")

    @classmethod
    def from_dict(cls, data):
        _, config = parse_named_configuration(data, NAME, require_configuration=True)
        return cls(quality=int(config["quality"]))

    def to_dict(self):
        return {"name": NAME, "configuration": {"quality": int(self.quality)}}

    def validate(self, *, shape, dtype, chunk_grid):
        if dtype.to_native_dtype() != np.uint8 or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"jpeg frames: stores (T, H, W, 3) uint8 arrays, not {shape} {dtype}")

    async def _decode_single(self, chunk_bytes, chunk_spec):
        frames = decode_frames(chunk_bytes.as_numpy_array(), tuple(chunk_spec.shape))
        return chunk_spec.prototype.nd_buffer.from_numpy_array(frames)

    async def _encode_single(self, chunk_array, chunk_spec):
        data = encode_frames(np.asarray(chunk_array.as_numpy_array()), self.quality)
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length, chunk_spec):
        raise NotImplementedError("jpeg frames: the encoded size depends on the content")


register_codec(NAME, JpegFrames)
