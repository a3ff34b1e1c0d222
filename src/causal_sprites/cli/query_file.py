"""The query file of `counterfactual --queries`: one JSON object a line, {"index": I} or
{"image": PNG} (relative to the file) with an optional "do"; a bad line is named in the error."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError


@dataclass(frozen=True)
class Query:
    """One counterfactual query: a dataset index or an image file, and its do()."""

    index: int | None
    image: Path | None
    do: dict[str, int | float]


def read_queries(path: Path, default_do: dict[str, int | float], schema: Schema) -> list[Query]:
    """Parse a JSON-lines query file: {"index": I} or {"image": PNG} (relative to the file), with
    an optional "do" object (else the command line's --do); errors name the line."""
    queries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise CausalSpritesError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(item, dict):
            raise CausalSpritesError(f"{where}: expected a JSON object")
        unknown = sorted(set(item) - {"index", "image", "do"})
        if unknown:
            raise CausalSpritesError(f"{where}: unknown keys {unknown}; use index, image, do")
        if ("index" in item) == ("image" in item):
            raise CausalSpritesError(f"{where}: give exactly one of index and image")
        index = item.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise CausalSpritesError(f"{where}: index must be an integer, got {index!r}")
        image = item.get("image")
        if image is not None and not isinstance(image, str):
            raise CausalSpritesError(f"{where}: image must be a path string, got {image!r}")
        do = item.get("do", default_do)
        if not isinstance(do, dict):
            raise CausalSpritesError(f'{where}: do must be an object like {{"shape": "heart"}}')
        if not do:
            raise CausalSpritesError(f'{where}: no do(); give "do" or --do')
        try:
            actions = {name: schema.parse_value(name, value) for name, value in do.items()}
        except CausalSpritesError as error:
            raise CausalSpritesError(f"{where}: {error}") from None
        queries.append(Query(index, None if image is None else path.parent / image, actions))
    if not queries:
        raise CausalSpritesError(f"{path} holds no queries")
    return queries
