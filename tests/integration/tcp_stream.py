"""A long-lived TCP stream for restart tests: `server PORT` echoes lines; `client HOST PORT`
sends a numbered line every 0.1 s on ONE connection, prints `ok N` per echo, and prints
`ERROR ...` and exits 1 as soon as the connection breaks or an echo is wrong."""
import signal
import socket
import sys
import threading
import time


def server(port):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen()
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def echo(conn):
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                return
            conn.sendall(data)


def client(host, port):
    sock = socket.create_connection((host, port), timeout=5)
    reader = sock.makefile("r")
    n = 0
    while True:
        n += 1
        try:
            sock.sendall(b"msg %d\n" % n)
            line = reader.readline()
        except OSError as exc:
            print("ERROR %s after %d messages" % (exc, n - 1), flush=True)
            sys.exit(1)
        if line != "msg %d\n" % n:
            print("ERROR unexpected echo %r after %d messages" % (line, n - 1), flush=True)
            sys.exit(1)
        print("ok %d" % n, flush=True)
        time.sleep(0.1)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if sys.argv[1] == "server":
        server(int(sys.argv[2]))
    else:
        client(sys.argv[2], int(sys.argv[3]))
