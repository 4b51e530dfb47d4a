"""Service probes for test_services.py, run inside a test namespace (and maybe a test cgroup).

    svc_probe.py serve NAME PORT                 TCP and UDP on PORT: answer each connection and each
                                                 datagram with "NAME <peer ip>:<peer port>"
    svc_probe.py tcp HOST PORT COUNT [SPORT]     COUNT connections (from source ports SPORT, SPORT+1, ...
                                                 when given), a JSON line each: {reply, peer, cookie} or {error}
    svc_probe.py udp HOST PORT COUNT [one]       COUNT datagrams, each from a new unconnected socket (from one
                                                 socket with "one"), a JSON line each: {reply, source, cookie}
                                                 or {error}
"""
import json
import socket
import struct
import sys
import threading

SO_COOKIE = 57  # linux/asm-generic/socket.h


def cookie(sock):
    return struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


def address(pair):
    return "%s:%d" % pair


def serve(name, port):
    def udp():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", port))
        while True:
            _, peer = sock.recvfrom(2048)
            sock.sendto(("%s %s" % (name, address(peer))).encode(), peer)

    threading.Thread(target=udp, daemon=True).start()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, peer = listener.accept()
        with conn:
            conn.sendall(("%s %s" % (name, address(peer))).encode())


def tcp(host, port, count, sport):
    for i in range(count):
        sock = socket.socket()
        try:
            sock.settimeout(1.5)
            if sport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", sport + i))
            own = cookie(sock)
            sock.connect((host, port))
            peer = address(sock.getpeername())
            reply = sock.recv(256).decode()
            print(json.dumps({"reply": reply, "peer": peer, "cookie": own}), flush=True)
        except OSError as exc:
            print(json.dumps({"error": "%s: %s" % (type(exc).__name__, exc), "errno": exc.errno}), flush=True)
        finally:
            sock.close()


def udp(host, port, count, one_socket):
    sock = None
    for _ in range(count):
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(1.5)
        try:
            own = cookie(sock)
            sock.sendto(b"hello", (host, port))
            reply, source = sock.recvfrom(256)
            print(json.dumps({"reply": reply.decode(), "source": address(source), "cookie": own}), flush=True)
        except OSError as exc:
            print(json.dumps({"error": "%s: %s" % (type(exc).__name__, exc), "errno": exc.errno}), flush=True)
        if not one_socket:
            sock.close()
            sock = None


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "tcp":
        tcp(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 0)
    else:
        udp(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:] == ["one"])
