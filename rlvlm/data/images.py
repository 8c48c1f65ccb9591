"""Images as the data layer keeps them: encoded bytes, fetched once per machine, decoded per batch.

- A real dataset's example holds its images as the encoded file bytes (JPEG, PNG, ...), checked to
  decode when the dataset is loaded and decoded again only for the batch that uses them (`decode`,
  which `rlvlm.evaluation.items.item_images` calls per batch, and `datasets.Image`, which decodes
  the training rows `image_dataset` builds as the trainer reads them). The generated `shapes` set
  keeps its small PIL images; every function here takes either.
- Images named by URL are downloaded by pooch (`fetch_images`): in parallel, with retries, checked
  against the source's sha256 where it gives one, into `$RLVLM_CACHE/images`, one file per URL. On
  several processes the local main process of each machine downloads first and the others then read
  its cache (`main_process_first`), so a machine downloads each image once.
- `cap_pixels` is the one place `model.max_pixels` applies (see `load_examples`): an image larger is
  downscaled before the transformers processor or vLLM sees it, so that both read the same image and
  make the same image tokens of it, whichever processor settings each has (EasyR1 caps its images the
  same way, in its dataset).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("rlvlm.data")

DOWNLOAD_WORKERS = 16
DOWNLOAD_RETRIES = 2  # pooch waits 1 s, then 2 s, before trying again
DOWNLOAD_TIMEOUT_S = 30


class ImageError(ValueError):
    """An image that cannot be read or fetched; the message says why (a row's skip reason)."""


def image_cache() -> Path:
    from rlvlm.tiny import cache_dir

    return cache_dir() / "images"


def cache_name(url: str) -> str:
    """The file name a URL is cached under."""
    return hashlib.sha256(url.encode()).hexdigest()


def fetch_images(sources: dict[str, str | None], workers: int = DOWNLOAD_WORKERS,
                 retries: int = DOWNLOAD_RETRIES) -> dict[str, Path | ImageError]:
    """Download `{url: sha256 or None}` into the image cache (a file already there and matching is
    not downloaded again); returns `{url: cached file}`, or the ImageError saying why for a URL that
    could not be fetched after `retries` more tries."""
    if not sources:
        return {}
    import pooch
    import requests

    pooch.get_logger().setLevel(logging.WARNING)  # one INFO line per file otherwise
    names = {url: cache_name(url) for url in sources}
    fetcher = pooch.create(
        path=image_cache(), base_url="", retry_if_failed=retries,
        registry={names[url]: (f"sha256:{sha}" if sha else None) for url, sha in sources.items()},
        urls={names[url]: url for url in sources},
    )
    downloader = pooch.HTTPDownloader(timeout=DOWNLOAD_TIMEOUT_S)

    def one(url: str) -> tuple[str, Path | ImageError]:
        try:
            return url, Path(fetcher.fetch(names[url], downloader=downloader))
        except requests.RequestException as e:
            return url, ImageError(f"image download failed ({type(e).__name__})")
        except ValueError:  # pooch: the file's hash is not the one the source gives
            return url, ImageError("downloaded image does not match its sha256")
        except OSError as e:
            return url, ImageError(f"image download failed ({type(e).__name__})")

    with ThreadPoolExecutor(max_workers=min(workers, len(sources))) as pool:
        results = dict(pool.map(one, sources))
    failed = sum(isinstance(r, ImageError) for r in results.values())
    if failed:
        log.warning("%d of %d images could not be fetched", failed, len(results))
    return results


@contextlib.contextmanager
def main_process_first():
    """accelerate's `local_main_process_first` when several processes run (torch.distributed is
    initialised): the local main process runs the block first, the others after it, once per machine.
    A no-op in one process. Every process must enter it the same number of times. An exception in the
    block is raised once the block's closing barrier is passed (accelerate's skips it when the main
    process raises, leaving the others waiting in the opening one while it goes on to other collectives)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        yield
        return
    from accelerate import PartialState

    from rlvlm.recipe import gpu_available

    failure = None
    with PartialState(cpu=not gpu_available()).local_main_process_first():
        try:
            yield
        except Exception as e:  # noqa: BLE001 - raised again below, after the barrier
            failure = e
    if failure is not None:
        raise failure


# ------------------------------------------------------------------------------------ bytes <-> image


def decode(value: Any):
    """An RGB PIL image of encoded bytes (or of a PIL image, as the generated sets keep them)."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    if isinstance(value, dict):  # datasets.Image storage
        value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ImageError(f"no image (a {type(value).__name__})")
    try:
        img = Image.open(io.BytesIO(bytes(value)))
        img.load()
        return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"unreadable image ({type(e).__name__})") from None


def size(value: Any) -> tuple[int, int]:
    """(width, height), read from the file's header without decoding its pixels."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.size
    if isinstance(value, dict):
        value = value.get("bytes")
    with Image.open(io.BytesIO(bytes(value))) as img:
        return img.size


def checked(data: bytes, max_pixels: int | None = None) -> bytes:
    """`data` once it is known to decode (ImageError otherwise), downscaled by `cap_pixels`."""
    image = decode(data)
    if max_pixels is None or image.width * image.height <= max_pixels:
        return bytes(data)
    return cap_pixels(image, max_pixels, source_format=_format(data))


def cap_pixels(image, max_pixels: int, source_format: str | None = None) -> bytes:
    """The image downscaled, aspect kept, to at most `max_pixels` pixels, encoded: JPEG (quality 95)
    for a JPEG source, PNG otherwise."""
    from PIL import Image

    scale = math.sqrt(max_pixels / (image.width * image.height))
    width, height = max(1, int(image.width * scale)), max(1, int(image.height * scale))
    small = image.resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if source_format == "JPEG":
        small.save(buf, format="JPEG", quality=95)
    else:
        small.save(buf, format="PNG")
    return buf.getvalue()


def _format(data: bytes) -> str | None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.format


def encode(image) -> bytes:
    """PNG bytes of a PIL image (bytes are returned as they are)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------ training rows


def image_dataset(rows: list[dict]):
    """A `datasets.Dataset` of rows whose `image` (or `images`) column holds encoded bytes or PIL
    images, typed `datasets.Image` so that the trainer's batches decode them as they are read; bytes are
    stored as they are (not decoded and re-encoded)."""
    from datasets import Dataset, Image, List

    def stored(value):
        return None if value is None else {"bytes": encode(value), "path": None}

    columns = {}
    if rows and "image" in rows[0]:
        rows = [{**r, "image": stored(r["image"])} for r in rows]
        columns["image"] = Image()
    if rows and "images" in rows[0]:
        rows = [{**r, "images": [stored(v) for v in r["images"]]} for r in rows]
        columns["images"] = List(Image())
    ds = Dataset.from_list(rows)
    for name, feature in columns.items():
        ds = ds.cast_column(name, feature)
    return ds
