"""An OTLP/HTTP trace receiver on loopback that decodes each request, counts its spans
and drops them: the far end of the tracing-overhead benchmarks.

Run it beside a benchmark, then pass its endpoint to the foxctl processes::

    .venv/bin/python -m bench.otlp_sink --port 4318 &
    .venv/bin/python -m bench.ingress --env OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318

It prints the span count every ten seconds and when stopped with SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class SpanCounter:
    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self._lock = threading.Lock()

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        count = sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        with self._lock:
            self.spans += count
            self.requests += 1


def make_handler(counter: SpanCounter) -> type[BaseHTTPRequestHandler]:
    reply = ExportTraceServiceResponse().SerializeToString()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_POST(self) -> None:
            counter.add(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=4318, help="port on 127.0.0.1")
    args = parser.parse_args()
    counter = SpanCounter()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(counter))
    server.daemon_threads = True
    stopped = threading.Event()

    def stop(_signal: int, _frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"otlp sink on http://127.0.0.1:{args.port}", flush=True)
    while not stopped.wait(10):
        print(f"spans {counter.spans} in {counter.requests} requests", flush=True)
    server.shutdown()
    print(f"spans {counter.spans} in {counter.requests} requests", flush=True)


if __name__ == "__main__":
    main()
