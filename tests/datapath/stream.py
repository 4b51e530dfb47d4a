"""A TCP stream between two pods, for the reload test (run inside a pod's namespace).

    stream.py serve PORT STATUS_FILE    accept one connection; keep the byte count in STATUS_FILE;
                                        print "done <bytes>" or "error <what>" at EOF
    stream.py send HOST PORT SECONDS    send 1 KiB chunks for SECONDS; print "sent <bytes>" or "error <what>"
"""
import os
import socket
import sys
import time


def serve(port, status_file):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(1)
    conn, _ = listener.accept()
    total, last = 0, 0.0
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            total += len(data)
            if time.monotonic() - last > 0.02:
                with open(status_file + ".tmp", "w") as f:
                    f.write(str(total))
                os.rename(status_file + ".tmp", status_file)
                last = time.monotonic()
    except OSError as exc:
        print("error %r" % exc, flush=True)
        return 1
    print("done %d" % total, flush=True)
    return 0


def send(host, port, seconds):
    deadline = time.monotonic() + 5
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    chunk, total = b"x" * 1024, 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            conn.sendall(chunk)
            total += len(chunk)
            time.sleep(0.001)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the server closes after reading everything
    except OSError as exc:
        print("error %r" % exc, flush=True)
        return 1
    print("sent %d" % total, flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        sys.exit(serve(int(sys.argv[2]), sys.argv[3]))
    sys.exit(send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
