"""Runs moto_server until the process that started this one closes our stdin (or exits).

A crashed or killed test run therefore never leaves a moto behind holding a port. If moto itself
exits (say, its port is taken), so does this guard, with moto's status.
"""
import subprocess
import sys
import threading


def main() -> int:
    moto_server, host, port = sys.argv[1:4]
    child = subprocess.Popen([moto_server, "-H", host, "-p", port], stdin=subprocess.DEVNULL)
    owner_gone = threading.Event()

    def watch_owner() -> None:
        sys.stdin.read()
        owner_gone.set()

    threading.Thread(target=watch_owner, daemon=True).start()
    try:
        while not owner_gone.wait(0.2):
            if child.poll() is not None:
                return child.returncode or 1
    except KeyboardInterrupt:
        pass
    child.terminate()
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
