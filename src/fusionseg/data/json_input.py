"""Reading JSON the user wrote (``dataset.json``, ``splits_final.json``, ``plans.json``) with one-line errors.

:func:`read_json_file` refuses a file larger than :data:`MAX_JSON_BYTES`, text that is not UTF-8
(a byte-order mark is allowed), a syntax error, and nesting too deep to parse (Python's parser
recurses: a 100,000-deep list is an :class:`InputError`, not a ``RecursionError``), each naming
the file and the fix.

Example:
    >>> meta = read_json_file(root / "dataset.json", "fix the JSON syntax")
"""

from __future__ import annotations

import json
from pathlib import Path

from fusionseg.errors import InputError

__all__ = ["MAX_JSON_BYTES", "read_json_file"]

MAX_JSON_BYTES = 64 * 2**20


def read_json_file(path: str | Path, fix: str, max_bytes: int = MAX_JSON_BYTES) -> object:
    """The JSON value in ``path``; InputError ``"<path>: <problem>; <fix>"`` when it cannot be read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(f"{path}: {size:,} bytes, more than the {max_bytes:,} a JSON file here may have; {fix}")
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err}); {fix}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bad = data[err.start]
        raise InputError(f"{path}: not UTF-8 text (byte 0x{bad:02x} at offset {err.start}); save it as UTF-8") from None
    try:
        return json.loads(text)
    except ValueError as err:  # syntax, or a number too long to convert
        raise InputError(f"{path}: cannot parse ({' '.join(str(err).split())[:200]}); {fix}") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to read; {fix}") from None
