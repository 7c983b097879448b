"""The ClientApp a SuperNode runs for each distmix message: a forwarding shim.

It imports nothing but the standard library and Flower, reads the frame of
the request, hands it to the site's server on the Unix socket named by the
SuperNode's ``--node-config "distmix-socket='/path/to/site.sock'"``, and replies
with the frame it gets back. It parses nothing: the site's own, installed
distmix validates every request (``distmix site``).
"""

import socket
import struct

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()
_LENGTH = struct.Struct(">Q")


def _read(connection, size):
    chunks = []
    while size:
        chunk = connection.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("the site server closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


@app.query("distmix")
def forward(msg: Message, context: Context) -> Message:
    frame = msg.content.config_records["distmix"]["frame"]
    if not isinstance(frame, bytes):
        raise TypeError("a distmix message carries its frame as bytes")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(float(context.node_config.get("distmix-timeout", 600.0)))
        connection.connect(str(context.node_config["distmix-socket"]))
        connection.sendall(_LENGTH.pack(len(frame)) + frame)
        (size,) = _LENGTH.unpack(_read(connection, _LENGTH.size))
        reply = _read(connection, size)
    return Message(RecordDict({"distmix": ConfigRecord({"frame": reply})}), reply_to=msg)
