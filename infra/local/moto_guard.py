"""Runs moto_server until the process that started this one closes our stdin (or exits).

A crashed or killed test run therefore never leaves a moto behind holding a port.
"""
import subprocess
import sys


def main() -> int:
    moto_server, host, port = sys.argv[1:4]
    child = subprocess.Popen([moto_server, "-H", host, "-p", port], stdin=subprocess.DEVNULL)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    finally:
        child.terminate()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
