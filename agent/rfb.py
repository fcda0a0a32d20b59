"""Just enough of the RFB (VNC) protocol for the agent to stand between a browser and a VNC server.

The agent does the handshake with each side itself: with the domain's VNC server as a client
asking to share the display (so one viewer never disconnects the others), and with the browser
as a server offering no authentication (the console's ticket already authenticated it). After the
handshake, what the server sends is passed through untouched; what the browser sends is cut into
whole client messages, so the agent can drop the input (keys, pointer, clipboard, display size) of
a viewer who may not type, and refuse anything it cannot frame.

Reference: RFC 6143 and the community extensions in rfbproto (QEMU extended key events, fences,
continuous updates, extended desktop size, extended clipboard).
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Iterator

VERSION_38 = b"RFB 003.008\n"
_SEC_NONE = 1
CLIPBOARD_MAX = 1024 * 1024  # the largest clipboard text a viewer may send (bytes)

# Client message types (RFC 6143 section 7.5, rfbproto for the extensions).
SET_PIXEL_FORMAT = 0
SET_ENCODINGS = 2
FB_UPDATE_REQUEST = 3
KEY_EVENT = 4
POINTER_EVENT = 5
CLIENT_CUT_TEXT = 6
ENABLE_CONTINUOUS_UPDATES = 150
CLIENT_FENCE = 248
XVP = 250  # shutdown / reboot / reset requests
SET_DESKTOP_SIZE = 251
QEMU_CLIENT = 255  # sub-type 0: extended key event

# Messages that act on the guest: only the viewer holding control may send them.
INPUT_TYPES = frozenset({KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT, XVP, SET_DESKTOP_SIZE, QEMU_CLIENT})

# Pseudo-encodings whose client messages this parser cannot frame: asked for, they would change
# the length of later messages (extended mouse buttons make pointer events 7 bytes; QEMU audio
# adds sub-messages). They are removed from the viewer's SetEncodings.
_UNFRAMEABLE_ENCODINGS = frozenset({-316, -259})


class RfbError(Exception):
    """The VNC peer broke the protocol or asked for what the agent does not support."""


ReadExactly = Callable[[int], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


def _minor(version: bytes) -> int:
    if len(version) != 12 or not version.startswith(b"RFB ") or version[7:8] != b".":
        raise RfbError(f"not a VNC protocol version: {version!r}")
    try:
        major, minor = int(version[4:7]), int(version[8:11])
    except ValueError as err:
        raise RfbError(f"not a VNC protocol version: {version!r}") from err
    if major != 3:
        raise RfbError(f"unsupported VNC protocol version {version!r}")
    return 8 if minor >= 8 else 7 if minor == 7 else 3


async def _reason(read: ReadExactly) -> str:
    (length,) = struct.unpack(">I", await read(4))
    return (await read(min(length, 4096))).decode(errors="replace")


async def server_handshake(read: ReadExactly, write: Write) -> bytes:
    """As a client, with no authentication, asking to share the display; returns ServerInit."""
    minor = _minor(await read(12))
    await write(b"RFB 003.%03d\n" % minor)
    if minor == 3:
        (sec,) = struct.unpack(">I", await read(4))
        if sec == 0:
            raise RfbError(f"the VNC server refused: {await _reason(read)}")
    else:
        (count,) = await read(1)
        if count == 0:
            raise RfbError(f"the VNC server refused: {await _reason(read)}")
        offered = set(await read(count))
        if _SEC_NONE not in offered:
            raise RfbError(
                "the domain's VNC server asks for a password (security types "
                f"{sorted(offered)}); the agent connects without one"
            )
        sec = _SEC_NONE
        await write(bytes([_SEC_NONE]))
    if sec != _SEC_NONE:
        raise RfbError(f"the VNC server chose security type {sec}; the agent needs none")
    if minor == 8:
        (result,) = struct.unpack(">I", await read(4))
        if result != 0:
            raise RfbError(f"the VNC server refused: {await _reason(read)}")
    await write(b"\x01")  # ClientInit: shared, so other viewers stay connected
    head = await read(24)
    (name_length,) = struct.unpack(">I", head[20:24])
    return head + await read(name_length)


async def client_handshake(read: ReadExactly, write: Write, server_init: bytes) -> None:
    """As a server to the browser: no authentication (the console's ticket did that)."""
    await write(VERSION_38)
    minor = _minor(await read(12))
    if minor == 3:
        await write(struct.pack(">I", _SEC_NONE))
    else:
        await write(bytes([1, _SEC_NONE]))
        (chosen,) = await read(1)
        if chosen != _SEC_NONE:
            raise RfbError(f"the viewer chose security type {chosen}, which was not offered")
        if minor == 8:
            await write(struct.pack(">I", 0))
    await read(1)  # ClientInit: its shared flag is ignored, the display is always shared
    await write(server_init)


class ClientMessages:
    """Cuts what a browser sends (after the handshake) into whole RFB client messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """Yield (type, message) for each message completed by `data`."""
        self._buf += data
        while self._buf:
            length = self._length()
            if length is None or len(self._buf) < length:
                return
            message = bytes(self._buf[:length])
            del self._buf[:length]
            if message[0] == SET_ENCODINGS:
                message = _without_unframeable(message)
            yield message[0], message

    def _length(self) -> int | None:
        """The length of the message at the head of the buffer, None until it can be known."""
        buf = self._buf
        kind = buf[0]
        fixed = {
            SET_PIXEL_FORMAT: 20,
            FB_UPDATE_REQUEST: 10,
            KEY_EVENT: 8,
            POINTER_EVENT: 6,
            ENABLE_CONTINUOUS_UPDATES: 10,
            XVP: 4,
        }.get(kind)
        if fixed is not None:
            return fixed
        if kind == SET_ENCODINGS:
            return None if len(buf) < 4 else 4 + 4 * int.from_bytes(buf[2:4], "big")
        if kind == CLIENT_CUT_TEXT:
            if len(buf) < 8:
                return None
            length = abs(int.from_bytes(buf[4:8], "big", signed=True))  # negative: extended clipboard
            if length > CLIPBOARD_MAX:
                raise RfbError(f"clipboard text of {length} bytes (at most {CLIPBOARD_MAX})")
            return 8 + length
        if kind == CLIENT_FENCE:
            return None if len(buf) < 9 else 9 + buf[8]
        if kind == SET_DESKTOP_SIZE:
            return None if len(buf) < 8 else 8 + 16 * buf[6]
        if kind == QEMU_CLIENT:
            if len(buf) < 2:
                return None
            if buf[1] == 0:  # extended key event
                return 12
            raise RfbError(f"unsupported QEMU client message {buf[1]}")
        raise RfbError(f"unsupported VNC client message type {kind}")


def _without_unframeable(message: bytes) -> bytes:
    (count,) = struct.unpack(">H", message[2:4])
    encodings = struct.unpack(f">{count}i", message[4:])
    kept = [e for e in encodings if e not in _UNFRAMEABLE_ENCODINGS]
    if len(kept) == count:
        return message
    return message[:2] + struct.pack(f">H{len(kept)}i", len(kept), *kept)
