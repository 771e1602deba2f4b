"""Runs a moto server until the process that started this one closes our stdin (or exits).

A crashed or killed test run therefore never leaves a moto behind holding a port.

Two speed fixes are applied first; they change no behaviour. moto's SQS receive re-reads every
queue attribute (three passes over all messages) for each message it returns, and its clock goes
through datetime objects; with thousands of queued messages a receive took seconds.
"""
import sys
import threading
import time


def speed_up_moto() -> None:
    import moto.core.utils as core_utils
    import moto.sqs.models as sqs_models

    original_unix_time = core_utils.unix_time

    def unix_time(dt=None):
        return time.time() if dt is None else original_unix_time(dt)

    def unix_time_millis(dt=None):
        return unix_time(dt) * 1000.0

    for module in (core_utils, sqs_models):
        module.unix_time = unix_time
        module.unix_time_millis = unix_time_millis

    def is_message_valid_based_on_retention_period(self, queue_name, message):
        queue = self.get_queue(queue_name)
        retention = float(getattr(queue, "message_retention_period", 345600))
        return retention + message.sent_timestamp / 1000 > time.time()

    sqs_models.SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    speed_up_moto()
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
