"""A 64-bit DCT perceptual hash of a gray image (pHash), the Hamming distance between two hashes,
and the near-duplicate pairs across the splits of a dataset.

The hash: the gray image shrunk to 32x32 (area averaging, so the shrink is antialiased and a
resized copy hashes like its source), its 2-D DCT, the 8x8 block of lowest frequencies next to the
DC term (rows and columns 1-8, as pHash.org takes it: the DC term is the mean brightness, which a
brightened copy changes, and the first row and column are the slowest whole-film gradients, which
exposure moves most), and
one bit per coefficient: 1 when it is above the block's median. Bit ``8 * row + col`` is the
coefficient at DCT (row + 1, col + 1), most significant first. Exactly 32 of the 64 coefficients
are above the median (they are real numbers, ties do not occur in practice), so every hash has 32
ones and two hashes differ in an even number of bits.

:data:`MAX_DISTANCE` is the default "near duplicate" cut: 4 of 64 bits. Measured on the 355
readable films of the shared test set (NIH, Hannover, ieee8023): a copy of a film shrunk to 3/4,
re-encoded as JPEG at quality 75 and brightened by 10 grey levels lay 0 bits from its source (2
for 15 films of 355); distinct films, which all share the chest's layout and so sit closer than
unrelated pictures (about 32 bits), were at least 8 bits apart (two pairs at 8, the median pair at
28). 4 lies one even step above the copies and two below the closest distinct films. A looser
audit (re-scans, crops) may pass 6; a pair found is a place to look, not a verdict.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

HASH_BITS = 64
MAX_DISTANCE = 4
_SIDE = 32  # the shrunk image's side
_BLOCK = 8  # the side of the low-frequency block


class NearDuplicate(NamedTuple):
    """Two images of different splits whose hashes are within the cut."""

    split_a: str
    name_a: str
    split_b: str
    name_b: str
    distance: int


def phash(gray: np.ndarray) -> int:
    """The 64-bit perceptual hash of a 2-D gray image (any numeric dtype, any size) as an int in
    [0, 2**64)."""
    gray = np.asarray(gray)
    if gray.ndim != 2 or min(gray.shape) == 0:
        raise ValueError(f"expected a non-empty 2-D gray image, got shape {gray.shape}")
    small = cv2.resize(gray.astype(np.float32), (_SIDE, _SIDE), interpolation=cv2.INTER_AREA)
    block = cv2.dct(small)[1 : _BLOCK + 1, 1 : _BLOCK + 1].ravel()
    bits = block > np.median(block)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """The number of bits in which two hashes differ."""
    return (int(a) ^ int(b)).bit_count()


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances between two uint64 hash arrays, ``(len(a), len(b))``."""
    return np.bitwise_count(np.bitwise_xor(a[:, None], b[None, :])).astype(np.int64)


def near_duplicates(
    hashes_by_split: dict[str, dict[str, int]], max_distance: int = MAX_DISTANCE
) -> list[NearDuplicate]:
    """Every pair of images in two different splits whose hashes differ in at most
    ``max_distance`` bits, nearest first (then by split and name). Pairs inside one split are
    not leakage and are not listed. ``hashes_by_split``: split -> image name -> hash."""
    if not 0 <= max_distance <= HASH_BITS:
        raise ValueError(f"max_distance must be in 0..{HASH_BITS}, got {max_distance}")
    splits = sorted(hashes_by_split)
    names = {s: sorted(hashes_by_split[s]) for s in splits}
    arrays = {s: np.array([hashes_by_split[s][n] for n in names[s]], dtype=np.uint64) for s in splits}
    found: list[NearDuplicate] = []
    for i, split_a in enumerate(splits):
        for split_b in splits[i + 1 :]:
            # one row of A at a time keeps memory at len(B), whatever the splits' sizes
            for row, value in enumerate(arrays[split_a]):
                distances = _distances(np.array([value]), arrays[split_b])[0]
                for col in np.flatnonzero(distances <= max_distance):
                    found.append(
                        NearDuplicate(split_a, names[split_a][row], split_b, names[split_b][col], int(distances[col]))
                    )
    return sorted(found, key=lambda d: (d.distance, d.split_a, d.name_a, d.split_b, d.name_b))
