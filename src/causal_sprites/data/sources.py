"""Where a dSprites file comes from: the procedural generator writes the default data, or the
official file is downloaded and moved into place only once it is whole and verified."""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from causal_sprites.data import render
from causal_sprites.data.factors import NUM_IMAGES
from causal_sprites.data.official import KNOWN_FILES, OFFICIAL_URL, data_dir, default_path, verify
from causal_sprites.errors import CausalSpritesError
from causal_sprites.progress import progress_bar


def generate(out: Path | str, progress: bool = True) -> Path:
    """Write the default data (the procedural generator's official-format .npz) to `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with progress_bar("generating dSprites", progress) as update:
        render.write_npz(out, update)
    return out


def ensure_default_data(progress: bool = True) -> Path:
    """The default data file, generated on first use."""
    path = default_path()
    return path if path.exists() else generate(path, progress)


def download(
    out_dir: Path | str | None = None,
    url: str = OFFICIAL_URL,
    sha256: str | None = None,
    progress: bool = True,
    *,
    num_images: int = NUM_IMAGES,
) -> Path:
    """Fetch an official file into `out_dir` (default `data_dir()`), verify it, then rename it.

    Nothing appears under the final name unless the whole file arrived and passed `verify`.
    """
    parsed = urllib.parse.urlparse(url)
    name = Path(parsed.path).name
    if parsed.scheme not in ("https", "http") or not name:
        raise CausalSpritesError(f"bad download URL {url!r}: expected https://.../<file>")
    out = Path(out_dir) if out_dir is not None else data_dir()
    out.mkdir(parents=True, exist_ok=True)
    known = KNOWN_FILES.get(name)
    expected = sha256 or (known[1] if known else None)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=out)
    try:
        with (
            os.fdopen(fd, "wb") as f,
            progress_bar(f"downloading {name}", progress, download=True) as update,
        ):
            _fetch(url, f, update)
        try:
            verify(tmp, expected, num_images=num_images)
        except CausalSpritesError as error:
            raise CausalSpritesError(str(error).replace(tmp, url)) from None
        final = out / name
        os.replace(tmp, final)
        return final
    finally:
        Path(tmp).unlink(missing_ok=True)


def _fetch(url: str, out: IO[bytes], update: Callable[[int, int | None], None]) -> None:
    """Stream `url` into `out`; network problems become CausalSpritesError."""
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = response.length
            while block := response.read(1 << 20):
                out.write(block)
                received += len(block)
                update(received, total)
    except urllib.error.HTTPError as error:
        raise CausalSpritesError(
            f"download of {url} failed: HTTP {error.code} {error.reason}"
        ) from None
    except urllib.error.URLError as error:
        raise CausalSpritesError(f"downloading {url} needs the network: {error.reason}") from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as error:
        raise CausalSpritesError(
            f"download of {url} broke off after {received} bytes ({type(error).__name__})"
        ) from None
    if total is not None and received != total:
        raise CausalSpritesError(f"download of {url} broke off after {received} of {total} bytes")
