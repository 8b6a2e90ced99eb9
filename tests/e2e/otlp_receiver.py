"""An in-process OTLP/gRPC receiver (TraceService + LogsService) for the observability tests.

Spans and log records are kept as plain dicts: name, trace_id, attributes {key: str | int}.
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer, logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            with self._lock:
                for rs in request.resource_spans:
                    resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            self.spans.append({
                                "resource": resource,
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                            })
            return trace_service_pb2.ExportTraceServiceResponse()
        with self._lock:
            for rl in request.resource_logs:
                for sl in rl.scope_logs:
                    for record in sl.log_records:
                        self.logs.append({
                            "trace_id": record.trace_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in record.attributes},
                        })
        return logs_service_pb2.ExportLogsServiceResponse()
