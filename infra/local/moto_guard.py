"""Runs a moto server until the process that started this one closes our stdin (or exits).

A crashed or killed test run therefore never leaves a moto behind holding a port.

Before it starts, moto is brought closer to AWS in two ways:
- DynamoDB requests are atomic, as in AWS. moto serves requests on threads, and its writes
  read, check, write and report old and new values without a lock, so two concurrent writers
  could both pass a condition only one of them may pass, or see each other's values as their
  own. It also applies an update's actions to the stored item one by one, so a concurrent read
  could see half of a write: a state already `synced` whose CRM id was not set yet (812 of
  1,247 reads were torn in a probe of two writers and two readers). Reads and writes therefore
  take one lock;
- speed, with no change of behaviour: its SQS receive re-read every queue attribute (three passes
  over all messages) for each message it returned, and its clock went through datetime objects,
  so that with thousands of queued messages one receive took seconds; and its HTTP server wrote
  each response in several small packets with Nagle's algorithm on, so that every answer waited
  for the client's delayed ACK (a DynamoDB write took 17 ms, 6 ms with TCP_NODELAY).
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


def answer_without_nagle_delay() -> None:
    import socket

    import werkzeug.serving as serving

    original_setup = serving.WSGIRequestHandler.setup

    def setup(self):
        original_setup(self)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    serving.WSGIRequestHandler.setup = setup


def make_dynamodb_requests_atomic() -> None:
    import functools

    from moto.dynamodb.responses import DynamoHandler

    # The whole request, not just the backend call: the response reads the item's old and new
    # values around the write, and those must belong to this write alone.
    lock = threading.RLock()
    writes = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item")
    reads = ("get_item", "batch_get_item", "query", "scan", "transact_get_items")
    for name in writes + reads:
        original = getattr(DynamoHandler, name)

        @functools.wraps(original)
        def locked(*args, __original=original, **kwargs):
            with lock:
                return __original(*args, **kwargs)

        setattr(DynamoHandler, name, locked)


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    speed_up_moto()
    answer_without_nagle_delay()
    make_dynamodb_requests_atomic()
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
