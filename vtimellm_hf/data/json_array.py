"""
Reading a JSON array of records one record at a time, in bounded memory (LCS-558K is 558k records), with errors that
name the file, line and column.
"""

import codecs
import json
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["CHUNK_SIZE", "iter_json_array"]

# Bytes read from a file at a time.
CHUNK_SIZE = 1 << 20
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NUMBER_CHARACTERS = re.compile(r"[0-9.eE+-]*")
# Longest token prefix that a chunk boundary can leave at the end of the buffer ("-Infinit", "\\uXXX", "1e+"):
# a decoding error closer than this to the end may be the boundary, not the file.
_TOKEN_PREFIX_MARGIN = 16


def iter_json_array(path: str) -> Iterator[tuple[int, Any]]:
    """
    `(index, element)` of the JSON array that `path` holds, decoded one element at a time.

    The file is read in chunks of `CHUNK_SIZE` bytes and each element decoded with `json.JSONDecoder.raw_decode`
    (the standard library's C decoder, one call per record) from a buffer that holds little more than that element
    and the next chunk, so a file of any size is read in bounded memory, without a streaming-JSON dependency. An
    element longer than a chunk grows the buffer until it decodes. Raises a `ValueError` naming the file and the
    line (and column, or byte offset) on bytes that are not UTF-8 or on invalid JSON.
    """
    reader = _JsonArrayReader(path)
    try:
        yield from reader
    finally:
        reader.close()


class _JsonArrayReader:
    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "rb")
        # "utf-8-sig": a byte-order mark would otherwise be an invalid JSON character.
        self._text_decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._json_decoder = json.JSONDecoder()
        self._buffer = ""
        self._pos = 0
        self._eof = False
        self._bytes_read = 0
        self._newlines_decoded = 0
        # Where the buffer starts in the file, for error messages: its line and its column on that line.
        self._buffer_line = 1
        self._buffer_column = 1

    def close(self) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        first = self._next_char()
        if first != "[":
            found = "an empty file" if not first else f"{first!r}"
            raise self._error(self._pos, f"expected a JSON array of records ('['), found {found}")
        self._pos += 1
        index = 0
        if self._next_char() == "]":
            self._pos += 1
        else:
            while True:
                yield index, self._decode_value()
                index += 1
                separator = self._next_char()
                if separator == "]":
                    self._pos += 1
                    break
                if separator != ",":
                    found = "the end of the file" if not separator else repr(separator)
                    raise self._error(self._pos, f"expected ',' or ']' after record {index - 1}, found {found}")
                self._pos += 1
        trailing = self._next_char()
        if trailing:
            raise self._error(self._pos, f"extra data after the array: {trailing!r}")

    def _next_char(self) -> str:
        """The next character that is not whitespace (without consuming it), or "" at the end of the file."""
        while True:
            self._pos = _WHITESPACE.match(self._buffer, self._pos).end()
            if self._pos < len(self._buffer):
                return self._buffer[self._pos]
            if not self._read_more():
                return ""

    def _decode_value(self) -> Any:
        # `raw_decode` does not skip leading whitespace.
        self._next_char()
        while True:
            try:
                value, end = self._json_decoder.raw_decode(self._buffer, self._pos)
            except json.JSONDecodeError as error:
                # A chunk boundary inside the element makes it fail at the end of the buffer (within the longest
                # token prefix), or, inside a string, at the string's start; read on and decode again. Any other
                # failure is in the file itself.
                cut = (
                    error.msg.startswith("Unterminated string")
                    or len(self._buffer) - error.pos <= _TOKEN_PREFIX_MARGIN
                )
                if cut and self._read_more():
                    continue
                # The decoder's messages end with "at", expecting its own position after them.
                reason = error.msg.removesuffix(" at").removesuffix(" starting")
                raise self._error(error.pos, f"invalid JSON: {reason}") from None
            except RecursionError:
                raise self._error(self._pos, "invalid JSON: nested too deeply to decode") from None
            except ValueError as error:
                # The decoder's own limits, such as integers of more than 4300 digits.
                raise self._error(self._pos, f"invalid JSON: {error}") from None
            # A bare number whose characters run to the end of the buffer may go on in the next chunk ("1|.5").
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and _NUMBER_CHARACTERS.match(self._buffer, end).end() == len(self._buffer)
                and self._read_more()
            ):
                continue
            self._pos = end
            return value

    def _read_more(self) -> bool:
        """Append the next chunk of text to the buffer, dropping what was consumed; False at the end of the file."""
        if self._eof:
            return False
        chunk = self._file.read(CHUNK_SIZE)
        pending = self._text_decoder.getstate()[0]
        try:
            text = self._text_decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as error:
            data = pending + chunk
            offset = self._bytes_read - len(pending) + error.start
            line = self._newlines_decoded + data.count(b"\n", 0, error.start) + 1
            raise ValueError(
                f"{self.path}, line {line}: not valid UTF-8 (byte {data[error.start]:#04x} at byte offset {offset})"
            ) from None
        if not chunk:
            # Nothing is dropped: positions in the buffer still name places in the file for error messages.
            self._eof = True
            return False
        self._bytes_read += len(chunk)
        self._newlines_decoded += text.count("\n")
        consumed = self._buffer[: self._pos]
        newlines = consumed.count("\n")
        if newlines:
            self._buffer_line += newlines
            self._buffer_column = len(consumed) - consumed.rfind("\n")
        else:
            self._buffer_column += len(consumed)
        self._buffer = self._buffer[self._pos :] + text
        self._pos = 0
        return True

    def _error(self, pos: int, message: str) -> ValueError:
        newlines = self._buffer.count("\n", 0, pos)
        line = self._buffer_line + newlines
        column = pos - self._buffer.rfind("\n", 0, pos) if newlines else self._buffer_column + pos
        return ValueError(f"{self.path}, line {line}, column {column}: {message}")
