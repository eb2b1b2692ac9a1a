"""MLLP framing (release 1): ``0x0B message 0x1C 0x0D``, decoded from any split of reads.

Shared by the server (server.py) and the client (client.py); see server.py for the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
_VT = 0x0B
_FS = 0x1C
_CR = 0x0D

OVERSIZE_HEAD_BYTES = 4096


def frame(message: bytes) -> bytes:
    """One MLLP block: start block, the message, end block."""
    return START_BLOCK + message + END_BLOCK


@dataclass(frozen=True, slots=True)
class Frame:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Junk:
    size: int


@dataclass(frozen=True, slots=True)
class Oversize:
    size: int  # content bytes discarded
    head: bytes  # first ≤ OVERSIZE_HEAD_BYTES of the content


@dataclass(frozen=True, slots=True)
class BareEndBlock:
    """A 0x1C not followed by 0x0D inside a frame (reported once per frame)."""


@dataclass(frozen=True, slots=True)
class Incomplete:
    size: int  # content bytes of a frame still open at end of stream


FrameEvent = Frame | Junk | Oversize | BareEndBlock | Incomplete


class MllpDecoder:
    """Incremental MLLP deframer: feed it bytes as read, get frames and framing events in order."""

    _OUTSIDE, _IN_FRAME, _DISCARDING = range(3)

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._state = self._OUTSIDE
        self._junk = 0
        self._buf = bytearray()
        self._head = b""
        self._discarded = 0
        self._last_was_fs = False

    @property
    def in_frame(self) -> bool:
        return self._state != self._OUTSIDE

    def feed(self, data: bytes) -> list[FrameEvent]:
        events: list[FrameEvent] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._state == self._OUTSIDE:
                start = data.find(START_BLOCK, pos)
                if start == -1:
                    self._junk += n - pos
                    break
                self._junk += start - pos
                if self._junk:
                    events.append(Junk(self._junk))
                    self._junk = 0
                self._open_frame()
                pos = start + 1
            elif self._state == self._IN_FRAME:
                pos = self._feed_frame(data, pos, events)
            else:
                pos = self._feed_discard(data, pos, events)
        return events

    def finish(self) -> list[FrameEvent]:
        """End of stream: report pending junk and an unfinished frame."""
        events: list[FrameEvent] = []
        if self._junk:
            events.append(Junk(self._junk))
            self._junk = 0
        if self._state == self._IN_FRAME:
            events.append(Incomplete(len(self._buf)))
        elif self._state == self._DISCARDING:
            events.append(Incomplete(self._discarded))
        self._state = self._OUTSIDE
        self._buf = bytearray()
        return events

    def _open_frame(self) -> None:
        self._state = self._IN_FRAME
        self._buf = bytearray()

    def _feed_frame(self, data: bytes, pos: int, events: list[FrameEvent]) -> int:
        buf = self._buf
        if buf and buf[-1] == _FS and data[pos] == _CR:  # end block split across reads
            del buf[-1]
            self._complete(bytes(buf), events)
            return pos + 1
        end = data.find(END_BLOCK, pos)
        if end != -1:
            size = len(buf) + end - pos
            if size > self.max_frame_bytes:
                events.append(Oversize(size, self._head_of(data, pos, end)))
                self._state = self._OUTSIDE
                self._buf = bytearray()
            else:
                buf += data[pos:end]
                self._complete(bytes(buf), events)
            return end + 2
        # No end block in this read. Up to max_frame_bytes + 1 bytes are held: the last one may be
        # the first half of an end block.
        size = len(buf) + len(data) - pos
        if size > self.max_frame_bytes + 1:
            self._head = self._head_of(data, pos, len(data))
            self._discarded = size
            self._last_was_fs = data[-1] == _FS
            self._state = self._DISCARDING
            self._buf = bytearray()
            return len(data)
        buf += data[pos:]
        return len(data)

    def _head_of(self, data: bytes, pos: int, stop: int) -> bytes:
        head = bytes(self._buf[:OVERSIZE_HEAD_BYTES])
        return head + data[pos : min(stop, pos + OVERSIZE_HEAD_BYTES - len(head))]

    def _complete(self, content: bytes, events: list[FrameEvent]) -> None:
        # Told once the frame is whole, so that how reads split the stream changes nothing (an
        # oversize frame is refused whole and says nothing of its content).
        if _FS in content:
            events.append(BareEndBlock())
        events.append(Frame(content))
        self._state = self._OUTSIDE
        self._buf = bytearray()

    def _feed_discard(self, data: bytes, pos: int, events: list[FrameEvent]) -> int:
        if self._last_was_fs and data[pos] == _CR:  # end block split across reads
            self._discarded -= 1  # the held 0x1C was not content
            self._head = self._head[: self._discarded]
            return self._end_discard(pos + 1, events)
        end = data.find(END_BLOCK, pos)
        stop = len(data) if end == -1 else end
        if len(self._head) < OVERSIZE_HEAD_BYTES:  # fill the head when reads are small
            self._head += data[pos : min(stop, pos + OVERSIZE_HEAD_BYTES - len(self._head))]
        self._discarded += stop - pos
        if end == -1:
            self._last_was_fs = data[-1] == _FS
            return len(data)
        return self._end_discard(end + 2, events)

    def _end_discard(self, pos: int, events: list[FrameEvent]) -> int:
        events.append(Oversize(self._discarded, self._head))
        self._state = self._OUTSIDE
        self._head = b""
        self._discarded = 0
        self._last_was_fs = False
        return pos


# --- server -----------------------------------------------------------------------------------
