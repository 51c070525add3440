"""A CRI client on Python's grpcio, left at its defaults (no :authority override, the
default 8 KiB metadata limit), as tools outside Kubernetes use it.

    python grpcio_client.py /path/to/hull.sock

Calls RuntimeService/Version, ImageService/ListImages and a RuntimeService/ContainerStatus
for a 1 MiB container id, with hand-encoded protobuf (no generated stubs needed), and
prints one JSON line: what each call answered (the decoded fields, or the gRPC code and
the length of the message).
"""

import json
import sys

import grpc


def field(tag, payload):
    """A length-delimited protobuf field (wire type 2)."""
    key = bytes([(tag << 3) | 2])
    n, out = len(payload), bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            break
    return key + bytes(out) + payload


def strings(message):
    """The string fields (wire type 2) of a flat protobuf message, by tag."""
    out, i = {}, 0
    while i < len(message):
        key, shift = 0, 0
        while True:
            b = message[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        tag, wire = key >> 3, key & 7
        if wire != 2:
            raise ValueError(f"unexpected wire type {wire}")
        n, shift = 0, 0
        while True:
            b = message[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out[tag] = message[i : i + n].decode("utf-8", "replace")
        i += n
    return out


def call(channel, method, request):
    rpc = channel.unary_unary(method)
    try:
        return {"ok": True, "response": rpc(request, timeout=20)}
    except grpc.RpcError as e:
        return {"ok": False, "code": e.code().name, "message_len": len(e.details() or "")}


def main():
    socket = sys.argv[1]
    result = {"grpcio": grpc.__version__}
    with grpc.insecure_channel("unix:" + socket) as channel:
        v = call(channel, "/runtime.v1.RuntimeService/Version", field(1, b"v1"))
        if v["ok"]:
            fields = strings(v.pop("response"))
            v.update(version=fields.get(1), runtime_name=fields.get(2))
        result["version"] = v
        images = call(channel, "/runtime.v1.ImageService/ListImages", b"")
        images.pop("response", None)
        result["list_images"] = images
        status = call(
            channel,
            "/runtime.v1.RuntimeService/ContainerStatus",
            field(1, b"a" * (1 << 20)),
        )
        status.pop("response", None)
        result["container_status_1mib_id"] = status
    print(json.dumps(result))


if __name__ == "__main__":
    main()
